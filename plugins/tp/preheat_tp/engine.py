"""The engine-backed shard path: an engine's own save routine, run in a subprocess on GPUs.

`EngineProcess` says how to run one engine's save routine and whether it can
run here; `shard_with_engine` runs it on a local copy of the stored artifact
and stores the rank files it wrote.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from preheat.api import FileEntry, PreheatError, SourceArtifact, materialize

from .layout import EngineRunner, TPJob

PROBE = "import json, torch, {module} as m; print(json.dumps([m.__version__, torch.cuda.device_count()]))"


@functools.lru_cache(maxsize=8)
def _probe(interpreter: str, module: str) -> tuple[str, int] | str:
    try:
        out = subprocess.run(
            [interpreter, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {interpreter}: {exc}"
    if out.returncode != 0:
        return f"{module} is not importable by {interpreter}"
    version, gpus = json.loads(out.stdout.strip().splitlines()[-1])
    return version, gpus


@dataclass(frozen=True)
class EngineProcess:
    """How to run one engine's save routine: its module, the variable naming its interpreter, the script.

    The script receives one JSON argument with src, out, tp, dtype, pattern,
    max_size, trust_remote_code and the engine's extra args.
    """

    module: str
    python_env: str
    script: str

    def python(self) -> str:
        """The interpreter that has the engine: `$<python_env>`, else this one."""
        return os.environ.get(self.python_env) or sys.executable

    def problem(self, tp: int) -> str | None:
        """Why the engine path cannot run here with `tp` GPUs, or None."""
        found = _probe(self.python(), self.module)
        if isinstance(found, str):
            return f"{found} (set {self.python_env} to an interpreter that has it)"
        version, gpus = found
        if gpus < tp:
            return f"{self.module} {version} needs {tp} CUDA GPU(s) to save a tp={tp} checkpoint, found {gpus}"
        return None

    def run(self, src: str, out: str, job: TPJob) -> None:
        """Run the save script on `src`, writing rank files into `out`."""
        args = {
            "src": src,
            "out": out,
            "tp": job.tp,
            "dtype": job.dtype,
            "pattern": job.file_pattern,
            "max_size": job.max_file_size,
            "trust_remote_code": job.trust_remote_code,
            **job.args,
        }
        done = subprocess.run(
            [self.python(), "-c", self.script, json.dumps(args)], capture_output=True, text=True
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PreheatError(f"{self.module}'s own save routine failed: {tail[0]}")


def shard_with_engine(
    runner: EngineRunner,
    source: SourceArtifact,
    job: TPJob,
    write: Callable[[str, Any], FileEntry],
    progress: Callable[[int], None],
) -> list[FileEntry]:
    """Run `runner` on the artifact (copied to a local directory when its store is remote); store its rank files."""
    with tempfile.TemporaryDirectory(prefix="preheat-engine-") as tmp:
        local = source.local_path("config.json")
        if local is None:
            src_dir = materialize(source.manifest, os.path.join(tmp, "src"), store=source.store)
        else:
            src_dir = local.parent
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        runner(str(src_dir), out_dir, job)
        files = []
        for name in sorted(os.listdir(out_dir)):
            if name.endswith(".safetensors"):
                path = os.path.join(out_dir, name)
                with open(path, "rb") as f:
                    files.append(write(name, iter(lambda f=f: f.read(8 << 20), b"")))
                progress(os.path.getsize(path))
        return files
