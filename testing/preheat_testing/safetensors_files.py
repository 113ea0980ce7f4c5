"""Tensor dtypes as stored (bf16 as uint16 bits), and safetensors files built, parsed and loaded."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torch dtype name -> safetensors dtype name
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
    quiet_nan = (u >> 16) | 0x0040
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the array whose bytes are stored for `dtype` (BF16 as uint16 bits)."""
    st = _st_dtype(dtype)
    if st == "BF16":
        return bf16_bits(x)
    return np.ascontiguousarray(x, dtype=np.float16 if st == "F16" else np.float32)


def decode(raw: bytes | memoryview | np.ndarray, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Stored bytes of a tensor -> float32 array."""
    st = _st_dtype(dtype)
    np_dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[st]
    arr = np.frombuffer(raw, dtype=np_dtype).reshape(tuple(shape))
    if st == "BF16":
        return bf16_to_float32(arr)
    return arr.astype(np.float32)


def _st_dtype(dtype: str) -> str:
    if dtype in _ITEMSIZE:
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")


def safetensors_header(entries: Iterable[tuple[str, str, Sequence[int]]]) -> tuple[bytes, int]:
    """Header bytes (length prefix included) for (name, dtype, shape) entries in file order.

    Returns the header and the byte size of the data section that follows it.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        st = _st_dtype(dtype)
        nbytes = math.prod(shape) * _ITEMSIZE[st]
        header[name] = {
            "dtype": st,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def safetensors_bytes(tensors: Mapping[str, tuple[str, np.ndarray]]) -> bytes:
    """Serialize {name: (dtype, stored array)} in name order, like the safetensors library."""
    names = sorted(tensors)
    header, _ = safetensors_header((n, tensors[n][0], tensors[n][1].shape) for n in names)
    return header + b"".join(np.ascontiguousarray(tensors[n][1]).tobytes() for n in names)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies in a safetensors file; `start`/`end` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def parse_safetensors_header(data: bytes | memoryview) -> dict[str, TensorInfo]:
    """Tensor table of a safetensors file, given at least its first bytes up to the data."""
    n = int.from_bytes(bytes(data[:8]), "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    base = 8 + n
    return {
        name: TensorInfo(
            v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1]
        )
        for name, v in header.items()
        if name != "__metadata__"
    }


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor table of a safetensors file on disk, reading only its header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return parse_safetensors_header(n.to_bytes(8, "little") + f.read(n))


def load_safetensors(
    source: str | os.PathLike | bytes, *, as_float32: bool = True
) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file (a path or its bytes).

    With `as_float32` every tensor is decoded to float32 (bf16 and fp16 exactly);
    otherwise arrays keep their stored type, bf16 as uint16 bit patterns.
    """
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    out = {}
    for name, info in parse_safetensors_header(data).items():
        raw = memoryview(data)[info.start : info.end]
        if as_float32:
            out[name] = decode(raw, info.dtype, info.shape)
        else:
            np_dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info.dtype]
            out[name] = np.frombuffer(raw, dtype=np_dtype).reshape(info.shape).copy()
    return out


def load_safetensors_dir(
    directory: str | os.PathLike, pattern: str = "*.safetensors", *, as_float32: bool = True
) -> dict[str, np.ndarray]:
    """Tensors of every file matching `pattern` directly in `directory`, merged by name."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(Path(directory).glob(pattern)):
        for name, arr in load_safetensors(path, as_float32=as_float32).items():
            if name in out:
                raise ValueError(f"tensor {name} appears in more than one file of {directory}")
            out[name] = arr
    return out
