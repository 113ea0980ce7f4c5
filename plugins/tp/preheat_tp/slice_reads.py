"""Per-thread reusable read buffers, and the source bytes a planned slice reads."""

from __future__ import annotations

import math
import threading

from .dtypes import ITEMSIZE, normalize_dtype
from .plan import Slice

_local = threading.local()


def thread_buffer(size: int) -> memoryview:
    """This thread's reusable read buffer of at least `size` bytes."""
    buf = getattr(_local, "buffer", None)
    if buf is None or len(buf) < size:
        buf = _local.buffer = memoryview(bytearray(size))
    return buf[:size]


def thread_zeros(size: int) -> memoryview:
    """This thread's reusable block of `size` zero bytes."""
    buf = getattr(_local, "zeros", None)
    if buf is None or len(buf) < size:
        buf = _local.zeros = memoryview(bytes(size))
    return buf[:size]


def is_contiguous(piece: Slice) -> bool:
    """Whether the slice is one contiguous byte range of its source (rows, or every column)."""
    return piece.axis == 0 or (piece.start == 0 and piece.stop == piece.source_shape[1])


def row_range(piece: Slice) -> tuple[int, int]:
    """Rows `[first, last)` of the source that `piece` reads (a column slice reads every row)."""
    return (piece.start, piece.stop) if piece.axis == 0 else (0, piece.source_shape[0])


def row_bytes(piece: Slice) -> int:
    """Bytes per row of the source of `piece`."""
    return math.prod(piece.source_shape[1:]) * ITEMSIZE[normalize_dtype(piece.source_dtype)]
