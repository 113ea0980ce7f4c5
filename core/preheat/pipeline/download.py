"""Stage four: every selected file streamed into the store, verified, journaled, then published."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from preheat.catalog import Catalog, now_iso
from preheat.errors import Cancelled
from preheat.fetch import Fetcher, IntegrityError, RemoteFile, Snapshot
from preheat.models import FileEntry, Manifest, Metadata, PrefetchRequest, ServingFacts
from preheat.pipeline.progress import Context
from preheat.publish import Draft, building
from preheat.resources import human_bytes

log = logging.getLogger("preheat")

WORKERS = 8


def fetch_artifact(
    ctx: Context,
    catalog: Catalog,
    fetcher: Fetcher,
    snapshot: Snapshot,
    files: list[RemoteFile],
    name: str,
    version: str,
    request: PrefetchRequest,
    metadata: Metadata,
    serving: ServingFacts,
    *,
    alias: bool,
) -> Manifest:
    """Fetch, verify and publish the unsharded artifact `name:version` (or reuse it once published)."""
    with building(
        catalog, name, version, ctx.run, doing="fetching", cancelled=ctx.cancel.is_set
    ) as draft:
        if draft.published is not None:
            return draft.published
        total = sum(f.size for f in files)
        ctx.stage(f"fetching {len(files)} files ({human_bytes(total)})", total)
        entries = download_all(ctx, catalog, fetcher, snapshot, files, draft)
        manifest = Manifest(
            name=name,
            version=version,
            created=now_iso(),
            source=snapshot.source,
            files=tuple(sorted(entries, key=lambda e: e.path)),
            include=tuple(request.include),
            exclude=tuple(request.exclude),
            force=request.force,
            metadata=metadata,
            serving=serving,
        )
        ctx.stage(f"publishing {name}:{version}")
        return draft.publish(manifest, alias="latest" if alias else None)


def download_all(
    ctx: Context,
    catalog: Catalog,
    fetcher: Fetcher,
    snapshot: Snapshot,
    files: list[RemoteFile],
    draft: Draft,
) -> list[FileEntry]:
    """Download every file on parallel threads, largest first; the first failure stops the rest."""
    failed = threading.Event()
    store = catalog.store

    def on_bytes(n: int) -> None:
        if ctx.cancel.is_set() or failed.is_set():
            raise Cancelled(f"run {ctx.run} was cancelled")
        ctx.progress.advance(n)

    def one(f: RemoteFile) -> FileEntry:
        entry = draft.verified(f.path, f.size, f.sha256)
        if entry is not None:
            log.info("reusing verified %s", f.path)
            ctx.progress.advance(f.size)
            return entry
        draft.check()
        writer = draft.open(f.path, resume=True)
        try:
            digest = fetcher.download(snapshot, f, writer, on_bytes=on_bytes)
            info = writer.commit()
        except IntegrityError:
            writer.discard()
            raise
        except BaseException:
            writer.abort()
            raise
        entry = FileEntry(path=f.path, size=f.size, sha256=digest)
        draft.record(entry, store.head(draft.file_key(f.path)) or info)
        log.info("verified %s (%d bytes)", f.path, f.size)
        return entry

    ordered = sorted(files, key=lambda f: -f.size)
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="preheat-fetch") as pool:
        futures = [pool.submit(one, f) for f in ordered]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            failed.set()
            for f in pending:
                f.cancel()
            wait(pending)
            first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            ctx.check()
            raise first
        return [f.result() for f in futures]
