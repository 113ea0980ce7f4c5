"""The sharded-state tests' world (a hub, PREHEAT_HOME and HF_HOME), its runs and hub reads."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from preheat.resolve import location
from preheat_testing import models
from preheat_testing.cli import CliResult, run_cli

HEADER_PROBE = 64 << 10
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
_BOUNDED_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")

# Models for tensor-parallel sizes that do not divide 64 (heads, kv heads and intermediate
# divisible by 3), beside `models.CASES` (which are valid at tp 1, 2 and 4).
ODD_TP_CASES: dict[str, dict] = {
    # vocab 1000 pads to 1024 (not divisible by 3 or 6): SGLang widens the padding to 1152
    "llama_tp3_vocab1000": dict(kind="llama", hidden=256, heads=6, kv_heads=3, head_dim=64, intermediate=384, vocab=1000),
    # one kv head replicated on every rank; vocab 300 pads to 320, widened to 384 at tp 3
    "qwen3_tp3_mqa_tied": dict(kind="qwen3", hidden=128, heads=6, kv_heads=1, head_dim=32, intermediate=192, vocab=300, tied=True),
    # vocab 130 pads to 192, which tp 3 divides: no widening
    "qwen2_tp3_vocab130": dict(kind="qwen2", hidden=192, heads=3, kv_heads=3, intermediate=192, vocab=130),
}  # fmt: skip
ALL_CASES: dict[str, dict] = {**models.CASES, **ODD_TP_CASES}


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


def n_weight_files(files: Iterable[str]) -> int:
    return sum(1 for p in files if p.endswith(".safetensors"))


class World:
    """A loopback hub, a PREHEAT_HOME and a HF_HOME shared by a test session (or a script).

    With `hide_engines`, `method: engine` sees no engine even where one is installed
    (`PREHEAT_<ENGINE>_PYTHON` points at an interpreter that cannot import anything).
    """

    def __init__(
        self,
        root: Path,
        hub,
        *,
        cases: Mapping[str, dict] | None = None,
        hide_engines: Iterable[str] = ("vllm", "sglang"),
    ) -> None:
        self.root = Path(root)
        self.hub = hub
        self.cases = dict(ALL_CASES if cases is None else cases)
        self.home = self.root / "preheat-home"
        self.cwd = self.root / "cwd"
        for d in (self.home, self.cwd, self.root / "hf-home"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREHEAT_") and k not in _CLEARED
        }
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(self.root / "hf-home"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_RETRY_BACKOFF="0.01",
        )
        for engine in hide_engines:
            python = sys.executable
            if importlib.util.find_spec(engine) is not None:
                python = str(self.root / f"no-{engine}-python")
                Path(python).write_text("#!/bin/sh\nexit 1\n")
                os.chmod(python, 0o755)
            self.env[f"PREHEAT_{engine.upper()}_PYTHON"] = python
        self._repos: dict[str, str] = {}
        self._models: dict[tuple, models.TinyModel] = {}

    @property
    def store(self) -> Path:
        return self.home / "store"

    @contextlib.contextmanager
    def applied(self):
        """os.environ as `env` (restored on exit)."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    # models and repos

    def model(self, case: str, **overrides) -> models.TinyModel:
        """The TinyModel of a named case of `cases` (cached; do not mutate)."""
        key = (case, tuple(sorted(overrides.items())))
        if key not in self._models:
            options = {**self.cases[case], **overrides}
            self._models[key] = models.build_model(options.pop("kind"), **options)
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

        with self.applied():
            request = PrefetchRequest(
                repo=repo, shard=shard, resources=Resources(accelerator=accelerator), **fields
            )
            mark = self.mark()
            run = create_run(request, store)
            record = execute(run.store_url, run.name)
        return Outcome(record, self.requests_since(mark, repo), store)

    def cli(self, *args: str, timeout: float = 120) -> CliResult:
        """`preheat ARGS...` as a subprocess."""
        return run_cli(args, env=self.env, cwd=self.cwd, timeout=timeout)

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
        return Path(location(self.catalog(store), manifest).path)
