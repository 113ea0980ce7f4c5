"""Stage three: room in the store and within `ephemeral_storage` for what the run will write."""

from __future__ import annotations

from preheat.errors import PreheatError
from preheat.fetch import RemoteFile
from preheat.models import Resources
from preheat.resources import human_bytes, parse_quantity
from preheat.shard import ShardPlan
from preheat.store import Store

MiB = 1 << 20


def check_capacity(
    store: Store, resources: Resources, to_fetch: list[RemoteFile], plan: ShardPlan | None
) -> None:
    """Refuse a run whose files (and shard output) cannot fit where they will land."""
    need = sum(f.size for f in to_fetch) + (plan.output_bytes if plan else 0)
    if store.local_path("artifacts") is None:
        return
    free = store.free_bytes()
    margin = 128 * MiB + need // 100
    if free is not None and need + margin > free:
        raise PreheatError(
            f"the store at {store.url} has {human_bytes(free)} free but this run writes {human_bytes(need)} "
            f"(plus a {human_bytes(margin)} margin): free space or use another --store"
        )
    if resources.ephemeral_storage is not None:
        limit = parse_quantity(resources.ephemeral_storage, "ephemeral_storage")
        if need > limit:
            raise PreheatError(
                f"ephemeral_storage {resources.ephemeral_storage} is smaller than the {human_bytes(need)} "
                "this run writes to local disk: raise --ephemeral-storage"
            )
