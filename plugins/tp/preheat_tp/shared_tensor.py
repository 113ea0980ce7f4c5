"""One source tensor read block by block once for several ranks, within a bounded window."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from .dtypes import ITEMSIZE, NUMPY, convert, normalize_dtype
from .plan import Slice
from .slice_reads import is_contiguous, row_range, thread_buffer

if TYPE_CHECKING:
    from .stream import TensorSource

SHARED_BLOCKS = 2  # local blocks of source rows per block of a shared (column-sliced) tensor
ALL = -1  # the buffer key of a block every rank receives whole (replicated rows)


class Aborted(RuntimeError):
    """Another rank's stream failed: the shared reads stop."""


class BufferPool:
    """Equal-sized buffers of finished blocks, handed out again for any later block (bounded).

    Every block of every shared tensor takes one buffer of `size` bytes (each
    rank's part a slice of it), so a buffer freed by one tensor serves the
    next whatever its shape: fresh buffers cost page faults and zeroing.
    `size` is the largest block a tensor `reserve`d; at most `blocks` free
    buffers are kept.
    """

    def __init__(self, blocks: int) -> None:
        self.size = 0
        self._blocks = blocks
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Make the pool's buffers hold blocks of `nbytes` (called before any `get`)."""
        self.size = max(self.size, nbytes)

    def get(self, nbytes: int) -> bytearray:
        """A buffer of at least `nbytes` (of `size`, reused, unless more is needed)."""
        if nbytes > self.size:
            return bytearray(nbytes)
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def put(self, buffer: bytearray) -> None:
        """Give back a buffer from `get`; kept while fewer than `blocks` are free."""
        with self._lock:
            if len(buffer) == self.size and len(self._free) < self._blocks:
                self._free.append(buffer)


class SharedTensor:
    """One source tensor's pieces in several ranks, read block by block once for all of them.

    `pieces` maps rank -> its piece: all column slices of the source (each
    rank gets its columns of every block of rows), or all the same rows (each
    rank gets the same block). A block is read by whichever rank needs it
    first and kept until every rank has consumed it; no block is read
    `window` or more blocks past the lowest one still in use.
    """

    def __init__(
        self,
        source: TensorSource,
        pieces: Mapping[int, Slice],
        out_dtype: str,
        *,
        window: int,
        failed: threading.Event,
        pool: BufferPool,
    ) -> None:
        self.source = source
        self.pieces = dict(pieces)
        first = next(iter(self.pieces.values()))
        self.name = first.source
        self.columns = not is_contiguous(first)
        self.cols = math.prod(first.source_shape[1:])
        self.src_dtype = normalize_dtype(first.source_dtype)
        self.out_dtype = normalize_dtype(out_dtype)
        self.window = window
        self.failed = failed
        self._pool = pool
        self.row_bytes = self.cols * ITEMSIZE[self.src_dtype]
        self.first_row, last_row = row_range(first)
        out_item = ITEMSIZE[self.out_dtype]
        if self.columns:
            self._width = {r: (p.stop - p.start) * out_item for r, p in self.pieces.items()}
        else:
            self._width = {ALL: self.cols * out_item}
        self.local = source.where(self.name)[0] is not None
        if not self.local:
            block = source.remote_block
        else:  # column blocks hold every rank's part: each rank's is about one block
            block = SHARED_BLOCKS * source.block if self.columns else source.block
        rows = last_row - self.first_row
        self.rows_per = max(1, min(block // max(1, self.row_bytes), rows))
        self.nblocks = -(-rows // self.rows_per)
        self._block_bytes = self.rows_per * sum(self._width.values())  # what `_views` takes
        if self.src_dtype == self.out_dtype and (self.local or self.columns):
            pool.reserve(self._block_bytes)
        self.last_row = last_row
        self._cond = threading.Condition()
        self._ready: dict[int, dict[int, memoryview]] = {}
        self._owned: dict[int, bytearray] = {}
        self._pending: dict[int, int] = {}
        self._reading: set[int] = set()
        self._released: set[int] = set()
        self._low = 0
        self._done: set[int] = set()

    def skipped(self, rank: int) -> bool:
        """Whether `rank` holds a piece of this tensor but did not read it to the end."""
        return rank in self.pieces and rank not in self._done

    # -- consumers (one thread per rank)

    def chunks(self, rank: int) -> Iterator[memoryview]:
        """Rank `rank`'s piece, block by block (each valid until the next is requested)."""
        finished = False
        try:
            for i in range(self.nblocks):
                view = self._get(i, rank)
                yield view
                self._release(i)
            finished = True
            self._done.add(rank)
        finally:
            if not finished:  # the consumer stopped early: nobody may wait on this rank any more
                self._fail()

    def _fail(self) -> None:
        self.failed.set()
        with self._cond:
            self._cond.notify_all()

    def _get(self, i: int, rank: int) -> memoryview:
        with self._cond:
            while True:
                if self.failed.is_set():
                    raise Aborted(f"reading {self.name} stopped: another rank's stream failed")
                if i in self._ready:
                    views = self._ready[i]
                    return views[rank] if self.columns else views[ALL]
                if i not in self._reading and i < self._low + self.window:
                    self._reading.add(i)
                    break
                self._cond.wait(0.05)
        try:
            buffer, views = self._read_block(i)
        except BaseException:
            self._fail()
            raise
        with self._cond:
            self._reading.discard(i)
            self._ready[i] = views
            if buffer is not None:
                self._owned[i] = buffer
            self._pending[i] = len(self.pieces)
            self._cond.notify_all()
        return views[rank] if self.columns else views[ALL]

    def _release(self, i: int) -> None:
        with self._cond:
            self._pending[i] -= 1
            if self._pending[i]:
                return
            del self._pending[i], self._ready[i]
            buffer = self._owned.pop(i, None)
            self._released.add(i)
            while self._low in self._released:
                self._released.discard(self._low)
                self._low += 1
            self._cond.notify_all()
        if buffer is not None:
            self._pool.put(buffer)

    # -- the reader of a block (whichever rank needs it first)

    def _views(self, n: int) -> tuple[bytearray, dict[int, memoryview]]:
        """A pooled buffer for a block of `n` rows, and each receiver's slice of it."""
        buffer = self._pool.get(self._block_bytes)
        views, at = {}, 0
        whole = memoryview(buffer)
        for r, w in self._width.items():
            views[r] = whole[at : at + n * w]
            at += self.rows_per * w
        return buffer, views

    def _read_block(self, i: int) -> tuple[bytearray | None, dict[int, memoryview]]:
        first = self.first_row + i * self.rows_per
        n = min(self.last_row, first + self.rows_per) - first
        if self.src_dtype != self.out_dtype:
            rows = self._source_rows(first, n, thread_buffer(n * self.row_bytes))
            if not self.columns:
                out = convert(rows, self.src_dtype, self.out_dtype)
                return None, {ALL: memoryview(np.ascontiguousarray(out)).cast("B")}
            return None, {
                r: memoryview(
                    np.ascontiguousarray(
                        convert(rows[:, p.start : p.stop], self.src_dtype, self.out_dtype)
                    )
                ).cast("B")
                for r, p in self.pieces.items()
            }
        if not self.local:
            data = self.source.read(self.name, first * self.row_bytes, n * self.row_bytes, EMPTY)
            if not self.columns:
                return None, {ALL: data}
            buffer, views = self._views(n)
            self._gather(self._as_rows(data, n), views)
            return buffer, views
        buffer, views = self._views(n)
        if not self.columns:
            self.source.read(self.name, first * self.row_bytes, n * self.row_bytes, views[ALL])
        elif not self._scatter(first, n, views):
            self._gather(self._source_rows(first, n, thread_buffer(n * self.row_bytes)), views)
        return buffer, views

    def _segments(self) -> list[tuple[int, int | None]] | None:
        """(bytes, rank or None for a skipped gap) across one source row; None when slices overlap."""
        item = ITEMSIZE[self.src_dtype]
        out: list[tuple[int, int | None]] = []
        at = 0
        for start, stop, rank in sorted((p.start, p.stop, r) for r, p in self.pieces.items()):
            if start < at:
                return None
            if start > at:
                out.append(((start - at) * item, None))
            out.append(((stop - start) * item, rank))
            at = stop
        if at < self.cols:
            out.append(((self.cols - at) * item, None))
        return out

    def _scatter(self, first: int, n: int, views: dict[int, memoryview]) -> bool:
        """Read the rows straight into each rank's buffer with `preadv` (no copy); False on overlap."""
        segments = self._segments()
        if segments is None:
            return False
        columns = []
        for width, rank in segments:
            if rank is None:
                columns.append([memoryview(bytearray(width))] * n)
            else:
                v = views[rank]
                columns.append([v[j : j + width] for j in range(0, n * width, width)])
        iov = [part for row in zip(*columns, strict=True) for part in row]
        self.source.scatter(self.name, first * self.row_bytes, iov)
        return True

    def _as_rows(self, data: memoryview, n: int) -> np.ndarray:
        return np.frombuffer(data, dtype=NUMPY[self.src_dtype]).reshape(n, self.cols)

    def _source_rows(self, first: int, n: int, buffer: memoryview) -> np.ndarray:
        view = self.source.read(self.name, first * self.row_bytes, n * self.row_bytes, buffer)
        return self._as_rows(view, n)

    def _gather(self, rows: np.ndarray, views: dict[int, memoryview]) -> None:
        for r, p in self.pieces.items():
            out = np.frombuffer(views[r], dtype=NUMPY[self.out_dtype])
            np.copyto(out.reshape(rows.shape[0], p.stop - p.start), rows[:, p.start : p.stop])


EMPTY = memoryview(b"")
