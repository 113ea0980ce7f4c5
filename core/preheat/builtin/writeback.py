"""Early writeback: start writing a file's dirty pages to disk while more of it is written.

A file that is fsynced once at its end leaves the kernel to write it back in
one burst: until the dirty threshold is reached the disk idles, and the
final fsync then waits for all of it. Asking for writeback of each finished
stretch as the file grows (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
queues the pages and returns) keeps the disk busy throughout and leaves the
fsync little to do. Measured on the 2-vCPU build machine, a tp=4 shard of
4.2 GiB (medians of 6): 4.85 s with one fsync per file at its end, 4.26 s
with writeback started every 64 MiB, 3.69 s every 16 MiB (4 and 8 MiB were no
faster). Python's `os` has no `sync_file_range`, so it is called from libc;
where that is missing (not Linux), this does nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EVERY = 16 << 20  # bytes written between two writeback requests
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


class Writeback:
    """Follows a file written in order from offset `start`; every `EVERY` bytes, queues the
    new stretch for disk."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self._fd = fd
        self._queued = self._end = start
        self._call = _sync_file_range()

    def wrote(self, n: int) -> None:
        """`n` more bytes were written, right after the previous ones."""
        self._end += n
        if self._call is None or self._end - self._queued < EVERY:
            return
        # advisory (a failure is ignored): the fsync at the end still decides durability
        self._call(self._fd, self._queued, self._end - self._queued, _SYNC_FILE_RANGE_WRITE)
        self._queued = self._end
