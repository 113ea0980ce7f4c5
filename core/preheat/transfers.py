"""Transfer pools: where the download stage streams an artifact's files from the source.

The download stage of a run first keeps what needs no transfer (files an earlier
attempt verified, files the store already holds), then hands every remaining file
to a `TransferPool` and journals each result it reports. The default pool runs the
transfers on threads of the run's process; an executor plugin passes its own (to
`preheat.api.execute_run(..., transfers=POOL)`) to spread them over other processes
or machines, each of which calls `run_transfers`.

Everything a transfer needs travels as plain records (`TransferJob`, `Transfer`):
the store URL, the fetcher's name and the *name* of the secret holding its
credentials, never a credential; the process that runs it opens the store and
builds its own fetcher.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import attrs

from preheat.errors import Cancelled
from preheat.fetch import IntegrityError, RemoteFile, Snapshot
from preheat.models import FileEntry, Resources
from preheat.store import ObjectInfo

log = logging.getLogger("preheat")

WORKERS = 8


@attrs.frozen
class TransferJob:
    """What every transfer of one artifact shares; plain data, safe to send anywhere.

    :ivar run: the run's name (for messages).
    :ivar store: the store URL (`RunRecord.store`).
    :ivar source: the registered name of the fetcher (`PrefetchRequest.source`).
    :ivar token_key: the name of the environment variable holding the fetcher's
        credentials, read where the transfer runs (never the value).
    :ivar snapshot: the pinned repository listing the files come from.
    :ivar resources: the run's requests (`cpu`, `mem`, ...), for pools that place work.
    """

    run: str
    store: str
    source: str
    token_key: str
    snapshot: Snapshot
    resources: Resources = Resources()


@attrs.frozen
class Transfer:
    """One file to stream from the source into the store key `key` (the draft's key for it)."""

    file: RemoteFile
    key: str


@attrs.frozen
class Transferred:
    """A transfer done: the verified file's entry and the stored object as written."""

    entry: FileEntry
    info: ObjectInfo


class TransferPool(abc.ABC):
    """Runs the transfers of one artifact and reports each verified file as it lands.

    Made by whoever runs the pipeline (an executor's worker); the download stage calls
    `transfer` once per artifact, on the pipeline's thread, after it has set aside what
    needs no transfer.
    """

    @abc.abstractmethod
    def transfer(
        self,
        job: TransferJob,
        transfers: Sequence[Transfer],
        *,
        fetch: Callable[[Transfer], Transferred],
        done: Callable[[Transferred], None],
        progress: Callable[[str, int], None] = lambda path, n: None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Move every transfer, largest first; return once all are done.

        :param fetch: runs one transfer in this process with the run's own fetcher and
            progress (what the default pool calls on its threads); a pool that runs
            transfers elsewhere calls `run_transfers` there instead.
        :param done: call it with each result, once per file, from any thread of this
            process, as soon as the file is verified: it journals the file (a rerun
            after a crash keeps it) and counts its bytes.
        :param progress: optionally call `progress(path, n)` as `n` more bytes of the
            file `path` land, from any thread of this process (`fetch` does); `done`
            counts whatever was not reported.
        :param cancelled: true once the run is cancelled or a transfer failed; stop
            what is still running and raise `Cancelled`.
        :raises PreheatError: a transfer failed (the first failure; stop the others).
        """


class ThreadTransfers(TransferPool):
    """The default pool: `fetch` on `workers` threads of the run's process."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers

    def transfer(self, job, transfers, *, fetch, done, progress=None, cancelled=None):
        """Run `fetch` for every transfer on the threads, largest first; the first failure stops the rest."""

        def one(t: Transfer) -> None:
            done(fetch(t))

        ordered = sorted(transfers, key=lambda t: -t.file.size)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="preheat-fetch") as pool:
            futures = [pool.submit(one, t) for t in ordered]
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in finished if f.exception() is not None]
            if errors:
                for f in pending:
                    f.cancel()
                wait(pending)
                raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])


def run_transfers(
    job: TransferJob,
    transfers: Iterable[Transfer],
    *,
    on_bytes: Callable[[str, int], None] = lambda path, n: None,
) -> Iterator[Transferred]:
    """Run transfers one after the other in this process, yielding each verified file.

    Opens the store `job.store` and builds the fetcher `job.source` with the secret
    named `job.token_key` from this process's environment. Each file is streamed into
    its key, resuming the bytes an interrupted attempt left, verified by the fetcher
    and committed; its `Transferred` is yielded once committed.

    :param on_bytes: `on_bytes(path, n)` after each chunk of `n` bytes of the file `path`;
        raise `Cancelled` from it to stop.
    :raises IntegrityError: bytes that do not match the source (the partial is discarded).
    :raises PreheatError: the transfer failed (the partial is kept for a resume).
    """
    from preheat.config import open_store
    from preheat.plugins import lookup

    store = open_store(job.store)
    fetcher = lookup("fetchers", job.source).value(token_key=job.token_key)
    try:
        for t in transfers:
            path = t.file.path
            yield transfer_one(
                job.snapshot, t, fetcher, store, on_bytes=lambda n, path=path: on_bytes(path, n)
            )
    finally:
        fetcher.close()


def transfer_one(snapshot, t: Transfer, fetcher, store, *, on_bytes) -> Transferred:
    """Stream one file into `store` at `t.key` with `fetcher`, verified and committed."""
    from preheat.pipeline.reuse import source_etag

    f = t.file
    writer = store.open_writer(t.key, resume=True)
    try:
        digest = fetcher.download(snapshot, f, writer, on_bytes=on_bytes)
        info = writer.commit()
    except IntegrityError:
        writer.discard()
        raise
    except BaseException:
        writer.abort()
        raise
    entry = FileEntry(path=f.path, size=f.size, sha256=digest, etag=source_etag(f))
    found = store.head(t.key) or info
    if found.size != f.size:
        raise IntegrityError(f"{f.path}: the store holds {found.size} bytes, not {f.size}")
    return Transferred(entry, found)
