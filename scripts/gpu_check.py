"""Check preheat's `sharded_state` files in the real vLLM or SGLang on a CUDA GPU.

Shards a model at tp=1 with preheat (in-process, a local store in a temporary
directory, a loopback hub as the source), loads it in the engine with
`load_format="sharded_state"` at tensor-parallel size 1 (`vllm.LLM(model=DIR, ...)`
or `sglang.Engine(model_path=DIR, ...)`), generates greedy tokens from prompt ids,
and compares them with the same engine on the unsharded model.

    python scripts/gpu_check.py --engine vllm [MODEL_DIR] [--ids 1,7,42] [--max-tokens 24] [--keep DIR]
    python scripts/gpu_check.py --engine sglang [MODEL_DIR] [...]

`python scripts/gpu_check.py --engine ENGINE --help` lists every option. Without
MODEL_DIR a tiny Llama is generated (`preheat_testing.models`). Needs preheat,
preheat-tp, preheat-ENGINE and preheat-testing installed beside the engine.
Prints one JSON line; exits 0 when the tokens are equal, 1 when they differ or a
step fails, 2 when the engine, torch or a CUDA GPU is missing.
"""

from __future__ import annotations

import argparse
import json
import sys

ENGINES = ("vllm", "sglang")


def split_engine(argv: list[str]) -> tuple[str, list[str]]:
    """The engine named by `--engine`, and the other arguments (for `engine_check`)."""
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", add_help=False, usage="%(prog)s --engine {vllm,sglang} [MODEL_DIR] ..."
    )
    parser.add_argument("--engine", choices=ENGINES)
    opts, rest = parser.parse_known_args(argv)
    if opts.engine is None:
        if {"-h", "--help"} & set(rest):
            print(__doc__.strip())
            sys.exit(0)
        parser.error("the following arguments are required: --engine")
    return opts.engine, rest


if __name__ == "__main__":
    engine, args = split_engine(sys.argv[1:])
    try:
        from preheat_testing.engine_check import script_main
    except ImportError as exc:
        message = (
            f"preheat-testing is not importable ({exc}): pip install -e . -e plugins/tp "
            f"-e plugins/{engine} -e testing"
        )
        print(f"gpu_check ({engine}): {message}", file=sys.stderr)
        print(
            json.dumps({"engine": engine, "ok": False, "status": "unavailable", "message": message})
        )
        sys.exit(2)
    sys.exit(script_main(engine, args))
