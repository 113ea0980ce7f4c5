"""The built-in local-filesystem store (`file://` URLs and plain paths)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from preheat.builtin.local_ranges import LocalRanges
from preheat.builtin.writeback import Writeback
from preheat.errors import NotFound, PreconditionFailed, PreheatError
from preheat.hookspecs import hookimpl
from preheat.store import ObjectInfo, ObjectWriter, Store

_HIDDEN = (".partial", ".locks")
# ioctl(dst, FICLONE, src): share src's extents (btrfs, XFS, bcachefs, ...)
_FICLONE = 0x40049409


def _durable() -> bool:
    """Whether committed files are fsynced (PREHEAT_FSYNC=0 trades crash safety for speed)."""
    return os.environ.get("PREHEAT_FSYNC", "1") != "0"


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, etag=_etag(st), modified=st.st_mtime)


def _clone(src: Path, dst: Path) -> None:
    """Make `dst` (new) share `src`'s bytes: a hard link, else a reflink, else a kernel copy.

    A hard link is one more name for the same immutable file (removing either
    name leaves the other intact); it fails across filesystems (EXDEV) or where
    links are not allowed (EPERM, e.g. some network filesystems), and then a
    reflink shares the extents instead. A plain copy is the last resort.
    """
    try:
        os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
            raise
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
    except OSError:
        shutil.copyfile(src, dst)  # sendfile/copy_file_range in the kernel where it can
    if _durable():
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_error(exc: OSError, path: Path) -> PreheatError:
    if exc.errno == errno.ENOSPC:
        return PreheatError(
            f"no space left on the device holding {path}: free space or use another --store"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PreheatError(f"cannot write {path}: {exc.strerror}; use a writable --store")
    return PreheatError(f"cannot write {path}: {exc.strerror or exc}")


class _FileWriter(ObjectWriter):
    def __init__(self, store: LocalStore, key: str, resume: bool) -> None:
        self._dest = store._path(key)
        partials = store.root / ".partial"
        partials.mkdir(parents=True, exist_ok=True)
        if resume:
            self._partial = partials / hashlib.sha256(key.encode()).hexdigest()
            self._file = open(self._partial, "ab")  # noqa: SIM115
            self.offset = self._file.tell()
        else:
            fd, name = tempfile.mkstemp(dir=partials, prefix="w-")
            self._partial = Path(name)
            self._file = os.fdopen(fd, "wb")
            self.offset = 0
        self._resume = resume
        self._writeback = Writeback(self._file.fileno(), self.offset) if _durable() else None

    def existing(self) -> Iterator[bytes]:
        if not self.offset:
            return
        with open(self._partial, "rb") as f:
            remaining = self.offset
            while remaining:
                chunk = f.read(min(8 << 20, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _disk_error(exc, self._dest) from exc
        if self._writeback is not None:
            self._writeback.wrote(len(data))

    def commit(self) -> ObjectInfo:
        try:
            self._file.flush()
            if _durable():
                os.fsync(self._file.fileno())
            self._file.close()
            self._dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._partial, self._dest)
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self._dest) from exc
        st = self._dest.stat()
        return ObjectInfo(key=str(self._dest), size=st.st_size, etag=_etag(st))

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        if not self._resume:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._partial.unlink()


class LocalStore(LocalRanges, Store):
    """A store in a local directory; artifact files are plain files an engine can load directly."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """A store from `file:///path`, or a plain path."""
        if url.startswith("file:"):
            parsed = urlparse(url)
            if parsed.netloc not in ("", "localhost"):
                raise PreheatError(f"invalid store URL {url!r}: use file:///absolute/path")
            return cls(unquote(parsed.path))
        return cls(url)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise PreheatError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self._path(key)):
            return None
        return _info(key, st)

    def read(self, key: str) -> tuple[bytes, str | None] | None:
        try:
            with open(self._path(key), "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), _etag(st)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as f:
            return os.pread(f.fileno(), length, start)

    def open_reader(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / hashlib.sha256(key.encode()).hexdigest(), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _disk_error(exc, dest) from exc
        try:
            if if_absent:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise PreconditionFailed(f"{key} already exists") from None
            elif if_match is not None:
                with self._key_lock(key):
                    current = self.head(key)
                    if current is None or current.etag != if_match:
                        raise PreconditionFailed(f"{key} changed since it was read")
                    os.replace(tmp, dest)
            else:
                os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _info(key, dest.stat())

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """A hard link of `src_key` at `dst_key` (a reflink, or a copy, where links fail).

        Artifact files are never written in place, so sharing one inode between
        versions is safe: `delete` of either key leaves the other intact.
        """
        src, dest = self._path(src_key), self._path(dst_key)
        if not src.is_file():
            raise NotFound(f"{src} does not exist")
        partials = self.root / ".partial"
        try:
            partials.mkdir(parents=True, exist_ok=True)
            tmp = partials / f"c-{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
            try:
                _clone(src, tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
            finally:
                # rename() between two links of one inode does nothing: drop the spare name
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        except FileNotFoundError as exc:
            if not src.exists():
                raise NotFound(f"{src} does not exist") from None
            raise _disk_error(exc, dest) from exc
        except OSError as exc:
            raise _disk_error(exc, dest) from exc
        return _info(dst_key, dest.stat())

    def open_writer(self, key: str, *, resume: bool = False) -> ObjectWriter:
        try:
            return _FileWriter(self, key, resume)
        except OSError as exc:
            raise _disk_error(exc, self._path(key)) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not rel:
                dirnames[:] = [d for d in dirnames if d not in _HIDDEN]
            dirnames[:] = [
                d
                for d in dirnames
                if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")
            ]
            dirnames.sort()
            for name in sorted(filenames):
                key = rel + name
                if key.startswith(prefix) and not name.startswith(".put-"):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:  # removed while listing
                        continue
                    yield _info(key, st)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        target = self.root / prefix
        if prefix.endswith("/") and target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        return count

    can_rename = True

    def rename_prefix(self, src: str, dst: str) -> None:
        source, target = self._path(src.rstrip("/")), self._path(dst.rstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.rename(source, target)

    def free_bytes(self) -> int | None:
        path = self.root
        while not path.exists():
            path = path.parent
        return shutil.disk_usage(path).free

    def gc(self, older_than: float | None = None) -> int:
        """Remove partial files (of interrupted downloads, copies and ranged uploads) at least
        `older_than` s old."""
        partials = self.root / ".partial"
        if not partials.is_dir():
            return 0
        age = self.gc_after if older_than is None else older_than
        cutoff = time.time() - age
        removed = 0
        for entry in partials.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if age > 0 and entry.stat().st_mtime > cutoff:
                    continue
                if entry.is_dir():  # the spans written of a ranged upload
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
        return removed


@hookimpl
def preheat_register_stores(register):
    register("file", LocalStore.from_url)
