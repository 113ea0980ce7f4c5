"""Greedy generation with vLLM (CPU build), optionally dumping loaded shards.

Run with the vLLM venv's python; does not import preheat::

    generate.py MODEL_DIR --tp 2 [--load-format sharded_state] \
        --prompt-ids 1,2,3 --max-tokens 16 --out result.json [--dump-dir D]

``--dump-dir`` writes each rank's state dict as loaded, before weight
post-processing (see vllm_hook.py).  No tokenizer is needed: prompts are
token ids and the tokenizer is not initialised.
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
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-ids", default="1,2,3")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=128)
    ap.add_argument(
        "--extra-config", default=None, help="JSON for model_loader_extra_config, e.g. a pattern"
    )
    ap.add_argument("--dump-dir", default=None)
    ap.add_argument("--out", default=None, help="result JSON (default stdout)")
    a = ap.parse_args()

    vllm_hook.set_cpu_env(a.tp)
    if a.dump_dir:
        vllm_hook.request(a.load_format, a.dump_dir)

    import vllm
    from vllm import LLM, SamplingParams

    kwargs = {}
    if a.extra_config:
        kwargs["model_loader_extra_config"] = json.loads(a.extra_config)
    t0 = time.perf_counter()
    llm = LLM(
        model=a.model_dir,
        tensor_parallel_size=a.tp,
        dtype=a.dtype,
        max_model_len=a.max_model_len,
        enforce_eager=True,
        load_format=a.load_format,
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
    result = {
        "vllm_version": vllm.__version__,
        "model_dir": os.path.abspath(a.model_dir),
        "tp": a.tp,
        "load_format": a.load_format,
        "dtype": a.dtype,
        "prompt_ids": ids,
        "token_ids": list(out[0].outputs[0].token_ids),
        "engine_start_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
    }
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
