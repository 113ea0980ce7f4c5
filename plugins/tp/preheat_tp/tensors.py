"""Reading planned tensors from source bytes: byte ranges and materialization."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .dtypes import ITEMSIZE, NUMPY, convert, normalize_dtype
from .plan import OutputTensor, Slice, Zeros

# read(source_name, byte_start, byte_len) -> bytes; offsets are relative to the tensor's data
Reader = Callable[[str, int, int], bytes]

DEFAULT_BLOCK_BYTES = 64 << 20


def _row_bytes(piece: Slice) -> int:
    return math.prod(piece.source_shape[1:]) * ITEMSIZE[piece.source_dtype]


def _check(piece: Slice) -> None:
    if piece.axis == 0:
        ok = 0 <= piece.start <= piece.stop <= piece.source_shape[0]
    elif piece.axis == 1 and len(piece.source_shape) == 2:
        ok = 0 <= piece.start <= piece.stop <= piece.source_shape[1]
    else:
        ok = False
    if not ok:
        raise ValueError(f"cannot slice {piece.source} {list(piece.source_shape)} as {piece}")


def _row_blocks(
    first: int, last: int, row_bytes: int, block_bytes: int | None
) -> list[tuple[int, int]]:
    """Byte ranges of whole rows `[first, last)`, each at most `block_bytes` (and one row)."""
    if last <= first:
        return []
    rows_per = (last - first) if block_bytes is None else max(1, block_bytes // max(1, row_bytes))
    return [
        (row * row_bytes, (min(last, row + rows_per) - row) * row_bytes)
        for row in range(first, last, rows_per)
    ]


def byte_ranges(
    piece: Slice, *, block_bytes: int | None = None, exact: bool = False
) -> list[tuple[int, int]]:
    """(start, length) byte ranges of the source tensor's data to read for `piece`.

    A row slice (axis 0) is one contiguous range. A column slice (axis 1) is
    not: by default it is read as whole rows of the source (every row is
    needed); `exact` gives instead one range per row holding only the wanted
    columns. `block_bytes` splits whole-row ranges into blocks of at most that
    size, so a reader never holds more than one block.
    """
    _check(piece)
    row_bytes = _row_bytes(piece)
    if piece.axis == 0:
        return _row_blocks(piece.start, piece.stop, row_bytes, block_bytes)
    rows, cols = piece.source_shape
    if piece.start == 0 and piece.stop == cols:
        return _row_blocks(0, rows, row_bytes, block_bytes)
    if exact:
        item = ITEMSIZE[piece.source_dtype]
        width = (piece.stop - piece.start) * item
        if width == 0:
            return []
        return [(r * row_bytes + piece.start * item, width) for r in range(rows)]
    return _row_blocks(0, rows, row_bytes, block_bytes)


def materialize(
    tensor: OutputTensor,
    read: Reader,
    *,
    dtype: str | None = None,
    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
) -> np.ndarray:
    """Build `tensor` from source bytes returned by `read`.

    The result is a raw array of `dtype` (default: the tensor's dtype): uint16
    bit patterns for bf16, float16 or float32 otherwise; values are converted
    with one round-to-nearest-even step when source and target dtypes differ.
    Sources are read in blocks of at most `block_bytes` whole rows.
    """
    out_dtype = normalize_dtype(dtype or tensor.dtype)
    out = np.empty(tensor.shape, dtype=NUMPY[out_dtype])
    row = 0
    for piece in tensor.pieces:
        if isinstance(piece, Zeros):
            out[row : row + piece.rows] = 0
            row += piece.rows
            continue
        tail = piece.source_shape[1:]
        row_bytes = _row_bytes(piece)
        for start, length in byte_ranges(piece, block_bytes=block_bytes):
            data = read(piece.source, start, length)
            if len(data) != length:
                raise ValueError(
                    f"read of {piece.source} at {start} returned {len(data)} bytes, expected {length}"
                )
            block = np.frombuffer(data, dtype=NUMPY[piece.source_dtype]).reshape(
                (length // row_bytes, *tail)
            )
            if piece.axis == 1:
                block = block[:, piece.start : piece.stop]
            out[row : row + block.shape[0]] = convert(block, piece.source_dtype, out_dtype)
            row += block.shape[0]
    if row != tensor.shape[0]:
        raise ValueError(f"{tensor.name}: pieces give {row} rows, expected {tensor.shape[0]}")
    return out
