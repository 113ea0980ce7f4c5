"""Turn capture.py output into a vLLM ``sharded_state`` model directory.

Stdlib only::

    capture_to_sharded.py CAPTURE_DIR MODEL_DIR OUT_DIR [--pattern P]

Copies ``rank-{r}.safetensors`` to ``OUT_DIR/<pattern>`` (default
``model-rank-{rank}-part-{part}.safetensors``, part 0) and the model's
non-weight files (config, tokenizer, generation config), leaving out the
original weights and their index, as a sharded artifact should.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SKIP_NAMES = {"model.safetensors.index.json", "pytorch_model.bin.index.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture_dir")
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--pattern", default=DEFAULT_PATTERN)
    a = ap.parse_args()

    with open(os.path.join(a.capture_dir, "rank-0.json")) as f:
        tp = json.load(f)["tp"]
    os.makedirs(a.out_dir, exist_ok=True)
    for name in sorted(os.listdir(a.model_dir)):
        src = os.path.join(a.model_dir, name)
        if os.path.isfile(src) and name not in SKIP_NAMES and not name.endswith(SKIP_SUFFIXES):
            shutil.copy2(src, os.path.join(a.out_dir, name))
    for r in range(tp):
        shutil.copy2(
            os.path.join(a.capture_dir, f"rank-{r}.safetensors"),
            os.path.join(a.out_dir, a.pattern.format(rank=r, part=0)),
        )
    print(json.dumps({"out_dir": a.out_dir, "tp": tp}))


if __name__ == "__main__":
    main()
