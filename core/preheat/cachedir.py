"""The node cache's directory: its layout, locks and entry state; listing, removing, holding.

Filling entries is `preheat.cache`'s job. Layout under the cache directory
(`$PREHEAT_HOME/cache`, or `dir` in the `[cache]` table of the config file, see
`preheat.config`):

    entries/KEY/model/...    the artifact's files: the directory an engine loads
    entries/KEY/state.json   store, name, version, bytes, whether the entry is complete, and
                             each file's sha256, size, mtime_ns, ctime_ns and inode recorded
                             right after it was verified; the file's mtime is the last use
    locks/KEY.fill           held exclusively while the entry is filled or repaired
    locks/KEY.use            held shared while the entry is in use (a resolve, a server);
                             taken exclusively, never waited for, to remove the entry
    .lock                    held exclusively while room is made and reserved for a fill,
                             and while entries are removed
    trash/                   entries on their way out

KEY is `NAME--VERSION--H`, H the first 16 hex digits of the sha256 of the store URL. Every
lock is an `fcntl.flock` (per open file, so one process holding an entry in use also keeps
its own removals away). Only a remover holding a lock file exclusively unlinks it; a locker
checks, once it holds the lock, that the file is still the one at its path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs

from preheat.cache_entries import (
    STATE_SCHEMA,
    CacheEntry,
    PruneResult,
    entry_key,
    iso_time,
    stat_record,
    unchanged,
)
from preheat.cache_locks import lock
from preheat.config import CacheSettings, cache_settings, config_path
from preheat.errors import NotFound, PreheatError
from preheat.models import FileEntry

__all__ = [
    "STATE_SCHEMA",
    "CacheDir",
    "CacheEntry",
    "PruneResult",
    "entry_key",
    "iso_time",
    "lock",
    "stat_record",
    "unchanged",
]


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class CacheDir:
    """The node cache's directory: paths, locks, entry state, listing, removal, holding."""

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or cache_settings()
        self.dir = self.settings.dir
        self.entries_dir = self.dir / "entries"
        self.locks_dir = self.dir / "locks"
        self.trash_dir = self.dir / "trash"

    # paths and state

    def model_dir(self, key: str) -> Path:
        return self.entries_dir / key / "model"

    def _state_path(self, key: str) -> Path:
        return self.entries_dir / key / "state.json"

    def _lock_path(self, key: str, kind: str) -> Path:
        return self.locks_dir / f"{key}.{kind}"

    def _error(self, exc: OSError, what: str = "write") -> PreheatError:
        if exc.errno == errno.ENOSPC:
            return PreheatError(
                f"no space left on the device holding the node cache {self.dir}: "
                "run `preheat cache prune` or set a smaller [cache] max_bytes"
            )
        return PreheatError(
            f"cannot {what} the node cache {self.dir}: {exc.strerror or exc}; make it writable "
            f"or set `dir` in the [cache] table of {config_path()}"
        )

    def _prepare(self) -> None:
        try:
            for d in (self.entries_dir, self.locks_dir, self.trash_dir):
                d.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
            if not os.access(self.entries_dir, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise self._error(exc) from None

    def _read_state(self, key: str) -> dict | None:
        try:
            with open(self._state_path(key), "rb") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("schema") == STATE_SCHEMA else None

    def _write_state(self, key: str, state: dict) -> None:
        path = self._state_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".state-{uuid.uuid4().hex}.json")
        with open(tmp, "w") as f:
            json.dump(state, f, sort_keys=True)
        os.replace(tmp, path)

    def _touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._state_path(key))

    @contextlib.contextmanager
    def _global(self) -> Iterator[None]:
        fd = lock(self.dir / ".lock", exclusive=True)
        try:
            yield
        finally:
            os.close(fd)

    def _scan(self) -> list[CacheEntry]:
        found = []
        try:
            keys = sorted(p.name for p in self.entries_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        for key in keys:
            state = self._read_state(key)
            try:
                used = self._state_path(key).stat().st_mtime
            except OSError:
                used = 0.0
            found.append(
                CacheEntry(
                    key=key,
                    path=self.model_dir(key),
                    store=(state or {}).get("store"),
                    name=(state or {}).get("name"),
                    version=(state or {}).get("version"),
                    bytes=int(state["bytes"]) if state else _tree_bytes(self.entries_dir / key),
                    files=len((state or {}).get("files", {})),
                    complete=bool(state and state.get("complete")),
                    used=used,
                    filled=(state or {}).get("filled"),
                )
            )
        return found

    def _in_use(self, key: str) -> bool:
        fd = lock(self._lock_path(key, "use"), exclusive=True, wait=False)
        if fd is None:
            return True
        os.close(fd)
        return False

    def _evict(self, key: str) -> bool:
        """Remove an entry unless someone holds it; True when removed."""
        fd = lock(self._lock_path(key, "use"), exclusive=True, wait=False)
        if fd is None:
            return False
        try:
            doomed = self.trash_dir / f"{key}.{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.entries_dir / key, doomed)
            except FileNotFoundError:
                return True
            shutil.rmtree(doomed, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def list(self) -> list[CacheEntry]:
        """Every entry, least recently used first, with whether it is in use now."""
        if not self.entries_dir.is_dir():
            return []
        entries = [attrs.evolve(e, in_use=self._in_use(e.key)) for e in self._scan()]
        return sorted(entries, key=lambda e: e.used)

    def remove(self, ref: str, store_url: str | None = None) -> list[CacheEntry]:
        """Remove the entries of `NAME` (every version) or `NAME:VERSION`, from one store or all."""
        from preheat.names import validate_artifact_name

        name, _, version = ref.partition(":")
        validate_artifact_name(name)
        self._prepare()
        with self._global():
            matches = [
                e
                for e in self._scan()
                if e.name == name
                and (not version or e.version == version)
                and (store_url is None or e.store == store_url)
            ]
            if not matches:
                raise NotFound(
                    f"{ref} is not in the node cache {self.dir}: see `preheat cache list`"
                )
            removed = [e for e in matches if self._evict(e.key)]
        busy = [e.ref for e in matches if e not in removed]
        if busy:
            raise PreheatError(
                f"{', '.join(busy)} in use by a running process, not removed"
                + (
                    f" ({len(removed)} other entr{'y' if len(removed) == 1 else 'ies'} removed)"
                    if removed
                    else ""
                )
                + ": stop it and run `preheat cache rm` again"
            )
        return removed

    def prune(
        self, *, max_bytes: int | None = None, older_than: float | None = None
    ) -> PruneResult:
        """Remove leftovers, entries unused for `older_than` seconds, then the least recently used
        until the cache holds at most `max_bytes` (default: the configured limit, down to its low
        watermark when above the high one). Entries in use are kept and reported."""
        self._prepare()
        removed: list[CacheEntry] = []
        busy: list[CacheEntry] = []
        now = time.time()
        with self._global():
            entries = sorted(self._scan(), key=lambda e: e.used)
            keep = []
            for e in entries:
                stale = older_than is not None and e.used < now - older_than
                if not e.complete or stale:
                    if self._evict(e.key):
                        removed.append(e)
                        continue
                    if stale:
                        busy.append(e)
                keep.append(e)
            total = sum(e.bytes for e in keep)
            limit = max_bytes
            configured = self.settings.max_bytes
            if (
                limit is None
                and configured is not None
                and total > configured * self.settings.high_watermark
            ):
                limit = int(configured * self.settings.low_watermark)
            if limit is not None:
                for e in list(keep):
                    if total <= limit:
                        break
                    if self._evict(e.key):
                        removed.append(e)
                        keep.remove(e)
                        total -= e.bytes
                    elif e not in busy:
                        busy.append(e)
            self._sweep()
        return PruneResult(tuple(removed), tuple(busy), total)

    def _sweep(self) -> None:
        """Remove trash and the lock files of entries that no longer exist (under the global lock)."""
        for path in self.trash_dir.iterdir():
            shutil.rmtree(path, ignore_errors=True)
        keys = {p.name.rsplit(".", 1)[0] for p in self.locks_dir.iterdir()}
        for key in keys:
            if (self.entries_dir / key).exists():
                continue
            fill = lock(self._lock_path(key, "fill"), exclusive=True, wait=False)
            if fill is None:
                continue
            try:
                use = lock(self._lock_path(key, "use"), exclusive=True, wait=False)
                if use is None:
                    continue
                try:
                    if not (self.entries_dir / key).exists():
                        for kind in ("fill", "use"):
                            with contextlib.suppress(FileNotFoundError):
                                self._lock_path(key, kind).unlink()
                finally:
                    os.close(use)
            finally:
                os.close(fill)

    @contextlib.contextmanager
    def hold(self, entry: CacheEntry | str | os.PathLike[str]) -> Iterator[Path]:
        """Hold an entry in use (never evicted meanwhile); yields its directory.

        :param entry: a `CacheEntry`, or the directory `cached_artifact` returned.
        :raises NotFound: the entry is gone or incomplete (resolve it again).
        """
        key = entry.key if isinstance(entry, CacheEntry) else self._key_of(Path(entry))
        fd = lock(self._lock_path(key, "use"), exclusive=False)
        try:
            state = self._read_state(key)
            model = self.model_dir(key)
            intact = bool(state and state.get("complete")) and all(
                unchanged(model / path, record, FileEntry(path, record["size"], record["sha256"]))
                for path, record in state.get("files", {}).items()
            )
            if not intact:
                raise NotFound(f"{model} is no longer complete in the node cache: resolve it again")
            self._touch(key)
            try:
                yield model
            finally:
                self._touch(key)  # used until now
        finally:
            os.close(fd)

    def _key_of(self, path: Path) -> str:
        path = path.expanduser().resolve()
        entries = self.entries_dir.resolve()
        if path.parent.parent != entries or path.name != "model":
            raise PreheatError(f"{path} is not an entry of the node cache {self.dir}")
        return path.parent.name
