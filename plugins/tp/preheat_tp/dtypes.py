"""Tensor dtypes as raw numpy arrays, and rounding conversions between them.

bf16 has no numpy dtype: its arrays are uint16 bit patterns.
"""

from __future__ import annotations

import numpy as np

ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
NUMPY = {"BF16": np.dtype(np.uint16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}

_ALIASES = {
    "bf16": "BF16",
    "bfloat16": "BF16",
    "torch.bfloat16": "BF16",
    "f16": "F16",
    "fp16": "F16",
    "float16": "F16",
    "half": "F16",
    "torch.float16": "F16",
    "f32": "F32",
    "fp32": "F32",
    "float32": "F32",
    "float": "F32",
    "torch.float32": "F32",
}


def normalize_dtype(dtype: str) -> str:
    """Safetensors dtype name (BF16, F16, F32) of a dtype name such as "bfloat16"."""
    name = _ALIASES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"unsupported dtype {dtype!r}: use bf16, fp16 or fp32")
    return name


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, rounding to nearest even; NaNs stay (quiet) NaNs."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    if np.isnan(x).any():
        rounded = np.where(np.isnan(x), ((u >> 16) | 0x0040).astype(np.uint16), rounded)
    return rounded


def to_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Raw array of `dtype` -> float32 (exact for all supported dtypes)."""
    dtype = normalize_dtype(dtype)
    if dtype == "BF16":
        return bf16_to_float32(arr)
    return np.asarray(arr).astype(np.float32)


def convert(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Raw array of dtype `src` -> raw array of dtype `dst`, rounding once to nearest even."""
    src, dst = normalize_dtype(src), normalize_dtype(dst)
    if src == dst:
        return arr
    wide = to_float32(arr, src)
    if dst == "BF16":
        return float32_to_bf16(wide)
    return wide.astype(NUMPY[dst])
