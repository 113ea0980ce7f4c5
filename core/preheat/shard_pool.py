"""Shard pools: where the parts of a shard job are written.

A sharder that can split its output into independent parts (`Sharder.parts`,
e.g. one per tensor-parallel rank) lets an executor plugin write them in other
processes or machines: the plugin passes a `ShardPool` to
`preheat.api.execute_run(..., shards=POOL)`, and wherever a part runs it calls
`run_shard_part`, which opens the store, builds the sharder from the registry
and writes that part's files into the draft. The run's own process keeps the
lease, the manifest and the publish. Without a pool (or for a sharder with no
parts) the whole job runs in the run's process with `Sharder.shard`.

Everything a part needs travels as plain data (`ShardJob`): the store URL, the
sharder's registered name, the plan, the source manifest and the draft's
folder; never a credential.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Iterable, Sequence

import attrs

from preheat.models import FileEntry, Manifest, Resources
from preheat.shard import ShardPlan, SourceArtifact
from preheat.store import ObjectInfo, Store


@attrs.frozen
class ShardJob:
    """What every part of one shard job shares; plain data, safe to send anywhere.

    :ivar run: the run's name (for messages).
    :ivar store: the store URL.
    :ivar sharder: the sharder's registered name (the engine).
    :ivar plan: what `Sharder.plan` returned (its `data` must pickle).
    :ivar source: the manifest of the stored unsharded artifact.
    :ivar source_prefix: the store folder holding `source`'s files.
    :ivar files_prefix: the store folder the draft's files are written to.
    :ivar resources: the run's requests, for pools that place work.
    """

    run: str
    store: str
    sharder: str
    plan: ShardPlan
    source: Manifest
    source_prefix: str
    files_prefix: str
    resources: Resources = Resources()


class ShardPool(abc.ABC):
    """Writes the parts of one shard job, each where the pool chooses, and reports their files."""

    @abc.abstractmethod
    def shard(
        self,
        job: ShardJob,
        parts: Sequence[str],
        *,
        done: Callable[[str, list[FileEntry]], None],
        progress: Callable[[int], None] = lambda n: None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Write every part (with `run_shard_part` where it runs); return once all are done.

        :param parts: what `Sharder.parts` returned; each is written exactly once
            by a successful `run_shard_part` (a retried part writes its files again).
        :param done: call ``done(part, entries)`` once per part with what
            `run_shard_part` returned, from any thread of this process.
        :param progress: optionally ``progress(n)`` as `n` more output bytes land.
        :param cancelled: true once the run is cancelled: stop and raise `Cancelled`.
        :raises PreheatError: a part failed (the first failure; stop the others).
        """


def write_stream(
    store: Store, key: str, path: str, chunks: Iterable[bytes | memoryview]
) -> tuple[FileEntry, ObjectInfo]:
    """Write `chunks` to `key` hashing as they go; the file's entry (as `path`) and stored info."""
    digest = hashlib.sha256()
    size = 0
    writer = store.open_writer(key)
    try:
        for chunk in chunks:
            writer.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        info = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return FileEntry(path=path, size=size, sha256=digest.hexdigest()), store.head(key) or info


def run_shard_part(
    job: ShardJob, part: str, *, on_bytes: Callable[[int], None] = lambda n: None
) -> list[FileEntry]:
    """Write the files of one part of `job` into its draft, in this process.

    Opens the store `job.store`, builds the sharder `job.sharder` from this
    process's registry and calls its `shard_part`.

    :param on_bytes: ``on_bytes(n)`` after `n` more output bytes; raise
        `Cancelled` from it to stop.
    :returns: the part's file entries.
    :raises PreheatError: the part failed (nothing of it counts; a retry rewrites it).
    """
    from preheat.config import open_store
    from preheat.plugins import lookup

    store = open_store(job.store)
    try:
        sharder = lookup("sharders", job.sharder).value()
        source = SourceArtifact(store, job.source_prefix, job.source)

        def write(path: str, chunks: Iterable[bytes | memoryview]) -> FileEntry:
            return write_stream(store, job.files_prefix + path, path, chunks)[0]

        return sharder.shard_part(job.plan, source, part, write, on_bytes)
    finally:
        store.close()
