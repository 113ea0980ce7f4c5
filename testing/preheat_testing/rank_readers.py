"""Reading a shard's rank files strictly, as the safetensors library validates them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from preheat_testing import models

ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}


def read_strict(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A safetensors file, validated as the safetensors library does: name -> (dtype, shape, bytes)."""
    path = Path(path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert 8 + n <= len(data), f"{path.name}: header runs past the end"
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n :]
    spans = sorted((tuple(v["data_offsets"]), k) for k, v in header.items())
    pos = 0
    for (start, end), name in spans:
        assert start == pos, f"{path.name}: {name} does not start where the previous tensor ended"
        pos = end
    assert pos == len(body), f"{path.name}: data section has trailing or missing bytes"
    out = {}
    for name, v in header.items():
        start, end = v["data_offsets"]
        assert end - start == math.prod(v["shape"]) * ITEMSIZE[v["dtype"]], name
        out[name] = (v["dtype"], tuple(v["shape"]), bytes(body[start:end]))
    try:
        import safetensors
    except ImportError:
        return out
    parsed = {name: t for name, t in safetensors.deserialize(data)}
    assert set(parsed) == set(out)
    for name, t in parsed.items():
        assert (tuple(t["shape"]), bytes(t["data"])) == out[name][1:], name
    return out


def file_order(path: Path) -> list[str]:
    """Tensor names of a safetensors file in data order."""
    data = Path(path).read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def rank_file_regex(pattern: str, rank: int) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{rank}"), str(rank))
    return re.compile(text.replace(re.escape("{part}"), r"(\d+)"))


def rank_files(directory: Path, pattern: str, rank: int) -> list[Path]:
    """The rank's part files, in part order; parts must be numbered 0..n-1."""
    regex = rank_file_regex(pattern, rank)
    found = {}
    for p in Path(directory).iterdir():
        m = regex.fullmatch(p.name)
        if m:
            found[int(m[1])] = p
    assert sorted(found) == list(range(len(found))) and found, f"rank {rank} parts: {sorted(found)}"
    return [found[k] for k in sorted(found)]


def rank_tensors(directory: Path, pattern: str, rank: int) -> dict:
    """name -> (dtype, shape, bytes) over every part of the rank; no name in two parts."""
    out: dict = {}
    for path in rank_files(directory, pattern, rank):
        for name, t in read_strict(path).items():
            assert name not in out, f"{name} is in two files of rank {rank}"
            out[name] = t
    return out


def rank_float32(directory: Path, pattern: str, rank: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in rank_files(directory, pattern, rank):
        out.update(models.load_safetensors(path, as_float32=True))
    return out
