"""Capture vLLM's per-rank state dict as loaded from an HF checkpoint.

Run with the vLLM venv's python; does not import preheat::

    capture.py MODEL_DIR --tp 2 --out OUTDIR [--dtype bfloat16]

Starts ``LLM(model=MODEL_DIR, tensor_parallel_size=N, load_format="auto")``
and, in every worker, right after ``load_weights`` and before
``process_weights_after_loading`` (which repacks linear weights on CPU),
writes ``OUTDIR/rank-{r}.safetensors`` (the state dict, deduplicated exactly
as ``save_sharded_state`` does) and ``OUTDIR/rank-{r}.json`` (every
state-dict entry with shape, dtype, parameter/buffer, kept or dropped).
These files are what a CPU slicer must reproduce bit for bit; renamed to
``model-rank-{r}-part-0.safetensors`` they load with ``sharded_state``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vllm_hook  # noqa: E402

vllm_hook.install_from_env()  # in vLLM's spawned processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=128)
    a = ap.parse_args()

    vllm_hook.set_cpu_env(a.tp)
    vllm_hook.request("auto", a.out)

    import vllm
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(
        model=a.model_dir,
        tensor_parallel_size=a.tp,
        dtype=a.dtype,
        max_model_len=a.max_model_len,
        enforce_eager=True,
        skip_tokenizer_init=True,
    )
    t1 = time.perf_counter()
    del llm
    missing = [
        r for r in range(a.tp) if not os.path.exists(os.path.join(a.out, f"rank-{r}.safetensors"))
    ]
    info = {
        "vllm_version": vllm.__version__,
        "tp": a.tp,
        "dtype": a.dtype,
        "model_dir": os.path.abspath(a.model_dir),
        "engine_start_s": round(t1 - t0, 2),
    }
    with open(os.path.join(a.out, "capture.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))
    if missing:
        sys.exit(f"no capture from ranks {missing}")


if __name__ == "__main__":
    main()
