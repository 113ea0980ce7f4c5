"""Checks an engine resolver makes before launching on a pre-sharded artifact."""

from __future__ import annotations

from preheat.api import Manifest, PreheatError, ShardSpec


def checked_shard(
    manifest: Manifest, engine: str, requested_tp: int | None, tp_flag: str, tp_arg: str
) -> ShardSpec:
    """The artifact's shard spec, refusing another engine's files or a different tensor-parallel size.

    `tp_flag` is the engine's server flag (e.g. `-tp`) and `tp_arg` the shard-args field
    (e.g. `tp`), both named in the message so the user knows what to change.
    """
    shard = manifest.shard
    assert shard is not None
    if shard.engine != engine:
        raise PreheatError(
            f"{manifest.ref} is pre-sharded for {shard.engine}, not {engine}: prefetch it with `engine: {engine}`"
        )
    tp = shard.tensor_parallel_size
    if requested_tp is not None and requested_tp != tp:
        raise PreheatError(
            f"{manifest.ref} is sharded for tensor-parallel size {tp}, not {requested_tp}: "
            f"serve it with {tp_flag} {tp} or prefetch it again with {tp_arg}: {requested_tp}"
        )
    return shard
