"""Streaming reads: ranged GETs, a few in flight, all pinned to the version that HEAD saw."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import obstore
from obstore import exceptions as oe

from preheat.api import PreconditionFailed

if TYPE_CHECKING:
    from preheat_storage.store import ObstoreStore


def read_chunks(
    store: ObstoreStore, key: str, meta: Mapping[str, Any], chunk: int
) -> Iterator[memoryview]:
    """The object `key` (whose HEAD gave `meta`) in chunks of `chunk` bytes, in order.

    Chunks are zero-copy read-only views. Every GET is conditional on the
    version HEAD saw, so an object replaced mid-read raises PreconditionFailed
    instead of yielding a mix of two versions.
    """
    size = int(meta["size"])
    path = store._path(key)
    options: dict[str, Any] = {}
    if store._u.kind == "gcs" and meta.get("version"):
        options["version"] = meta["version"]
    elif meta.get("e_tag"):
        options["if_match"] = meta["e_tag"]

    def fetch(start: int) -> memoryview:
        try:
            got = obstore.get(
                store._store,
                path,
                options={**options, "range": (start, min(start + chunk, size))},
            )
            # a zero-copy view: copying into `bytes` costs about a second of CPU per GiB
            return memoryview(got.bytes())
        except oe.PreconditionError:
            raise PreconditionFailed(
                store._scrub(f"{store.uri(key)} changed while it was being read")
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise store._translate(exc, "read", store.uri(key)) from None

    starts = iter(range(0, size, chunk))
    if size <= chunk:
        for start in starts:
            yield fetch(start)
        return
    pool = store._executor()
    depth = min(4, store.settings.max_concurrency)
    pending: collections.deque = collections.deque()
    try:
        for start in starts:
            pending.append(pool.submit(fetch, start))
            if len(pending) >= depth:
                break
        while pending:
            data = pending.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(fetch, nxt))
            yield data
    finally:
        for future in pending:
            future.cancel()
