"""Stage five: a stored, verified artifact pre-sharded by the engine's sharder, then published."""

from __future__ import annotations

import attrs

from preheat.catalog import Catalog, now_iso
from preheat.errors import PreheatError
from preheat.models import FileEntry, Manifest, Resources, ServingFacts
from preheat.pipeline.progress import Context
from preheat.publish import Draft, building
from preheat.shard import Sharder, ShardPlan, SourceArtifact
from preheat.shard_pool import ShardJob, ShardPool

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def shard_artifact(
    ctx: Context,
    catalog: Catalog,
    sharder: Sharder,
    plan: ShardPlan,
    base: Manifest,
    name: str,
    version: str,
    serving: ServingFacts,
    shard_request: dict,
    *,
    engine: str,
    request_resources: Resources,
    pool: ShardPool | None = None,
) -> tuple[Manifest, bool]:
    """Shard `base` into `name:version` and publish it; (manifest, reused).

    With a `pool` and a sharder that splits its output into parts, the pool
    writes the parts (`engine` is the sharder's registered name); otherwise
    the sharder writes everything here.
    """
    with building(
        catalog, name, version, ctx.run, doing="sharding", cancelled=ctx.cancel.is_set
    ) as draft:
        if draft.published is not None:
            return draft.published, True
        source = SourceArtifact(
            catalog.store, catalog.artifact_prefix(base.name, base.version), base
        )
        ctx.stage(
            f"sharding for {plan.spec.engine} at tp={plan.spec.tensor_parallel_size}",
            plan.output_bytes,
        )

        def progress(n: int) -> None:
            ctx.check()
            ctx.progress.advance(n)

        parts = sharder.parts(plan) if pool is not None else []
        if pool is not None and parts:
            entries = _shard_parts(
                ctx, catalog, draft, pool, plan, base, engine, request_resources, parts, progress
            )
        else:
            entries = sharder.shard(plan, source, draft.write_stream, progress)
        manifest = Manifest(
            name=name,
            version=version,
            created=now_iso(),
            source=base.source,
            files=tuple(sorted(entries, key=lambda e: e.path)),
            include=base.include,
            exclude=base.exclude,
            force=base.force,
            metadata=base.metadata,
            serving=sharded_serving(serving, plan),
            shard=plan.spec,
            shard_request=shard_request,
            lineage=base.ref,
        )
        ctx.stage(f"publishing {name}:{version}")
        return draft.publish(manifest, alias="latest"), False


def _shard_parts(
    ctx: Context,
    catalog: Catalog,
    draft: Draft,
    pool: ShardPool,
    plan: ShardPlan,
    base: Manifest,
    engine: str,
    resources: Resources,
    parts: list[str],
    progress,
) -> list[FileEntry]:
    """The parts of the shard written by `pool`; their entries, each file journaled."""
    job = ShardJob(
        run=ctx.run,
        store=catalog.store.url,
        sharder=engine,
        plan=plan,
        source=base,
        source_prefix=catalog.artifact_prefix(base.name, base.version),
        files_prefix=draft.files_prefix,
        resources=resources,
    )
    written: dict[str, list[FileEntry]] = {}

    def done(part: str, entries: list[FileEntry]) -> None:
        for entry in entries:
            info = catalog.store.head(draft.file_key(entry.path))
            if info is None or info.size != entry.size:
                raise PreheatError(f"part {part} of the shard reported {entry.path}, not stored")
            draft.record(entry, info)
        written[part] = entries

    pool.shard(job, parts, done=done, progress=progress, cancelled=ctx.cancel.is_set)
    missing = [p for p in parts if p not in written]
    if missing:
        raise PreheatError(f"the shard pool did not write part(s) {', '.join(missing)}")
    return [e for p in parts for e in written[p]]


def sharded_serving(serving: ServingFacts, plan: ShardPlan) -> ServingFacts:
    """Serving facts of a sharded artifact: per-rank bytes, and the new dtype when it was converted."""
    facts = attrs.evolve(serving, weight_bytes_per_rank=plan.weight_bytes_per_rank)
    dtype = plan.spec.dtype
    if dtype in _ITEMSIZE and dtype != serving.dtype and serving.parameters:
        size = serving.parameters * _ITEMSIZE[dtype]
        facts = attrs.evolve(facts, dtype=dtype, bytes_by_dtype={dtype: size}, weight_bytes=size)
    return facts
