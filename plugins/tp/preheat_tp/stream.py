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
from .shared_tensor import ALL, EMPTY, SHARED_BLOCKS, Aborted, BufferPool, SharedTensor
from .slice_reads import is_contiguous, row_bytes, row_range, thread_buffer, thread_zeros

__all__ = [
    "ALL",
    "BLOCK",
    "EMPTY",
    "FDS_PER_THREAD",
    "IOV_MAX",
    "REMOTE_BLOCK",
    "SHARED_BLOCKS",
    "WINDOW",
    "Aborted",
    "Key",
    "Located",
    "SharedReads",
    "SharedTensor",
    "TensorSource",
    "share_key",
    "tensor_chunks",
]

# bytes per local read (the chunk a rank writes and hashes next): small enough that it is
# still in the CPU's cache when it is written and hashed. Sharding 4.2 GiB at tp=4 on the
# 2-vCPU build machine took 5.5 s (median of 6) with 4 MiB blocks, 3.8 s with 1 MiB.
BLOCK = 1 << 20
REMOTE_BLOCK = 16 << 20  # bytes per range read from a store without local files
WINDOW = 4  # blocks of a shared tensor read ahead of the slowest rank
IOV_MAX = 1024  # buffers per preadv call (Linux's UIO_MAXIOV)
FDS_PER_THREAD = 8  # source files each thread keeps open (see `TensorSource._fd`)

Located = Callable[[str], tuple[str, int]]


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
        self._fds: dict[int, dict[str, int]] = {}  # thread -> path -> fd, least recent first
        self._lock = threading.Lock()
        self.block = block or BLOCK
        self.remote_block = remote_block or REMOTE_BLOCK

    def _fd(self, path: str) -> int | None:
        # one descriptor per thread and file: the kernel keeps read-ahead state per open file,
        # and the ranks' streams through one file interleaved on a shared one defeat it (a
        # tp=4 shard of 4.2 GiB from a cold page cache: 9.3 and 6.6 s that way, 6.4 and 6.0 s
        # with one per thread, against 6.2-7.0 s for the floor program of benchmarks/shard.py).
        # Each thread keeps its FDS_PER_THREAD most recent: tp x files could pass the usual
        # limit of 1024 open files (tp=8 and a 191-file checkpoint). A descriptor is only used
        # inside the call that asked for it, so closing the least recent one is safe.
        thread = threading.get_ident()
        with self._lock:
            mine = self._fds.setdefault(thread, {})
        fd = mine.pop(path, None)
        if fd is None:
            if len(mine) >= FDS_PER_THREAD:
                stale = mine.pop(next(iter(mine)))
                if stale >= 0:
                    os.close(stale)
            local = self._local(path)
            fd = os.open(local, os.O_RDONLY) if local is not None else -1
        mine[path] = fd
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
            for mine in self._fds.values():
                for fd in mine.values():
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
                yield thread_zeros(n)
                remaining -= n
            continue
        together = shared.lookup(piece, out_dtype) if shared is not None else None
        if together is not None:
            yield from together.chunks(rank)
            continue
        src_row = row_bytes(piece)
        same = normalize_dtype(piece.source_dtype) == out_dtype
        if same and is_contiguous(piece):
            first, last = row_range(piece)
            yield from source.blocks(
                piece.source, first * src_row, (last - first) * src_row, thread_buffer(block)
            )
            continue
        yield from _gathered(piece, source, src_row, out_dtype)


def _gathered(piece: Slice, source: TensorSource, src_row: int, out_dtype: str) -> Iterator:
    """Row blocks of a column slice (or of a converted row slice), gathered and converted by numpy."""
    block = source.block_for(piece.source)
    rows_per = max(1, block // src_row)
    first, last = row_range(piece)
    dtype = NUMPY[normalize_dtype(piece.source_dtype)]
    for row in range(first, last, rows_per):
        n = min(rows_per, last - row)
        view = source.read(piece.source, row * src_row, n * src_row, thread_buffer(n * src_row))
        array = np.frombuffer(view, dtype=dtype).reshape((n, *piece.source_shape[1:]))
        if piece.axis == 1:
            array = array[:, piece.start : piece.stop]
        out = np.ascontiguousarray(convert(array, piece.source_dtype, out_dtype))
        yield memoryview(out).cast("B")


Key = tuple  # (source, out dtype, "columns") or (source, out dtype, "rows", first, last)


def share_key(piece: Slice, out_dtype: str) -> Key:
    """What ranks must have in common to share reads of `piece`: its source and, for rows, the rows."""
    out_dtype = normalize_dtype(out_dtype)
    if not is_contiguous(piece):
        return (piece.source, out_dtype, "columns")
    return (piece.source, out_dtype, "rows", *row_range(piece))


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
        self._pool = BufferPool(blocks=window)
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
