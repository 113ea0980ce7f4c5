"""Helpers of the core test suite: an isolated preheat environment, a CLI runner, tiny models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from functools import cache
from pathlib import Path

import pytest

from preheat_testing.cli import CliProcess, CliResult, run_cli, run_in_process


def _import_hub_client_hermetically() -> None:
    """huggingface_hub reads HF_HOME, HF_HUB_OFFLINE, ... once, at import: import it now under a
    clean environment, so in-process runs never see the developer's token file or offline mode."""
    import tempfile

    keys = (
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HUGGING_FACE_HUB_TOKEN",
    )
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="preheat-tests-hf-home-")
    try:
        import huggingface_hub.constants  # noqa: F401
    finally:
        os.environ.pop("HF_HOME")
        os.environ.update(saved)


_import_hub_client_hermetically()
_CLEARED_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")


class PreheatEnv:
    """An isolated preheat + huggingface_hub environment under one directory.

    `env` is the environment for subprocesses; while `applied()` (the `preheat_env`
    fixture applies it for the whole test) `os.environ` matches it, so in-process API
    calls see the same store, hub and token.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.home = self.root / "preheat-home"
        self.hf_home = self.root / "hf-home"
        self.cwd = self.root / "cwd"
        for d in (self.home, self.hf_home, self.cwd):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREHEAT_", "PYTEST_")) and k not in _CLEARED_ENV
        }
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(self.hf_home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_RETRY_BACKOFF="0.01",
        )
        self._mp: pytest.MonkeyPatch | None = None
        self._procs: list[subprocess.Popen] = []

    @property
    def store(self) -> Path:
        """The default local store (under PREHEAT_HOME)."""
        return self.home / "store"

    def set(self, key: str, value: str | None) -> None:
        """Set (or with None remove) a variable for subprocesses and, while applied, os.environ."""
        if value is None:
            self.env.pop(key, None)
        else:
            self.env[key] = value
        if self._mp is not None:
            if value is None:
                self._mp.delenv(key, raising=False)
            else:
                self._mp.setenv(key, value)

    def connect(self, hub) -> PreheatEnv:
        """Point HF_ENDPOINT at a loopback hub."""
        self.set("HF_ENDPOINT", hub.endpoint)
        return self

    @contextlib.contextmanager
    def applied(self):
        """Make os.environ match `env` (restored on exit)."""
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key not in self.env and not key.startswith("PYTEST_"):
                    mp.delenv(key)
            for key, value in self.env.items():
                mp.setenv(key, value)
            self._mp = mp
            try:
                yield self
            finally:
                self._mp = None

    # the CLI, as a real subprocess

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        """Run `preheat ARGS...` and return its exit code and output."""
        return run_cli(args, env={**self.env, **(env or {})}, cwd=self.cwd, timeout=timeout)

    def cli_in_process(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run the CLI's `main()` in this process (fast; for variants of a case a subprocess covers)."""
        outer = self.applied() if self._mp is None else contextlib.nullcontext()
        with outer, pytest.MonkeyPatch.context() as mp:
            for key, value in (env or {}).items():
                mp.setenv(key, value)
            return run_in_process(args, cwd=self.cwd)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> CliProcess:
        """Start `preheat ARGS...` in the background (output captured as text)."""
        proc = CliProcess(args, env={**self.env, **(env or {})}, cwd=self.cwd)
        self._procs.append(proc)
        return proc

    @staticmethod
    def finish(proc: CliProcess, timeout: float = 120) -> CliResult:
        """Wait for a `popen` process and collect its result."""
        return proc.finish(timeout)

    # the store, read in-process

    def catalog(self, store: str | os.PathLike[str] | None = None):
        from preheat.builtin.local import LocalStore
        from preheat.catalog import Catalog

        return Catalog(LocalStore(store or self.store))

    def prefetch(
        self, repo: str, *, store: str | None = None, progress=None, cancel=None, **fields
    ):
        """Run a prefetch pipeline in this process (as `prefetch --wait` does) and return its run record."""
        from preheat.models import PrefetchRequest, Resources
        from preheat.runner import execute
        from preheat.runs import create_run

        assert self._mp is not None, (
            "prefetch() runs in-process: use it inside applied() / preheat_env"
        )
        resources = Resources(**fields.pop("resources", {}))
        for key in ("include", "exclude"):
            if key in fields:
                fields[key] = tuple(fields[key])
        request = PrefetchRequest(repo=repo, resources=resources, **fields)
        run = create_run(request, store)
        return execute(run.store_url, run.name, progress=progress, cancel=cancel)

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    def files(self) -> list[Path]:
        """Every regular file under this environment's root."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def cleanup(self) -> None:
        """Stop what this environment started: CLI processes, then any live worker of its store."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.communicate(timeout=10)
        _kill_store_workers(self.store)


def _kill_store_workers(store: Path) -> None:
    """SIGKILL the still-running worker processes recorded in `store`'s run records."""
    import psutil

    runs = store / "runs"
    if not runs.is_dir():
        return
    for path in runs.glob("*.json"):
        with contextlib.suppress(Exception):
            record = json.loads(path.read_text())
            pid = record.get("pid")
            if (
                record.get("status") in ("succeeded", "failed", "cancelled")
                or not pid
                or pid == os.getpid()
            ):
                continue
            proc = psutil.Process(pid)
            if "preheat.worker" in " ".join(proc.cmdline()) and record["name"] in proc.cmdline():
                proc.send_signal(signal.SIGKILL)
                proc.wait(5)


@cache
def _tiny_model(case: str, overrides: tuple):
    from preheat_testing.models import build_case

    return build_case(case, **dict(overrides))


def tree_bytes(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """{relative posix path: bytes} of every file under `root`."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class StageHook:
    """A pipeline Progress that calls `on_stage(name)` / `on_bytes(total_so_far)` (for fault timing)."""

    def __init__(self, on_stage=None, on_bytes=None) -> None:
        self.on_stage = on_stage
        self.on_bytes = on_bytes
        self.total = 0
        self._lock = threading.Lock()

    def stage(self, name: str, total: int) -> None:
        if self.on_stage is not None:
            self.on_stage(name)

    def advance(self, n: int) -> None:
        with self._lock:
            self.total += n
            total = self.total
        if self.on_bytes is not None:
            self.on_bytes(total)
