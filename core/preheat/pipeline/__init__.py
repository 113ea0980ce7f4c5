"""The prefetch pipeline: validate, pin, inspect, check capacity, fetch + verify, shard, publish.

Every check that can fail does so before the first weight byte moves. Each
stage lives in its own module; `Pipeline` chains them for one run.
"""

from __future__ import annotations

import logging
import threading

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.fetch import Fetcher, SourceOffline, select
from preheat.metadata import detect_metadata, serving_facts
from preheat.models import FileEntry, Manifest, PrefetchRequest
from preheat.pipeline.capacity import check_capacity
from preheat.pipeline.download import fetch_artifact
from preheat.pipeline.inspection import inspect_remote, inspect_stored
from preheat.pipeline.progress import Context, Progress
from preheat.pipeline.request import (
    Prepared,
    check_name_owner,
    prepare,
    stored_match,
    version_of,
)
from preheat.pipeline.reuse import ReuseIndex
from preheat.pipeline.sharding import shard_artifact
from preheat.plugins import lookup
from preheat.shard import ModelView, ShardPlan
from preheat.shard_pool import ShardPool
from preheat.transfers import TransferPool

__all__ = ["Outcome", "Pipeline", "Prepared", "Progress", "prepare", "version_of"]

log = logging.getLogger("preheat")


@attrs.frozen
class Outcome:
    """What a prefetch produced: the artifact's manifest and whether it was reused as is.

    `bytes_fetched` and `bytes_reused` split the selected source files' bytes into those
    fetched from the source and those the store already held.
    """

    manifest: Manifest
    reused: bool
    bytes_fetched: int = 0
    bytes_reused: int = 0


class Pipeline:
    """One prefetch, run by one process, reporting to `progress` and stopping when `cancel` is set.

    `transfers` moves the files to fetch (default: threads of this process);
    `shards` writes the parts of a shard (default: the sharder, in this process).
    """

    def __init__(
        self,
        catalog: Catalog,
        run: str,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        transfers: TransferPool | None = None,
        shards: ShardPool | None = None,
    ) -> None:
        self.catalog = catalog
        self.transfers = transfers
        self.shards = shards
        self.store = catalog.store
        self.run = run
        self.ctx = Context(run, progress, cancel)

    def prefetch(self, request: PrefetchRequest) -> Outcome:
        """Run the whole pipeline for `request`."""
        prepared = prepare(request)
        fetcher_factory = lookup("fetchers", request.source).value
        fetcher: Fetcher = fetcher_factory(token_key=request.hf_token_key)
        try:
            outcome = self._prefetch(prepared, fetcher)
        finally:
            fetcher.close()
        return attrs.evolve(
            outcome, bytes_fetched=self.ctx.bytes_fetched, bytes_reused=self.ctx.bytes_reused
        )

    def _source_bytes(self, manifest: Manifest) -> int:
        """The bytes of the source files an artifact was built from (its base's, when sharded)."""
        if manifest.lineage is not None:
            base = self.catalog.manifest(manifest.lineage.name, manifest.lineage.version)
            if base is not None:
                return base.total_bytes
        return manifest.total_bytes

    def _prefetch(self, prepared: Prepared, fetcher: Fetcher) -> Outcome:
        request, name, ctx = prepared.request, prepared.name, self.ctx
        ctx.stage(f"resolving {request.repo}@{request.revision or 'main'}")
        try:
            snapshot = fetcher.snapshot(request.repo, request.revision)
        except SourceOffline:
            stored = stored_match(self.catalog, prepared)
            if stored is None:
                raise
            log.info("source offline: reusing stored %s:%s", stored.name, stored.version)
            ctx.count(reused=self._source_bytes(stored))
            return Outcome(stored, True)
        files = select(snapshot.files, request.include, request.exclude)
        if not files:
            raise PreheatError(
                f"no file of {request.repo}@{snapshot.source.commit[:12]} matches the include/exclude patterns"
            )
        log.info(
            "pinned %s to commit %s (%d files selected)",
            request.repo,
            snapshot.source.commit,
            len(files),
        )
        paths = [f.path for f in files]
        base_version = version_of(snapshot, paths, None, request.force)

        shard, shard_dict = request.shard, prepared.shard_dict
        target_version = base_version
        if shard is not None:
            target_version = version_of(snapshot, paths, shard_dict, request.force, shard.engine)
        done = self.catalog.manifest(name, target_version)
        if done is not None:
            log.info("reusing %s:%s", name, done.version)
            self.catalog.set_alias(name, "latest", done.version)
            ctx.count(reused=sum(f.size for f in files))
            return Outcome(done, True)
        if not request.artifact_name:
            check_name_owner(self.catalog, name, request.repo)
        base = self.catalog.manifest(name, base_version) if shard is not None else None
        held: dict = {}
        if base is not None:
            ctx.count(reused=base.total_bytes)
        elif not request.force:  # bumping force redoes the work: everything is fetched again
            # files another version already holds are copied inside the store, not fetched
            held = ReuseIndex(self.catalog).plan(self.store, files)
            if held:
                log.info("%d of %d files are already in the store", len(held), len(files))
        to_fetch = [f for f in files if f.path not in held] if base is None else []
        # what the listing alone says will land: refuse before reading even a header
        check_capacity(self.store, request.resources, to_fetch, None)

        ctx.stage("reading config and safetensors headers")
        if base is not None:
            config, readme, headers = inspect_stored(self.catalog, base)
        else:
            config, readme, headers = inspect_remote(fetcher, snapshot, files, self.store, held)
        metadata = detect_metadata(config, readme, paths, request.metadata)
        serving = serving_facts(config, headers)

        plan: ShardPlan | None = None
        if shard is not None:
            # made only now: a published version needs no sharder (nor its imports)
            sharder = lookup("sharders", shard.engine).value()
            sharder.parts_elsewhere = self.shards is not None
            view = ModelView(
                config=config or {},
                files=tuple(FileEntry(f.path, f.size, f.sha256 or "") for f in files),
                headers=headers,
                serving=serving,
            )
            plan = sharder.plan(view, shard.args, request.resources)

        check_capacity(self.store, request.resources, to_fetch, plan)
        ctx.check()

        if base is None:
            base = fetch_artifact(
                ctx,
                self.catalog,
                fetcher,
                snapshot,
                files,
                name,
                base_version,
                request,
                metadata,
                serving,
                alias=plan is None,
                reuse=held,
                transfers=self.transfers,
            )
            if plan is None:
                return Outcome(base, False)
        manifest, reused = shard_artifact(
            ctx,
            self.catalog,
            sharder,
            plan,
            base,
            name,
            target_version,
            serving,
            shard_dict,
            engine=shard.engine,
            request_resources=request.resources,
            pool=self.shards,
        )
        return Outcome(manifest, reused)
