"""Compare per-rank tensors of two directories byte for byte (stdlib only).

    compare.py A B [--tp N]

A and B are each a capture directory (``rank-{r}.safetensors``, from
capture.py or generate.py --dump-dir) or a ``sharded_state`` directory
(``model-rank-{r}-part-{p}.safetensors``).  Reports keys missing or extra,
dtype/shape differences and differing bytes; exit status 1 on any
difference.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import struct
import sys


def read_safetensors(path: str) -> dict[str, tuple[str, list[int], bytes]]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {
        k: (v["dtype"], v["shape"], data[v["data_offsets"][0] : v["data_offsets"][1]])
        for k, v in header.items()
    }


def rank_files(d: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p in glob.glob(os.path.join(d, "*.safetensors")):
        m = re.fullmatch(r"rank-(\d+)\.safetensors", os.path.basename(p)) or re.fullmatch(
            r"model-rank-(\d+)-part-\d+\.safetensors", os.path.basename(p)
        )
        if m:
            out.setdefault(int(m.group(1)), []).append(p)
    return out


def load_rank(files: list[str]) -> dict:
    tensors: dict = {}
    for p in sorted(files):
        for k, v in read_safetensors(p).items():
            if k in tensors:
                raise SystemExit(f"{k} appears twice in {files}")
            tensors[k] = v
    return tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    a = ap.parse_args()
    fa, fb = rank_files(a.a), rank_files(a.b)
    problems = []
    if sorted(fa) != sorted(fb) or not fa:
        problems.append(f"ranks differ: {sorted(fa)} vs {sorted(fb)}")
    for r in sorted(set(fa) & set(fb)):
        ta, tb = load_rank(fa[r]), load_rank(fb[r])
        for k in sorted(set(ta) - set(tb)):
            problems.append(f"rank {r}: only in A: {k}")
        for k in sorted(set(tb) - set(ta)):
            problems.append(f"rank {r}: only in B: {k}")
        for k in sorted(set(ta) & set(tb)):
            (da, sa, ba), (db, sb, bb) = ta[k], tb[k]
            if (da, sa) != (db, sb):
                problems.append(f"rank {r}: {k}: {da}{sa} vs {db}{sb}")
            elif ba != bb:
                problems.append(f"rank {r}: {k}: bytes differ")
    for p in problems:
        print(p)
    print("identical" if not problems else f"{len(problems)} difference(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
