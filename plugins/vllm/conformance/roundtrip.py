"""Load an HF checkpoint and a `sharded_state` directory in one process, dumping both.

Run with the vLLM venv's python; does not import preheat::

    roundtrip.py ORIGINAL SHARDED --tp 2 --out OUTDIR [--extra-config JSON] \
        [--dtype bfloat16] [--prompt-ids 1,2,3] [--max-tokens 16]

Two engines, one after the other, at the same tp and dtype:

1. ``ORIGINAL`` with the default loader: each rank's state dict right after
   ``load_weights`` goes to ``OUTDIR/oracle/rank-{r}.safetensors`` (the oracle,
   as capture.py writes it), then greedy tokens.
2. ``SHARDED`` with ``load_format="sharded_state"`` (``--extra-config`` is the
   ``model_loader_extra_config``, e.g. a custom pattern): what the loader
   filled in goes to ``OUTDIR/loaded/rank-{r}.safetensors``, then greedy
   tokens.

``OUTDIR/result.json`` holds both token lists, the vLLM version and timings.
The first engine is shut down before the second starts.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
unless set): it does not take part in loading, and sparing its spawned process
saves an import of vLLM per engine. Weights still load where vLLM puts them:
in spawned workers at tp > 1, in this process at tp 1 (uni-process executor).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vllm_hook  # noqa: E402

vllm_hook.install_from_env()  # in vLLM's spawned processes


def run_engine(model_dir: str, load_format: str, dump_dir: str, a, extra: dict | None) -> dict:
    """Start one engine (dumping each rank's loaded state), generate greedily, shut it down."""
    from vllm import LLM, SamplingParams

    vllm_hook.request(load_format, dump_dir)
    kwargs = {"model_loader_extra_config": extra} if extra else {}
    t0 = time.perf_counter()
    llm = LLM(
        model=model_dir,
        tensor_parallel_size=a.tp,
        dtype=a.dtype,
        max_model_len=a.max_model_len,
        enforce_eager=True,
        load_format=load_format,
        skip_tokenizer_init=True,
        **kwargs,
    )
    t1 = time.perf_counter()
    ids = [int(x) for x in a.prompt_ids.split(",") if x]
    params = SamplingParams(
        temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True, detokenize=False
    )
    out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    t2 = time.perf_counter()
    tokens = list(out[0].outputs[0].token_ids)
    llm.llm_engine.engine_core.shutdown()
    del llm, out
    gc.collect()
    t3 = time.perf_counter()
    missing = [
        r
        for r in range(a.tp)
        if not os.path.exists(os.path.join(dump_dir, f"rank-{r}.safetensors"))
    ]
    if missing:
        sys.exit(f"{load_format}: no state dump from ranks {missing}")
    return {
        "model_dir": os.path.abspath(model_dir),
        "load_format": load_format,
        "prompt_ids": ids,
        "token_ids": tokens,
        "engine_start_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
        "shutdown_s": round(t3 - t2, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("original")
    ap.add_argument("sharded")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-ids", default="1,2,3")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=128)
    ap.add_argument(
        "--extra-config", default=None, help="JSON model_loader_extra_config for SHARDED"
    )
    a = ap.parse_args()

    vllm_hook.set_cpu_env(a.tp)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm

    os.makedirs(a.out, exist_ok=True)
    extra = json.loads(a.extra_config) if a.extra_config else None
    oracle = run_engine(a.original, "auto", os.path.join(a.out, "oracle"), a, None)
    loaded = run_engine(a.sharded, "sharded_state", os.path.join(a.out, "loaded"), a, extra)
    result = {
        "vllm_version": vllm.__version__,
        "tp": a.tp,
        "dtype": a.dtype,
        "threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "multiprocessing": os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"],
        "oracle": oracle,
        "loaded": loaded,
    }
    text = json.dumps(result, indent=1)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
