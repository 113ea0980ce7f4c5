"""Building one artifact version safely: a lease, a journal of verified files, an atomic publish.

Exactly one run builds a given version at a time (the lease holder); others
wait for it and reuse what it publishes. Each file is written to its final
key only once complete, and recorded in the journal once verified, so a
rerun after a crash skips what is already done. The manifest is written
last: until then the version is invisible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import attrs
import psutil

from preheat.catalog import Catalog
from preheat.errors import Cancelled, PreconditionFailed, PreheatError
from preheat.models import FileEntry, Manifest
from preheat.store import ObjectInfo, ObjectWriter

log = logging.getLogger("preheat")

LEASE_TTL = 60.0
HEARTBEAT = 10.0


def _process_start() -> float:
    return psutil.Process().create_time()


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            proc = psutil.Process(holder["pid"])
            return (
                abs(proc.create_time() - holder["started"]) < 1
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except (psutil.NoSuchProcess, KeyError):
            return False
    return time.time() - holder.get("heartbeat", 0) < LEASE_TTL


class Draft:
    """An unpublished artifact version being built by one run."""

    def __init__(self, catalog: Catalog, name: str, version: str, run: str) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.name = name
        self.version = version
        self.run = run
        self.prefix = catalog.artifact_prefix(name, version)
        self._staging = catalog.staging_prefix(name, version)
        # where files are written until publish: a staging folder moved into place at once where
        # the store can rename, else the final keys (invisible until the manifest exists)
        self._files = self._staging + "files/" if self.store.can_rename else self.prefix
        self._lease_key = self._staging + "lease.json"
        self._lease_etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = threading.Event()
        self.published: Manifest | None = None

    # lease

    def _lease_body(self) -> bytes:
        return json.dumps(
            {
                "run": self.run,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": _process_start(),
                "heartbeat": time.time(),
            }
        ).encode()

    def acquire(
        self,
        *,
        on_wait: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Manifest | None:
        """Take the lease; if another live run holds it, wait until it publishes.

        Returns the published manifest when the version appeared meanwhile
        (nothing left to do), or None when this run now holds the lease.
        """
        waited = False
        while True:
            published = self.catalog.manifest(self.name, self.version)
            if published is not None:
                return published
            current = self.store.read(self._lease_key)
            try:
                if current is None:
                    self._lease_etag = self.store.put(
                        self._lease_key, self._lease_body(), if_absent=True
                    ).etag
                elif not _holder_alive(json.loads(current[0])):
                    self._lease_etag = self.store.put(
                        self._lease_key, self._lease_body(), if_match=current[1]
                    ).etag
                else:
                    if not waited and on_wait is not None:
                        on_wait(json.loads(current[0]).get("run", "another run"))
                    waited = True
                    if cancelled():
                        raise Cancelled("run cancelled while waiting for another run")
                    time.sleep(0.5)
                    continue
            except PreconditionFailed:
                continue
            published = self.catalog.manifest(self.name, self.version)
            if published is not None:
                self.release()
                return published
            self._heartbeat = threading.Thread(target=self._beat, name="preheat-lease", daemon=True)
            self._heartbeat.start()
            return None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self._lease_etag = self.store.put(
                    self._lease_key, self._lease_body(), if_match=self._lease_etag
                ).etag
            except PreconditionFailed:
                self.lost.set()
                return
            except Exception:  # a transient store error: try again next beat
                continue

    def release(self) -> None:
        """Stop the heartbeat and drop the lease (the journal stays for a resume)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if self._lease_etag is not None:
            self.store.delete(self._lease_key)
            self._lease_etag = None

    def check(self) -> None:
        """Raise if another run took the lease over (this one was presumed dead)."""
        if self.lost.is_set():
            raise PreheatError(
                f"run {self.run} lost its lease on {self.name}:{self.version} to another run"
            )

    # files

    def file_key(self, path: str) -> str:
        return self._files + path

    def _journal_key(self, path: str) -> str:
        return self._staging + "verified/" + hashlib.sha256(path.encode()).hexdigest() + ".json"

    def verified(
        self, path: str, size: int, sha256: str | None = None, etag: str | None = None
    ) -> FileEntry | None:
        """The entry of a file a previous attempt already wrote and verified, if still intact.

        `sha256` and `etag` (the source's digest and etag of the file), when given, must
        match what the journal recorded.
        """
        found = self.store.read(self._journal_key(path))
        if found is None:
            return None
        entry = json.loads(found[0])
        info = self.store.head(self.file_key(path))
        if (
            info is None
            or entry["size"] != size
            or info.size != size
            or info.etag != entry.get("etag")
            or (sha256 is not None and entry["sha256"] != sha256)
            or (etag is not None and entry.get("source_etag") not in (None, etag))
        ):
            return None
        return FileEntry(
            path=path,
            size=size,
            sha256=entry["sha256"],
            etag=entry.get("source_etag") or etag,
            origin=entry.get("origin"),
        )

    def open(self, path: str, *, resume: bool = False) -> ObjectWriter:
        """A writer for one file of the version; it becomes visible at its key on commit."""
        self.check()
        return self.store.open_writer(self.file_key(path), resume=resume)

    def copy_in(self, path: str, src_key: str) -> ObjectInfo:
        """Copy the stored object `src_key` in as the file `path` (inside the store: a link or
        server-side copy); journal it with `record` once it is checked.

        :raises NotFound: `src_key` is gone.
        """
        self.check()
        return self.store.copy(src_key, self.file_key(path))

    def record(self, entry: FileEntry, info: ObjectInfo) -> None:
        """Journal a committed, verified file so a rerun can skip it."""
        body = {
            "path": entry.path,
            "size": entry.size,
            "sha256": entry.sha256,
            "etag": info.etag,
            "source_etag": entry.etag,
            "origin": entry.origin,
        }
        self.store.put(self._journal_key(entry.path), json.dumps(body).encode())

    def write_stream(self, path: str, chunks: Iterable[bytes | memoryview]) -> FileEntry:
        """Write a file from chunks, hashing as it goes; journal it and return its entry."""
        from preheat.shard_pool import write_stream

        self.check()
        entry, info = write_stream(self.store, self.file_key(path), path, chunks)
        self.record(entry, info)
        return entry

    @property
    def files_prefix(self) -> str:
        """The store folder the draft's files are written to until publish."""
        return self._files

    def write_bytes(self, path: str, data: bytes) -> FileEntry:
        """Write a small file whole, journal it and return its entry."""
        return self.write_stream(path, [data])

    # publish

    def publish(self, manifest: Manifest, *, alias: str | None = "latest") -> Manifest:
        """Check every file is in place, write the manifest, move the alias, clean the staging area."""
        self.check()
        files = []
        for entry in manifest.files:
            info = self.store.head(self.file_key(entry.path))
            if info is None or info.size != entry.size:
                raise PreheatError(
                    f"refusing to publish {self.name}:{self.version}: {entry.path} is missing or has the wrong size"
                )
            files.append(attrs.evolve(entry, stored_etag=info.etag))
        if self._files != self.prefix and self.catalog.manifest(self.name, self.version) is None:
            self.store.rename_prefix(self._files, self.prefix)
            # the etag each file has once published (a local rename keeps it; others may not)
            for i, entry in enumerate(files):
                info = self.store.head(self.prefix + entry.path)
                files[i] = attrs.evolve(entry, stored_etag=info.etag if info else None)
        manifest = attrs.evolve(manifest, files=tuple(files))
        if not self.catalog.publish_manifest(manifest):
            manifest = self.catalog.manifest(self.name, self.version) or manifest
        if alias:
            self.catalog.set_alias(self.name, alias, self.version)
        self.store.delete_prefix(self._staging + "verified/")
        if self._files != self.prefix:
            self.store.delete_prefix(self._files)
        self.release()
        return manifest


@contextlib.contextmanager
def building(
    catalog: Catalog,
    name: str,
    version: str,
    run: str,
    *,
    doing: str,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Draft]:
    """Hold the lease on `name:version` for the block; the lease is always released after it.

    When another run published the version meanwhile, the draft's
    `published` is its manifest and the block has nothing left to build.
    """
    draft = Draft(catalog, name, version, run)
    draft.published = draft.acquire(
        on_wait=lambda other: log.info(
            "waiting for run %s, which is %s %s:%s", other, doing, name, version
        ),
        cancelled=cancelled,
    )
    try:
        yield draft
    finally:
        draft.release()
