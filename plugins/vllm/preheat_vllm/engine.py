"""The engine-backed shard path: vLLM's own save routine, in a subprocess, on GPUs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

from preheat.errors import PreheatError
from preheat_tp.sharder import TPJob

PROBE = "import json, torch, vllm; print(json.dumps([vllm.__version__, torch.cuda.device_count()]))"

SAVE = """
import json, sys
from vllm import LLM

if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    llm = LLM(model=a["src"], tensor_parallel_size=a["tp"], dtype=a["dtype"], enforce_eager=True,
              trust_remote_code=a["trust_remote_code"], max_model_len=a["max_model_len"])
    llm.llm_engine.engine_core.save_sharded_state(path=a["out"], pattern=a["pattern"], max_size=a["max_size"])
"""


def python() -> str:
    """The interpreter that has vLLM: `PREHEAT_VLLM_PYTHON`, else this one."""
    return os.environ.get("PREHEAT_VLLM_PYTHON") or sys.executable


@functools.lru_cache(maxsize=4)
def _probe(interpreter: str) -> tuple[str, int] | str:
    try:
        out = subprocess.run(
            [interpreter, "-c", PROBE], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {interpreter}: {exc}"
    if out.returncode != 0:
        return f"vLLM is not importable by {interpreter} (set PREHEAT_VLLM_PYTHON to an interpreter that has it)"
    version, gpus = json.loads(out.stdout.strip().splitlines()[-1])
    return version, gpus


def engine_problem(tp: int) -> str | None:
    """Why the engine path cannot run here with `tp` GPUs, or None."""
    found = _probe(python())
    if isinstance(found, str):
        return found
    version, gpus = found
    if gpus < tp:
        return f"vLLM {version} needs {tp} CUDA GPU(s) to save a tp={tp} checkpoint, found {gpus}"
    return None


def run_engine(src: str, out: str, job: TPJob) -> None:
    """Run vLLM's save_sharded_state on `src`, writing rank files into `out`."""
    args = {
        "src": src,
        "out": out,
        "tp": job.tp,
        "dtype": job.dtype,
        "pattern": job.file_pattern,
        "max_size": job.max_file_size,
        "trust_remote_code": job.trust_remote_code,
        "max_model_len": job.args.get("max_model_len"),
    }
    done = subprocess.run([python(), "-c", SAVE, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PreheatError(f"vLLM's save_sharded_state failed: {tail[0]}")
