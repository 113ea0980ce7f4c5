"""Streaming a planned tensor's bytes from its sources with few copies and bounded memory.

Row slices (most of a model) are contiguous byte ranges of the source: they
are read block by block into one reused buffer and passed on as is. Column
slices read whole rows in blocks and gather the wanted columns. Dtype
conversions go through numpy. Memory stays at one block per tensor stream.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

from .dtypes import ITEMSIZE, NUMPY, convert, normalize_dtype
from .plan import OutputTensor, Slice, Zeros

BLOCK = 16 << 20

Located = Callable[[str], tuple[str, int]]


class TensorSource:
    """Reads source tensor bytes: by `pread` from local files, else by store range reads.

    `locate(name)` gives (file path in the artifact, absolute offset of the
    tensor's data); `local(path)` gives a local filesystem path or None;
    `read_range(path, start, length)` reads from the store.
    """

    def __init__(
        self,
        locate: Located,
        local: Callable[[str], os.PathLike | None],
        read_range: Callable[[str, int, int], bytes],
    ) -> None:
        self._locate = locate
        self._local = local
        self._read_range = read_range
        self._fds: dict[str, int] = {}

    def _fd(self, path: str) -> int | None:
        if path not in self._fds:
            local = self._local(path)
            self._fds[path] = os.open(local, os.O_RDONLY) if local is not None else -1
        fd = self._fds[path]
        return None if fd < 0 else fd

    def blocks(
        self, name: str, start: int, length: int, buffer: memoryview
    ) -> Iterator[memoryview]:
        """The bytes `start..start+length` of tensor `name`, in views of `buffer` (reused: consume each first)."""
        path, base = self._locate(name)
        fd = self._fd(path)
        done = 0
        while done < length:
            n = min(len(buffer), length - done)
            if fd is not None:
                got = os.preadv(fd, [buffer[:n]], base + start + done)
                if got != n:
                    raise OSError(f"short read of {path}: {got} of {n} bytes")
                yield buffer[:n]
            else:
                data = self._read_range(path, base + start + done, n)
                if len(data) != n:
                    raise OSError(f"short read of {path}: {len(data)} of {n} bytes")
                yield memoryview(data)
            done += n

    def close(self) -> None:
        for fd in self._fds.values():
            if fd >= 0:
                os.close(fd)
        self._fds.clear()


_local = threading.local()


def _buffer(size: int) -> memoryview:
    """This thread's reusable read buffer of `size` bytes."""
    buf = getattr(_local, "buffer", None)
    if buf is None or len(buf) < size:
        buf = _local.buffer = memoryview(bytearray(size))
    return buf[:size]


def tensor_chunks(
    tensor: OutputTensor, source: TensorSource, block: int = BLOCK
) -> Iterator[memoryview | bytes]:
    """The raw bytes of `tensor`, in order, each chunk valid only until the next is requested.

    Chunks are views of a buffer reused by the calling thread: consume each
    before asking for the next, and stream one tensor at a time per thread.
    """
    buffer = _buffer(block)
    out_dtype = normalize_dtype(tensor.dtype)
    out_row = math.prod(tensor.shape[1:]) * ITEMSIZE[out_dtype]
    for piece in tensor.pieces:
        if isinstance(piece, Zeros):
            remaining = piece.rows * out_row
            zeros = bytes(min(remaining, block))
            while remaining:
                n = min(remaining, len(zeros))
                yield zeros[:n]
                remaining -= n
            continue
        src_row = math.prod(piece.source_shape[1:]) * ITEMSIZE[piece.source_dtype]
        same = normalize_dtype(piece.source_dtype) == out_dtype
        if piece.axis == 0 and same:
            yield from source.blocks(
                piece.source, piece.start * src_row, (piece.stop - piece.start) * src_row, buffer
            )
            continue
        yield from _gathered(piece, source, buffer, src_row, out_dtype)


def _gathered(
    piece: Slice, source: TensorSource, buffer: memoryview, src_row: int, out_dtype: str
) -> Iterator[memoryview]:
    """Row blocks of a column slice (or of a converted row slice), gathered and converted by numpy."""
    rows_per = max(1, len(buffer) // src_row)
    first, last = (piece.start, piece.stop) if piece.axis == 0 else (0, piece.source_shape[0])
    tail = piece.source_shape[1:]
    for row in range(first, last, rows_per):
        n = min(rows_per, last - row)
        raw = (
            b"".join(
                bytes(b) for b in source.blocks(piece.source, row * src_row, n * src_row, buffer)
            )
            if n * src_row > len(buffer)
            else None
        )
        if raw is None:
            view = next(source.blocks(piece.source, row * src_row, n * src_row, buffer))
            array = np.frombuffer(view, dtype=NUMPY[normalize_dtype(piece.source_dtype)]).reshape(
                (n, *tail)
            )
        else:
            array = np.frombuffer(raw, dtype=NUMPY[normalize_dtype(piece.source_dtype)]).reshape(
                (n, *tail)
            )
        if piece.axis == 1:
            array = array[:, piece.start : piece.stop]
        out = np.ascontiguousarray(convert(array, piece.source_dtype, out_dtype))
        yield memoryview(out).cast("B")
