"""The node cache: verified local copies of artifacts that live in a remote store.

`cached_artifact(manifest, store)` returns a local directory holding the artifact, copied
(and sha256-verified) on first use, reused afterwards with no store reads at all. One entry
per store + artifact name + version; two processes asking for the same one at once make
one copy (the second waits for the first and reuses it). An artifact in a local store is
already on this machine: its store directory is returned as it is.

A hit re-stats every file (no reads); a file whose stat changed, or that is missing, is
re-verified and fetched again if it is damaged. When a fill would take the cache above
`max_bytes * high_watermark`, the least recently used entries that nobody holds are evicted
until it fits under `max_bytes * low_watermark`; an entry in use is never evicted. The
directory's layout and locks are described in `preheat.cachedir`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from preheat.cachedir import (
    STATE_SCHEMA,
    CacheDir,
    CacheEntry,
    PruneResult,
    entry_key,
    iso_time,
    lock,
    stat_record,
    unchanged,
)
from preheat.config import cache_settings, config_path
from preheat.errors import PreheatError
from preheat.models import FileEntry, Manifest
from preheat.resources import human_bytes
from preheat.store import Store

__all__ = [
    "CacheEntry",
    "CacheResult",
    "NodeCache",
    "PruneResult",
    "cached_artifact",
    "fill",
    "hold",
    "use_artifact",
]


@attrs.frozen
class CacheResult:
    """What `fill` did: the ready directory, whether it was a hit, what was filled and evicted.

    `filled_files` / `filled_bytes` count the files that were fetched from the store or
    re-verified in place (0 on a hit); `in_place` is True for a local store's own directory.
    """

    path: Path
    hit: bool
    in_place: bool = False
    filled_files: int = 0
    filled_bytes: int = 0
    evicted: tuple[CacheEntry, ...] = ()


class NodeCache(CacheDir):
    """The node cache: `CacheDir` plus filling, within its limit and watermarks."""

    def _damaged(
        self, key: str, state: dict | None, manifest: Manifest, store_url: str
    ) -> list[FileEntry]:
        """The manifest's files the entry does not hold verified and unchanged."""
        owner = (store_url, manifest.name, manifest.version)
        same = (
            state is not None
            and (state.get("store"), state.get("name"), state.get("version")) == owner
        )
        records = state.get("files", {}) if same else {}
        model = self.model_dir(key)
        return [e for e in manifest.files if not unchanged(model / e.path, records.get(e.path), e)]

    def _ready(self, key: str, manifest: Manifest, store_url: str) -> bool:
        state = self._read_state(key)
        return bool(
            state and state.get("complete") and not self._damaged(key, state, manifest, store_url)
        )

    # filling

    def fill(
        self, manifest: Manifest, store: Store, *, keep: bool = False
    ) -> tuple[CacheResult, int | None]:
        """Make the entry of `manifest` ready (filling or repairing it as needed).

        :param keep: return, as the second item, the fd that holds the entry in use (close
            it to release); else None and the entry is not held.
        :raises PreheatError: the artifact is larger than the limit (before anything is
            copied), no room can be made, the cache is not writable, or a store file is damaged.
        """
        limit = self.settings.max_bytes
        need = manifest.total_bytes
        if limit is not None and need > limit:
            raise PreheatError(
                f"{manifest.ref} is {human_bytes(need)}, more than the node cache limit "
                f"{human_bytes(limit)}: raise --cache-size or `max_bytes` in the [cache] table "
                f"of {config_path()}, or resolve with --to DIR"
            )
        self._prepare()
        key = entry_key(store.url, manifest.name, manifest.version)
        try:
            use = lock(self._lock_path(key, "use"), exclusive=False)
        except OSError as exc:
            raise self._error(exc) from None
        try:
            result = CacheResult(path=self.model_dir(key), hit=True)
            for _ in range(3):
                if self._ready(key, manifest, store.url):
                    self._touch(key)
                    if keep:
                        fd, use = use, None
                        return result, fd
                    return result, None
                result = self._fill_locked(key, manifest, store, result)
            raise PreheatError(
                f"the node cache entry of {manifest.ref} in {self.dir} keeps changing while it "
                "is filled: is something else writing there?"
            )
        finally:
            if use is not None:
                os.close(use)

    def _fill_locked(
        self, key: str, manifest: Manifest, store: Store, result: CacheResult
    ) -> CacheResult:
        """Fill or repair the entry under its fill lock (the caller holds it in use)."""
        fill = lock(self._lock_path(key, "fill"), exclusive=True)
        try:
            state = self._read_state(key)
            damaged = self._damaged(key, state, manifest, store.url)
            if state and state.get("complete") and not damaged:
                return result  # another process filled it while this one waited
            evicted = self._reserve(key, manifest, store.url, state, damaged)
            try:
                self._copy(key, manifest, store, damaged)
            except OSError as exc:
                raise self._error(exc) from None
        finally:
            os.close(fill)
        return attrs.evolve(
            result,
            hit=False,
            filled_files=result.filled_files + len(damaged),
            filled_bytes=result.filled_bytes + sum(e.size for e in damaged),
            evicted=result.evicted + tuple(evicted),
        )

    def _reserve(
        self,
        key: str,
        manifest: Manifest,
        store_url: str,
        state: dict | None,
        damaged: list[FileEntry],
    ) -> list[CacheEntry]:
        """Make room (evicting the least recently used) and record the entry as being filled."""
        limit, need = self.settings.max_bytes, manifest.total_bytes
        evicted: list[CacheEntry] = []
        with self._global():
            others = [e for e in self._scan() if e.key != key]
            used = sum(e.bytes for e in others)
            if limit is not None and used + need > limit * self.settings.high_watermark:
                target = limit * self.settings.low_watermark
                for entry in sorted(others, key=lambda e: e.used):
                    if used + need <= target:
                        break
                    if self._evict(entry.key):
                        evicted.append(entry)
                        used -= entry.bytes
                if used + need > limit:
                    raise PreheatError(
                        f"no room in the node cache {self.dir} for {manifest.ref} "
                        f"({human_bytes(need)}): {human_bytes(used)} of its "
                        f"{human_bytes(limit)} are held by artifacts in use; stop them or raise "
                        "--cache-size / [cache] max_bytes"
                    )
            copy = sum(e.size for e in damaged)
            free = shutil.disk_usage(self.dir).free
            if copy > free:
                raise PreheatError(
                    f"no space for {manifest.ref} in the node cache {self.dir}: "
                    f"{human_bytes(copy)} to copy, {human_bytes(free)} free on its device; "
                    "run `preheat cache prune` or set [cache] max_bytes"
                )
            names = {e.path for e in damaged}
            records = (state or {}).get("files", {})
            try:
                self._write_state(
                    key,
                    {
                        "schema": STATE_SCHEMA,
                        "store": store_url,
                        "name": manifest.name,
                        "version": manifest.version,
                        "bytes": need,
                        "complete": False,
                        "filled": None,
                        "files": {
                            e.path: records[e.path]
                            for e in manifest.files
                            if e.path not in names and e.path in records
                        },
                    },
                )
            except OSError as exc:
                raise self._error(exc) from None
        return evicted

    def _copy(self, key: str, manifest: Manifest, store: Store, damaged: list[FileEntry]) -> None:
        from preheat.catalog import Catalog
        from preheat.resolve import materialize

        model = self.model_dir(key)
        model.mkdir(parents=True, exist_ok=True)
        if damaged:
            # materialize re-verifies a file already there (sha256) and fetches it only if bad
            materialize(Catalog(store), attrs.evolve(manifest, files=tuple(damaged)), model)
        wanted = {e.path for e in manifest.files}
        for dirpath, dirnames, names in os.walk(model, topdown=False):
            for name in names:
                path = Path(dirpath, name)
                if path.relative_to(model).as_posix() not in wanted:
                    path.unlink()
            for name in dirnames:
                with contextlib.suppress(OSError):
                    Path(dirpath, name).rmdir()  # only empty ones
        records = {}
        for e in manifest.files:
            records[e.path] = stat_record(model / e.path, e)
            if records[e.path]["size"] != e.size:
                raise PreheatError(f"{e.path} of {manifest.ref} changed while it was cached")
        state = self._read_state(key) or {}
        state.update(
            schema=STATE_SCHEMA,
            store=store.url,
            name=manifest.name,
            version=manifest.version,
            bytes=manifest.total_bytes,
            complete=True,
            filled=iso_time(time.time()),
            files=records,
        )
        self._write_state(key, state)


# --- the functions the CLI and serving code call ----------------------------------------------


def _in_place(manifest: Manifest, store: Store) -> Path | None:
    from preheat.catalog import Catalog

    local = store.local_path(Catalog.artifact_prefix(manifest.name, manifest.version).rstrip("/"))
    return None if local is None else Path(local)


def fill(manifest: Manifest, store: Store, *, max_bytes: str | int | None = None) -> CacheResult:
    """Make `manifest`'s artifact ready in the node cache (a local store's directory as it is)."""
    local = _in_place(manifest, store)
    if local is not None:
        return CacheResult(path=local, hit=True, in_place=True)
    result, _ = NodeCache(cache_settings(max_bytes)).fill(manifest, store)
    return result


def cached_artifact(
    manifest: Manifest, store: Store, *, max_bytes: str | int | None = None
) -> Path:
    """A local directory holding `manifest`'s artifact, verified: the node cache's copy.

    The first call copies and verifies every byte; later calls (any process) re-stat the
    files and read nothing from the store. For a local store, its own directory. To keep
    the copy from being evicted while it is used, use `use_artifact` (or `hold`).
    """
    return fill(manifest, store, max_bytes=max_bytes).path


@contextlib.contextmanager
def use_artifact(
    manifest: Manifest, store: Store, *, max_bytes: str | int | None = None
) -> Iterator[Path]:
    """`cached_artifact`, held in use until the block ends (a running server): never evicted."""
    local = _in_place(manifest, store)
    if local is not None:
        yield local
        return
    cache = NodeCache(cache_settings(max_bytes))
    result, fd = cache.fill(manifest, store, keep=True)
    try:
        yield result.path
    finally:
        cache._touch(result.path.parent.name)  # used until now
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def hold(entry: CacheEntry | str | os.PathLike[str]) -> Iterator[Path]:
    """Hold a node cache entry (or the directory `cached_artifact` returned) in use."""
    with NodeCache().hold(entry) as path:
        yield path
