"""A tiny model's files: JSON bytes, weights in safetensors parts, written to a directory."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from preheat_testing.safetensors_files import safetensors_bytes


def write_files(directory: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write {repo path: bytes} under `directory`."""
    root = Path(directory)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def split_sizes(sizes: Sequence[int], parts: int) -> list[int]:
    """Contiguous, non-empty groups of roughly equal byte size: start index of each group."""
    if not 1 <= parts <= len(sizes):
        raise ValueError(f"parts must be between 1 and {len(sizes)}")
    total = sum(sizes)
    starts, running = [0], 0
    for i, size in enumerate(sizes[:-1]):
        running += size
        left = parts - len(starts)
        if left and (running >= total * len(starts) / parts or len(sizes) - 1 - i <= left):
            starts.append(i + 1)
    return starts


def weight_files(tensors: Mapping[str, tuple[str, np.ndarray]], parts: int) -> dict[str, bytes]:
    """{name: (dtype, stored array)} as `model.safetensors`, or `parts` files and their index."""
    names = list(tensors)
    if parts == 1:
        return {"model.safetensors": safetensors_bytes(tensors)}
    starts = split_sizes([tensors[n][1].nbytes for n in names], parts) + [len(names)]
    files: dict[str, bytes] = {}
    weight_map = {}
    for k in range(parts):
        fname = f"model-{k + 1:05d}-of-{parts:05d}.safetensors"
        group = {n: tensors[n] for n in names[starts[k] : starts[k + 1]]}
        files[fname] = safetensors_bytes(group)
        weight_map.update(dict.fromkeys(group, fname))
    total = sum(a.nbytes for _, a in tensors.values())
    files["model.safetensors.index.json"] = json_bytes(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    )
    return files


def json_bytes(obj: object, indent: int | None = 2) -> bytes:
    """`obj` as JSON text bytes, with a trailing newline."""
    return (json.dumps(obj, indent=indent) + "\n").encode()
