"""Reuse: files the store already holds, in any version of any artifact, copied in instead of fetched.

A file is the same file when the source's etag and size match: the sha256 for LFS
files, the git blob id for the rest (`FileEntry.etag`, recorded for every fetched
file; an older manifest without it still matches LFS files by its sha256). The index
of every manifest's files is read once per run, and only when a run has something
to fetch. A stored copy is used only while the store still reports the size and
etag it had when it was published (`FileEntry.stored_etag`); one without a
recorded etag is re-hashed once copied. Anything else is fetched from the source.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import attrs

from preheat.catalog import Catalog
from preheat.errors import NotFound, PreheatError
from preheat.fetch import RemoteFile
from preheat.models import ArtifactRef, FileEntry, Manifest
from preheat.publish import Draft
from preheat.store import ObjectInfo, Store

log = logging.getLogger("preheat")

WORKERS = 8


def source_etag(f: RemoteFile) -> str | None:
    """The source's etag of a file: its sha256 for LFS files, its git blob id for the rest."""
    return f.sha256 or f.git_oid


@attrs.frozen
class Held:
    """One stored copy of a file: the artifact version holding it, its key and its manifest entry."""

    origin: ArtifactRef
    key: str
    entry: FileEntry


def usable(store: Store, held: Held) -> ObjectInfo | None:
    """The stored copy's info when it is still there, of the right size and unchanged."""
    try:
        info = store.head(held.key)
    except PreheatError as exc:
        log.info("cannot check the stored copy %s: %s", held.key, exc)
        return None
    if info is None or info.size != held.entry.size:
        return None
    if held.entry.stored_etag is not None and info.etag != held.entry.stored_etag:
        return None
    return info


class ReuseIndex:
    """Every file of every published manifest in the store, by (source etag, size).

    Built on first use, once; safe to share between threads.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._by: dict[tuple[str, int], list[Held]] | None = None
        self._lock = threading.Lock()

    def _index(self) -> dict[tuple[str, int], list[Held]]:
        with self._lock:
            if self._by is None:
                by: dict[tuple[str, int], list[Held]] = {}
                for manifest in self._manifests():
                    prefix = self.catalog.artifact_prefix(manifest.name, manifest.version)
                    for entry in manifest.files:
                        held = Held(manifest.ref, prefix + entry.path, entry)
                        # an LFS file's etag is its sha256: older manifests match by that alone
                        for tag in {entry.etag, entry.sha256} - {None, ""}:
                            by.setdefault((tag, entry.size), []).append(held)
                for found in by.values():  # copies whose etag can be checked first, newest first
                    found.reverse()
                    found.sort(key=lambda h: h.entry.stored_etag is None)
                self._by = by
                log.info("reuse index: %d stored files by etag", len(by))
            return self._by

    def _manifests(self) -> list[Manifest]:
        """Every published manifest, oldest first, read on parallel threads."""
        keys = []
        for info in self.catalog.store.list("manifests/"):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                keys.append((parts[1], parts[2][: -len(".json")]))

        def read(ref: tuple[str, str]) -> Manifest | None:
            try:
                return self.catalog.manifest(*ref)
            except Exception as exc:  # noqa: BLE001 - one unreadable manifest must not stop the run
                log.warning("reuse index: skipping manifests/%s/%s.json: %s", *ref, exc)
                return None

        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="preheat-index") as pool:
            found = [m for m in pool.map(read, keys) if m is not None]
        return sorted(found, key=lambda m: (m.created, m.version))

    def candidates(self, f: RemoteFile) -> list[Held]:
        """Stored copies of the source file `f`, best first (unchecked)."""
        tag = source_etag(f)
        if not tag:
            return []
        return list(self._index().get((tag, f.size), ()))

    def plan(self, store: Store, files: Iterable[RemoteFile]) -> dict[str, list[Held]]:
        """{path: usable stored copies, best first} for the files the store already holds."""
        wanted = [(f, c) for f in files if (c := self.candidates(f))]

        def check(item: tuple[RemoteFile, list[Held]]) -> tuple[str, list[Held]]:
            f, found = item
            for i, held in enumerate(found):
                if usable(store, held) is not None:
                    return f.path, found[i:]  # the first usable copy, then the fallbacks
            return f.path, []

        if not wanted:
            return {}
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="preheat-reuse") as pool:
            checked = list(pool.map(check, wanted))
        return {path: found for path, found in checked if found}


def copy_in(store: Store, draft: Draft, f: RemoteFile, held: Held) -> FileEntry | None:
    """Copy the stored copy `held` in as `f` and journal it; None (nothing left) when it cannot be used."""
    if usable(store, held) is None:
        log.info("the stored copy of %s in %s changed or is gone: fetching it", f.path, held.origin)
        return None
    dst = draft.file_key(f.path)
    try:
        info = draft.copy_in(f.path, held.key)
    except NotFound:
        log.info("the stored copy of %s in %s is gone: fetching it", f.path, held.origin)
        return None
    except PreheatError as exc:
        if draft.lost.is_set():
            raise
        log.warning("copying %s from %s failed (%s): fetching it", f.path, held.origin, exc)
        _drop(store, dst)
        return None
    ok = info.size == f.size
    if ok and held.entry.stored_etag is None:
        # nothing recorded to check the stored copy against: check the copy's bytes
        ok = _sha256(store, dst) == held.entry.sha256 and f.sha256 in (None, held.entry.sha256)
    if not ok:
        log.warning("the copy of %s from %s does not match: fetching it", f.path, held.origin)
        _drop(store, dst)
        return None
    entry = FileEntry(
        path=f.path,
        size=f.size,
        sha256=held.entry.sha256,
        etag=source_etag(f),
        origin=str(held.origin),
    )
    draft.record(entry, info)
    log.info("reused %s from %s (%d bytes)", f.path, held.origin, f.size)
    return entry


def _sha256(store: Store, key: str) -> str | None:
    digest = hashlib.sha256()
    try:
        for chunk in store.open_reader(key):
            digest.update(chunk)
    except PreheatError:
        return None
    return digest.hexdigest()


def _drop(store: Store, key: str) -> None:
    try:
        store.delete(key)
    except PreheatError as exc:
        log.warning("could not remove %s: %s", key, exc)
