"""The node cache's locks: `fcntl.flock` on lock files a remover may unlink."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock(path: Path, *, exclusive: bool, wait: bool = True) -> int | None:
    """An fd holding flock on `path` (None when `wait` is False and someone else holds it).

    Lock files may be unlinked by a remover holding them exclusively: after locking, the
    file is checked to still be the one at `path`, else it is opened and locked again.
    """
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
