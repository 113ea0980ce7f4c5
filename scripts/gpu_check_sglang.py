"""Check preheat's SGLang `sharded_state` files in the real SGLang on a CUDA GPU.

Shards a model at tp=1 with preheat (in-process, a local store in a temporary
directory, a loopback hub as the source), loads it with
`sglang.Engine(model_path=DIR, load_format="sharded_state", tp_size=1)`, generates greedy tokens
from prompt ids, and compares them with SGLang on the unsharded model.

    python scripts/gpu_check_sglang.py [MODEL_DIR] [--ids 1,7,42] [--max-tokens 24] [--keep DIR]

Without MODEL_DIR a tiny Llama is generated (`preheat_testing.models`). Needs
preheat, preheat-tp, preheat-sglang and preheat-testing installed beside SGLang.
Prints one JSON line; exits 0 when the tokens are equal, 1 when they differ or a
step fails, 2 when SGLang, torch or a CUDA GPU is missing.
"""

from __future__ import annotations

import json
import sys

ENGINE = "sglang"

if __name__ == "__main__":
    try:
        from preheat_testing.engine_check import script_main
    except ImportError as exc:
        message = (
            f"preheat-testing is not importable ({exc}): pip install -e . -e plugins/tp "
            f"-e plugins/{ENGINE} -e testing"
        )
        print(f"gpu_check_{ENGINE}: {message}", file=sys.stderr)
        print(
            json.dumps({"engine": ENGINE, "ok": False, "status": "unavailable", "message": message})
        )
        sys.exit(2)
    sys.exit(script_main(ENGINE))
