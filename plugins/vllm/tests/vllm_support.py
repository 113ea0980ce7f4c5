"""Helpers of the vLLM plugin tests: a loopback hub + store world, CLI results, hub accounting.

Pipelines run in-process (`World.prefetch`, the same `create_run` + `execute` that
`preheat prefetch --wait` uses) unless a test is about the process boundary, which
goes through `World.cli` (a real `preheat` subprocess).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from preheat_testing import models

PREHEAT_BIN = str(Path(sys.executable).with_name("preheat"))
HEADER_PROBE = 64 << 10
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
_RUN_NOTE = re.compile(r"^run r[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_BOUNDED_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
# requests that go through `preheat prefetch ... --shard-config FILE --wait --json` as a subprocess
VIA_CLI = {("llama_tied_mqa", 2), ("mistral_subfolders_fp32", 4)}


@dataclass
class CliResult:
    """What one `preheat` subprocess returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"stdout is not JSON:\n{self}") from None

    def ok(self) -> CliResult:
        assert self.returncode == 0, f"preheat {' '.join(self.args)} failed:\n{self}"
        return self

    def error_line(self) -> str:
        """The one `error: ...` line on stderr (no traceback, nothing else but the run note)."""
        assert self.returncode != 0, f"expected a failure:\n{self}"
        assert "Traceback" not in self.stderr, str(self)
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        others = [
            line for line in lines if not line.startswith("error: ") and not _RUN_NOTE.match(line)
        ]
        assert len(errors) == 1 and not others, f"expected one error line on stderr:\n{self}"
        return errors[0]

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class Outcome:
    """A finished in-process run: its record and the hub requests it made for its repo."""

    record: object
    requests: list = field(repr=False)
    store: str | None = None

    @property
    def ok(self) -> bool:
        return self.record.status == "succeeded"


def weight_requests(requests) -> list:
    """Requests (hub and CDN origin) for safetensors files."""
    return [r for r in requests if r.file and r.file.endswith(".safetensors")]


def weight_bytes(requests) -> int:
    """Content bytes served for safetensors files (redirect bodies not counted)."""
    return sum(r.body_bytes for r in weight_requests(requests) if r.status in (200, 206))


def assert_only_header_reads(requests, n_files: int) -> None:
    """Every safetensors GET was a bounded Range read of at most the header probe size."""
    for r in weight_requests(requests):
        if r.method != "GET":
            continue
        m = _BOUNDED_RANGE.match(r.range or "")
        assert m, (
            f"a weight body was requested without a bounded Range: {r.method} {r.path} {r.range!r}"
        )
        assert int(m[2]) - int(m[1]) + 1 <= HEADER_PROBE, f"range read too large: {r.range}"
    assert weight_bytes(requests) <= n_files * HEADER_PROBE


class World:
    """A loopback hub, a PREHEAT_HOME and a HF_HOME shared by the session."""

    def __init__(self, root: Path, hub) -> None:
        self.root = root
        self.hub = hub
        self.home = root / "preheat-home"
        self.cwd = root / "cwd"
        for d in (self.home, self.cwd, root / "hf-home"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREHEAT_") and k not in _CLEARED
        }
        # A deterministic "no vLLM here" for the engine-path probe, even where vLLM is installed.
        no_vllm = sys.executable
        if importlib.util.find_spec("vllm") is not None:
            no_vllm = str(root / "no-vllm-python")
            Path(no_vllm).write_text("#!/bin/sh\nexit 1\n")
            os.chmod(no_vllm, 0o755)
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(root / "hf-home"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_RETRY_BACKOFF="0.01",
            PREHEAT_VLLM_PYTHON=no_vllm,
        )
        self._repos: dict[str, str] = {}
        self._models: dict[str, object] = {}

    @property
    def store(self) -> Path:
        return self.home / "store"

    @contextlib.contextmanager
    def applied(self):
        """os.environ as `env` (restored on exit)."""
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key not in self.env:
                    mp.delenv(key)
            for key, value in self.env.items():
                mp.setenv(key, value)
            yield mp

    # models and repos

    def model(self, case: str, **overrides):
        """The `preheat_testing.models` TinyModel of a named case (cached; do not mutate)."""
        key = (case, tuple(sorted(overrides.items())))
        if key not in self._models:
            self._models[key] = models.build_case(case, **overrides)
        return self._models[key]

    def add_repo(self, repo: str, files) -> str:
        """Put `files` on the hub as `repo` once; returns its commit."""
        if repo not in self._repos:
            self._repos[repo] = self.hub.add_repo(repo, files)
        return self._repos[repo]

    def case_repo(self, case: str, prefix: str = "tiny", **overrides) -> str:
        """The case on the hub as PREFIX/CASE (same overrides, same repo)."""
        repo = f"{prefix}/{case}"
        self.add_repo(repo, self.model(case, **overrides).files)
        return repo

    # running

    def mark(self) -> int:
        return len(self.hub.requests)

    def requests_since(self, mark: int, repo: str | None = None) -> list:
        return [r for r in self.hub.requests[mark:] if repo is None or r.repo_id == repo]

    def prefetch(
        self,
        repo: str,
        shard=None,
        *,
        accelerator: str | None = None,
        store: str | None = None,
        **fields,
    ) -> Outcome:
        """One prefetch run, in this process, as `preheat prefetch hf-model --wait` runs it."""
        from preheat.models import PrefetchRequest, Resources
        from preheat.runner import execute
        from preheat.runs import create_run
        from preheat.shard import normalize_shard_config, shard_request

        with self.applied():
            spec = shard_request(*normalize_shard_config(shard)) if shard is not None else None
            request = PrefetchRequest(
                repo=repo, shard=spec, resources=Resources(accelerator=accelerator), **fields
            )
            mark = self.mark()
            run, _ = create_run(request, store)
            record = execute(run.store_url, run.name)
        return Outcome(record, self.requests_since(mark, repo), store)

    def cli(self, *args: str, timeout: float = 120) -> CliResult:
        """`preheat ARGS...` as a subprocess."""
        proc = subprocess.run(
            [PREHEAT_BIN, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)

    def write_yaml(self, name: str, text: str) -> Path:
        path = self.root / "configs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    # the store

    def catalog(self, store: str | None = None):
        from preheat.catalog import Catalog
        from preheat.config import open_store

        return Catalog(open_store(store or str(self.store)))

    def manifest(self, outcome: Outcome):
        assert outcome.ok, f"run failed: {outcome.record.error}"
        return self.catalog(outcome.store).resolve(str(outcome.record.artifact))

    def directory(self, manifest, store: str | None = None) -> Path:
        catalog = self.catalog(store)
        return Path(catalog.location(manifest.ref))


# --------------------------------------------------------------------------- sharding, once per request


@dataclass
class Sharded:
    case: str
    tp: int
    args: dict
    model: models.TinyModel
    manifest: object
    base: object
    directory: Path
    requests: list
    reused: bool

    @property
    def pattern(self) -> str:
        return self.args.get("file_pattern", DEFAULT_PATTERN)


def shard_getter(world):
    """`shard(case, tp, **args)`: the case pre-sharded for vLLM (cached per request)."""
    cache: dict = {}

    def get(case: str, tp: int, repo_prefix: str = "tiny", seed: int = 0, **args) -> Sharded:
        key = (case, tp, repo_prefix, seed, tuple(sorted(args.items())))
        if key in cache:
            return cache[key]
        repo = world.case_repo(case, repo_prefix, seed=seed)
        name = f"{repo_prefix}-{case}"
        config = {"engine": "vllm", "args": {"tensor_parallel_size": tp, **args}}
        catalog = world.catalog()
        if (case, tp) in VIA_CLI and not args:
            path = world.write_yaml(
                f"{case}-{tp}.yaml", f"engine: vllm\nargs:\n  tensor_parallel_size: {tp}\n"
            )
            mark = world.mark()
            out = world.cli(
                "prefetch",
                "hf-model",
                repo,
                "--artifact-name",
                name,
                "--shard-config",
                str(path),
                "--wait",
                "--json",
            ).ok()
            summary = out.json
            assert summary["status"] == "succeeded"
            requests = world.requests_since(mark, repo)
            manifest = catalog.resolve(
                f"{summary['artifact']['name']}:{summary['artifact']['version']}"
            )
            assert Path(summary["artifact"]["path"]) == Path(catalog.location(manifest.ref))
            reused = summary["reused"]
        else:
            outcome = world.prefetch(repo, config, artifact_name=name)
            manifest = world.manifest(outcome)
            requests, reused = outcome.requests, outcome.record.reused
        base = catalog.manifest(manifest.lineage.name, manifest.lineage.version)
        cache[key] = Sharded(
            case,
            tp,
            args,
            world.model(case, seed=seed),
            manifest,
            base,
            Path(catalog.location(manifest.ref)),
            requests,
            reused,
        )
        return cache[key]

    return get
