"""Stage five: a stored, verified artifact pre-sharded by the engine's sharder, then published."""

from __future__ import annotations

import attrs

from preheat.catalog import Catalog, now_iso
from preheat.models import Manifest, ServingFacts
from preheat.pipeline.progress import Context
from preheat.publish import building
from preheat.shard import Sharder, ShardPlan, SourceArtifact

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
) -> tuple[Manifest, bool]:
    """Shard `base` into `name:version` and publish it; (manifest, reused)."""
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


def sharded_serving(serving: ServingFacts, plan: ShardPlan) -> ServingFacts:
    """Serving facts of a sharded artifact: per-rank bytes, and the new dtype when it was converted."""
    facts = attrs.evolve(serving, weight_bytes_per_rank=plan.weight_bytes_per_rank)
    dtype = plan.spec.dtype
    if dtype in _ITEMSIZE and dtype != serving.dtype and serving.parameters:
        size = serving.parameters * _ITEMSIZE[dtype]
        facts = attrs.evolve(facts, dtype=dtype, bytes_by_dtype={dtype: size}, weight_bytes=size)
    return facts
