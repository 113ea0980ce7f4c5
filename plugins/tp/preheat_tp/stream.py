"""Streaming planned tensors' bytes from their sources: each source byte read once, memory bounded.

Row slices (most of a model) are contiguous byte ranges of the source: a rank
reads them block by block into its thread's reused buffer and passes them on
as they are. What several ranks need is read once for all of them
(`SharedReads`): column slices (`o_proj`, `down_proj`: each block of the
source's rows is read by `preadv` straight into every rank's buffer, or by one
range read and a numpy gather) and rows several ranks hold (norms, kv heads
replicated when tp exceeds them: one buffer handed to each). The rank threads
move through the same tensors in the same order; whichever needs a shared
block first reads it, and none reads `WINDOW` blocks past the slowest rank.
Dtype conversions go through numpy.

Memory: one block per rank thread, plus at most `WINDOW` blocks of each
shared tensor the ranks are in at the moment (a column block holds
`SHARED_BLOCKS` blocks of source rows, all ranks' parts), whatever tp.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from .dtypes import ITEMSIZE, NUMPY, convert, normalize_dtype
from .plan import OutputTensor, Slice, Zeros

BLOCK = 4 << 20  # bytes per local read (the chunk a rank writes and hashes next)
REMOTE_BLOCK = 16 << 20  # bytes per range read from a store without local files
SHARED_BLOCKS = 4  # local blocks of source rows per block of a shared (column-sliced) tensor
WINDOW = 4  # blocks of a shared tensor read ahead of the slowest rank
IOV_MAX = 1024  # buffers per preadv call (Linux's UIO_MAXIOV)

Located = Callable[[str], tuple[str, int]]


class Aborted(RuntimeError):
    """Another rank's stream failed: the shared reads stop."""


class TensorSource:
    """Reads source tensor bytes: by `pread` from local files, else by store range reads.

    `locate(name)` gives (file path in the artifact, absolute offset of the
    tensor's data); `local(path)` gives a local filesystem path or None;
    `read_range(path, start, length)` reads from the store. Thread-safe.
    """

    def __init__(
        self,
        locate: Located,
        local: Callable[[str], os.PathLike | None],
        read_range: Callable[[str, int, int], bytes],
        *,
        block: int | None = None,
        remote_block: int | None = None,
    ) -> None:
        self._locate = locate
        self._local = local
        self._read_range = read_range
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.block = block or BLOCK
        self.remote_block = remote_block or REMOTE_BLOCK

    def _fd(self, path: str) -> int | None:
        with self._lock:
            if path not in self._fds:
                local = self._local(path)
                self._fds[path] = os.open(local, os.O_RDONLY) if local is not None else -1
            fd = self._fds[path]
        return None if fd < 0 else fd

    def where(self, name: str) -> tuple[int | None, str, int]:
        """(local file descriptor or None, artifact path, absolute data offset) of tensor `name`."""
        path, base = self._locate(name)
        return self._fd(path), path, base

    def block_for(self, name: str) -> int:
        """Bytes per read of tensor `name`: small blocks for local files, larger range reads."""
        return self.block if self.where(name)[0] is not None else self.remote_block

    def read(self, name: str, start: int, length: int, buffer: memoryview) -> memoryview:
        """Bytes `start..start+length` of tensor `name`: in `buffer` (local files) or a new buffer."""
        fd, path, base = self.where(name)
        if fd is None:
            data = self._read_range(path, base + start, length)
            if len(data) != length:
                raise OSError(f"short read of {path}: {len(data)} of {length} bytes")
            return memoryview(data)
        view = buffer[:length]
        _pread_full(fd, [view], base + start, path)
        return view

    def scatter(self, name: str, start: int, views: Sequence[memoryview]) -> None:
        """Fill `views` in order from the bytes of local tensor `name` starting at `start`."""
        fd, path, base = self.where(name)
        assert fd is not None
        offset = base + start
        for i in range(0, len(views), IOV_MAX):
            batch = views[i : i + IOV_MAX]
            _pread_full(fd, batch, offset, path)
            offset += sum(len(v) for v in batch)

    def blocks(
        self, name: str, start: int, length: int, buffer: memoryview
    ) -> Iterator[memoryview]:
        """The bytes `start..start+length` of tensor `name`, in views of `buffer` (reused: consume each first)."""
        step = len(buffer) if self.where(name)[0] is not None else self.remote_block
        done = 0
        while done < length:
            n = min(step, length - done)
            yield self.read(name, start + done, n, buffer)
            done += n

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                if fd >= 0:
                    os.close(fd)
            self._fds.clear()


def _pread_full(fd: int, views: Sequence[memoryview], offset: int, path: str) -> None:
    """`preadv` until every view is full; OSError at end of file."""
    got = os.preadv(fd, views, offset)
    if got == sum(len(v) for v in views):
        return
    at = 0  # a short read (rare on regular files): finish the views one by one
    for v in views:
        filled = min(len(v), max(0, got - at))
        while filled < len(v):
            more = os.preadv(fd, [v[filled:]], offset + at + filled)
            if more <= 0:
                raise OSError(f"short read of {path}: end of file at {offset + at + filled}")
            filled += more
        at += len(v)


_local = threading.local()


def _buffer(size: int) -> memoryview:
    """This thread's reusable read buffer of at least `size` bytes."""
    buf = getattr(_local, "buffer", None)
    if buf is None or len(buf) < size:
        buf = _local.buffer = memoryview(bytearray(size))
    return buf[:size]


def _zeros(size: int) -> memoryview:
    buf = getattr(_local, "zeros", None)
    if buf is None or len(buf) < size:
        buf = _local.zeros = memoryview(bytes(size))
    return buf[:size]


def _contiguous(piece: Slice) -> bool:
    """Whether the slice is one contiguous byte range of its source (rows, or every column)."""
    return piece.axis == 0 or (piece.start == 0 and piece.stop == piece.source_shape[1])


def _row_range(piece: Slice) -> tuple[int, int]:
    """Rows `[first, last)` of the source that `piece` reads (a column slice reads every row)."""
    return (piece.start, piece.stop) if piece.axis == 0 else (0, piece.source_shape[0])


def _row_bytes(piece: Slice) -> int:
    return math.prod(piece.source_shape[1:]) * ITEMSIZE[normalize_dtype(piece.source_dtype)]


def tensor_chunks(
    tensor: OutputTensor,
    source: TensorSource,
    block: int | None = None,
    *,
    shared: SharedReads | None = None,
    rank: int = 0,
) -> Iterator[memoryview | bytes]:
    """The raw bytes of `tensor`, in order, each chunk valid only until the next is requested.

    Chunks are views of buffers reused by the calling thread (or shared with
    the other ranks' threads through `shared`, the reads of rank `rank`):
    consume each before asking for the next, and stream one tensor at a time
    per thread.
    """
    block = block or source.block
    out_dtype = normalize_dtype(tensor.dtype)
    out_row = math.prod(tensor.shape[1:]) * ITEMSIZE[out_dtype]
    for piece in tensor.pieces:
        if isinstance(piece, Zeros):
            remaining = piece.rows * out_row
            while remaining:
                n = min(remaining, block)
                yield _zeros(n)
                remaining -= n
            continue
        together = shared.lookup(piece, out_dtype) if shared is not None else None
        if together is not None:
            yield from together.chunks(rank)
            continue
        src_row = _row_bytes(piece)
        same = normalize_dtype(piece.source_dtype) == out_dtype
        if same and _contiguous(piece):
            first, last = _row_range(piece)
            yield from source.blocks(
                piece.source, first * src_row, (last - first) * src_row, _buffer(block)
            )
            continue
        yield from _gathered(piece, source, src_row, out_dtype)


def _gathered(piece: Slice, source: TensorSource, src_row: int, out_dtype: str) -> Iterator:
    """Row blocks of a column slice (or of a converted row slice), gathered and converted by numpy."""
    block = source.block_for(piece.source)
    rows_per = max(1, block // src_row)
    first, last = _row_range(piece)
    dtype = NUMPY[normalize_dtype(piece.source_dtype)]
    for row in range(first, last, rows_per):
        n = min(rows_per, last - row)
        view = source.read(piece.source, row * src_row, n * src_row, _buffer(n * src_row))
        array = np.frombuffer(view, dtype=dtype).reshape((n, *piece.source_shape[1:]))
        if piece.axis == 1:
            array = array[:, piece.start : piece.stop]
        out = np.ascontiguousarray(convert(array, piece.source_dtype, out_dtype))
        yield memoryview(out).cast("B")


# --------------------------------------------------------------------------- shared reads

ALL = -1  # the buffer key of a block every rank receives whole (replicated rows)

Key = tuple  # (source, out dtype, "columns") or (source, out dtype, "rows", first, last)


def share_key(piece: Slice, out_dtype: str) -> Key:
    """What ranks must have in common to share reads of `piece`: its source and, for rows, the rows."""
    out_dtype = normalize_dtype(out_dtype)
    if not _contiguous(piece):
        return (piece.source, out_dtype, "columns")
    return (piece.source, out_dtype, "rows", *_row_range(piece))


def _ordered(sequences: Sequence[Sequence[Key]]) -> bool:
    """Whether one order of all keys has every sequence as a subsequence (no cycle among them)."""
    after: dict[Key, set[Key]] = {}
    before: dict[Key, int] = {}
    for seq in sequences:
        for k in seq:
            after.setdefault(k, set())
            before.setdefault(k, 0)
        for a, b in zip(seq, seq[1:], strict=False):
            if b not in after[a]:
                after[a].add(b)
                before[b] += 1
    ready = [k for k, n in before.items() if n == 0]
    seen = 0
    while ready:
        k = ready.pop()
        seen += 1
        for b in after[k]:
            before[b] -= 1
            if before[b] == 0:
                ready.append(b)
    return seen == len(before)


class _Pool:
    """Buffers of finished blocks, kept for the next block of the same shape (bounded)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._free: dict[tuple, list[dict[int, bytearray]]] = {}
        self._lock = threading.Lock()

    def get(self, sizes: dict[int, int]) -> dict[int, bytearray]:
        key = tuple(sorted(sizes.items()))
        with self._lock:
            free = self._free.get(key)
            if free:
                self._held -= sum(sizes.values())
                return free.pop()
        return {r: bytearray(n) for r, n in sizes.items()}

    def put(self, buffers: dict[int, bytearray]) -> None:
        sizes = tuple(sorted((r, len(b)) for r, b in buffers.items()))
        total = sum(n for _, n in sizes)
        with self._lock:
            if self._held + total <= self._limit:
                self._free.setdefault(sizes, []).append(buffers)
                self._held += total


class SharedReads:
    """Source bytes that several ranks need, each read once for all of them.

    Built from every rank's plan (rank -> its output tensors). Two kinds of
    pieces are shared: column slices of one source (`o_proj`, `down_proj`:
    each block of its rows is read once, every rank getting its columns) and
    the same rows of one source in several ranks (replicated norms, kv heads
    when tp exceeds them: read once, the same bytes handed to each). Sharing
    is kept only when one order of the shared pieces agrees with every rank's
    plan (plans of one model do), which keeps the bounded read-ahead free of
    deadlocks; otherwise every rank reads its own. Each rank's stream must run
    on its own thread, all ranks at once.
    """

    def __init__(
        self,
        source: TensorSource,
        plans: Mapping[int, Sequence[OutputTensor]],
        *,
        window: int | None = None,
    ) -> None:
        self.failed = threading.Event()
        window = max(1, window or WINDOW)
        groups: dict[Key, dict[int, list[Slice]]] = {}
        order: dict[int, list[Key]] = {}
        for rank, tensors in plans.items():
            seen = order.setdefault(rank, [])
            for t in tensors:
                for p in t.pieces:
                    if isinstance(p, Slice):
                        key = share_key(p, t.dtype)
                        groups.setdefault(key, {}).setdefault(rank, []).append(p)
                        seen.append(key)
        keys = {
            k
            for k, ranks in groups.items()
            if len(ranks) > 1 and all(len(ps) == 1 for ps in ranks.values())
        }
        if not _ordered([[k for k in seen if k in keys] for seen in order.values()]):
            keys = set()
        # enough finished blocks' buffers for the next shared tensor's window
        shared_block = max(SHARED_BLOCKS * source.block, source.remote_block)
        self._pool = _Pool(limit=window * shared_block)
        self._shared = {
            key: SharedTensor(
                source,
                {rank: ps[0] for rank, ps in groups[key].items()},
                key[1],
                window=window,
                failed=self.failed,
                pool=self._pool,
            )
            for key in keys
        }

    def lookup(self, piece: Slice, out_dtype: str) -> SharedTensor | None:
        """The shared reader of `piece`, or None when its rank reads it alone."""
        return self._shared.get(share_key(piece, out_dtype))

    @property
    def keys(self) -> list[Key]:
        """What is read once for several ranks."""
        return sorted(self._shared)

    def abort(self) -> None:
        """Make every rank waiting on a shared read raise `Aborted` (another rank failed)."""
        self.failed.set()

    def finished(self, rank: int) -> None:
        """Rank `rank` wrote everything: raise (and release the others) if it skipped shared reads."""
        skipped = [t.name for t in self._shared.values() if t.skipped(rank)]
        if skipped:
            self.abort()
            raise RuntimeError(f"rank {rank} finished without reading {', '.join(skipped)}")


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
        pool: _Pool,
    ) -> None:
        self.source = source
        self.pieces = dict(pieces)
        first = next(iter(self.pieces.values()))
        self.name = first.source
        self.columns = not _contiguous(first)
        self.cols = math.prod(first.source_shape[1:])
        self.src_dtype = normalize_dtype(first.source_dtype)
        self.out_dtype = normalize_dtype(out_dtype)
        self.window = window
        self.failed = failed
        self._pool = pool
        self.row_bytes = self.cols * ITEMSIZE[self.src_dtype]
        self.first_row, last_row = _row_range(first)
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
        self.last_row = last_row
        self._cond = threading.Condition()
        self._ready: dict[int, dict[int, memoryview]] = {}
        self._owned: dict[int, dict[int, bytearray]] = {}
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
            buffers, views = self._read_block(i)
        except BaseException:
            self._fail()
            raise
        with self._cond:
            self._reading.discard(i)
            self._ready[i] = views
            if buffers is not None:
                self._owned[i] = buffers
            self._pending[i] = len(self.pieces)
            self._cond.notify_all()
        return views[rank] if self.columns else views[ALL]

    def _release(self, i: int) -> None:
        with self._cond:
            self._pending[i] -= 1
            if self._pending[i]:
                return
            del self._pending[i], self._ready[i]
            buffers = self._owned.pop(i, None)
            self._released.add(i)
            while self._low in self._released:
                self._released.discard(self._low)
                self._low += 1
            self._cond.notify_all()
        if buffers is not None:
            self._pool.put(buffers)

    # -- the reader of a block (whichever rank needs it first)

    def _read_block(self, i: int) -> tuple[dict[int, bytearray] | None, dict[int, memoryview]]:
        first = self.first_row + i * self.rows_per
        n = min(self.last_row, first + self.rows_per) - first
        if self.src_dtype != self.out_dtype:
            rows = self._source_rows(first, n, _buffer(n * self.row_bytes))
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
            buffers = self._pool.get({r: self.rows_per * w for r, w in self._width.items()})
            views = {r: memoryview(buffers[r])[: n * w] for r, w in self._width.items()}
            self._gather(self._as_rows(data, n), views)
            return buffers, views
        buffers = self._pool.get({r: self.rows_per * w for r, w in self._width.items()})
        views = {r: memoryview(buffers[r])[: n * w] for r, w in self._width.items()}
        if not self.columns:
            self.source.read(self.name, first * self.row_bytes, n * self.row_bytes, views[ALL])
        elif not self._scatter(first, n, views):
            self._gather(self._source_rows(first, n, _buffer(n * self.row_bytes)), views)
        return buffers, views

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
