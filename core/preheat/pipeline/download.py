"""Stage four: every selected file streamed into the store, verified, journaled, then published.

A file the store already holds (in any version of any artifact, see `reuse`) is
copied in inside the store instead, and journaled the same way.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from preheat.catalog import Catalog, now_iso
from preheat.errors import Cancelled, PreheatError
from preheat.fetch import Fetcher, RemoteFile, Snapshot
from preheat.models import (
    FileEntry,
    Manifest,
    Metadata,
    PrefetchRequest,
    Resources,
    ServingFacts,
)
from preheat.pipeline.progress import Context
from preheat.pipeline.reuse import Held, copy_in, source_etag
from preheat.publish import Draft, building
from preheat.resources import human_bytes
from preheat.transfers import (
    ThreadTransfers,
    Transfer,
    TransferJob,
    TransferPool,
    Transferred,
    transfer_one,
)

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
    reuse: dict[str, list[Held]] | None = None,
    transfers: TransferPool | None = None,
) -> Manifest:
    """Fetch, verify and publish the unsharded artifact `name:version` (or reuse it once published).

    `reuse` maps paths to stored copies of those files (best first) to copy in
    instead of fetching; `transfers` runs the fetches (see `download_all`).
    """
    reuse = reuse or {}
    with building(
        catalog, name, version, ctx.run, doing="fetching", cancelled=ctx.cancel.is_set
    ) as draft:
        if draft.published is not None:
            ctx.count(reused=sum(f.size for f in files))
            return draft.published
        total = sum(f.size for f in files)
        line = f"fetching {len(files)} files ({human_bytes(total)})"
        held = [f for f in files if f.path in reuse]
        if held:
            line += (
                f", reusing {len(held)} ({human_bytes(sum(f.size for f in held))}) "
                "already in the store"
            )
        ctx.stage(line, total)
        entries = download_all(
            ctx, catalog, fetcher, snapshot, files, draft, reuse,
            transfers=transfers, request=request,
        )  # fmt: skip
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
    reuse: dict[str, list[Held]] | None = None,
    *,
    transfers: TransferPool | None = None,
    request: PrefetchRequest | None = None,
) -> list[FileEntry]:
    """Download every file, largest first; the first failure stops the rest.

    A file already verified by an earlier attempt (the journal) is kept; one in `reuse`
    is copied from the store (both on parallel threads); every other one is handed to
    `transfers` (default: `ThreadTransfers`, parallel threads of this process running
    `fetcher.download`), and journaled here as each verified result comes back.
    `request` names the fetcher and its secret for pools that fetch elsewhere.
    """
    reuse = reuse or {}
    failed = threading.Event()
    store = catalog.store
    pool = transfers or ThreadTransfers()

    def settle(f: RemoteFile) -> FileEntry | None:
        """The file's entry when no transfer is needed (verified before, or copied in)."""
        entry = draft.verified(f.path, f.size, f.sha256, source_etag(f))
        if entry is not None:
            log.info("reusing verified %s", f.path)
            ctx.progress.advance(f.size)
            ctx.count(reused=f.size)
            return entry
        draft.check()
        for held in reuse.get(f.path, ()):
            if ctx.cancel.is_set() or failed.is_set():
                raise Cancelled(f"run {ctx.run} was cancelled")
            entry = copy_in(store, draft, f, held)
            if entry is not None:
                ctx.progress.advance(f.size)
                ctx.count(reused=f.size)
                return entry
        return None

    moved: dict[str, int] = {}  # bytes of each file already counted in the progress
    entries: dict[str, FileEntry] = {}
    lock = threading.Lock()

    def progress(path: str, n: int) -> None:
        with lock:
            if path in entries:
                return
            moved[path] = moved.get(path, 0) + n
        ctx.progress.advance(n)

    def fetch(t: Transfer) -> Transferred:
        draft.check()

        def on_bytes(n: int) -> None:
            if ctx.cancel.is_set() or failed.is_set():
                raise Cancelled(f"run {ctx.run} was cancelled")
            progress(t.file.path, n)

        return transfer_one(snapshot, t, fetcher, store, on_bytes=on_bytes)

    def done(result: Transferred) -> None:
        entry = result.entry
        draft.check()
        draft.record(entry, result.info)
        ctx.count(fetched=entry.size)
        with lock:
            entries[entry.path] = entry
            reported = moved.pop(entry.path, 0)
        ctx.progress.advance(max(entry.size - reported, 0))
        log.info("verified %s (%d bytes)", entry.path, entry.size)

    ordered = sorted(files, key=lambda f: -f.size)
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="preheat-fetch") as threads:
        futures = [threads.submit(settle, f) for f in ordered]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in finished if f.exception() is not None]
        if errors:
            failed.set()
            for f in pending:
                f.cancel()
            wait(pending)
            ctx.check()
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
    for f, future in zip(ordered, futures, strict=True):
        if future.result() is not None:
            entries[f.path] = future.result()
    todo = [Transfer(f, draft.file_key(f.path)) for f in ordered if f.path not in entries]
    if todo:
        job = TransferJob(
            run=ctx.run,
            store=store.url,
            source=request.source if request else snapshot.source.type,
            token_key=request.hf_token_key if request else "HF_TOKEN",
            snapshot=snapshot,
            resources=request.resources if request else Resources(),
        )
        try:
            pool.transfer(
                job,
                todo,
                fetch=fetch,
                done=done,
                progress=progress,
                cancelled=lambda: ctx.cancel.is_set() or failed.is_set(),
            )
        except BaseException:
            failed.set()
            ctx.check()
            raise
    missing = [f.path for f in ordered if f.path not in entries]
    if missing:
        raise PreheatError(f"the transfer pool did not report {len(missing)} files: {missing[:3]}")
    return [entries[f.path] for f in ordered]
