"""One large file moved by several machines at once: spans fetched apart, verified whole.

A transfer pool that spreads work (see `preheat.transfers`) may split a file
larger than a few spans across its workers where the store takes ranged writes
(`Store.begin_ranges`: a multipart upload, a shared file): the pool begins the
upload, each worker calls `fetch_spans` for its share of `plan_spans`, and once
every span is written the pool calls `finish_spans`, which assembles the object
and checks its sha256 against the source's before the file counts. A span that
fails is fetched again whole; nothing is visible at the key until it is verified.

The whole-file sha256 cannot be combined from spans hashed apart, so
`finish_spans` reads the object once more, where it lies (the store's own
bandwidth, usually far above a CDN's per-connection cap).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from preheat.errors import PreheatError
from preheat.fetch import IntegrityError
from preheat.models import FileEntry
from preheat.resources import parse_quantity
from preheat.store import MIN_SPAN, Span
from preheat.transfers import Transfer, TransferJob, Transferred

SPAN = 128 << 20
READ = 16 << 20


def span_size() -> int:
    """`PREHEAT_SPAN_SIZE` (a quantity like 128Mi; at least `MIN_SPAN`), else `SPAN`."""
    raw = os.environ.get("PREHEAT_SPAN_SIZE", "").strip()
    return max(MIN_SPAN, parse_quantity(raw, "PREHEAT_SPAN_SIZE")) if raw else SPAN


def splittable(t: Transfer, *, span: int | None = None) -> bool:
    """Whether `t` is worth splitting: a published sha256 to verify and more than two spans."""
    return bool(t.file.sha256) and t.file.size > 2 * (span or span_size())


def plan_spans(size: int, *, span: int | None = None) -> list[Span]:
    """`size` bytes as spans of `span` bytes (default `span_size()`; the last one shorter)."""
    span = max(span or span_size(), MIN_SPAN)
    count = max(1, math.ceil(size / span))
    return [Span(i, i * span, min(size, (i + 1) * span)) for i in range(count)]


def fetch_spans(
    job: TransferJob,
    t: Transfer,
    upload: str,
    spans: Sequence[Span],
    *,
    connections: int | None = None,
    on_span: Callable[[Span], None] = lambda span: None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    """Fetch `spans` of `t`'s file from the source into the upload `upload`, in this process.

    Opens the store and the fetcher as `run_transfers` does; `connections` spans
    (default: `PREHEAT_CONNECTIONS`, 8) move at once, each over one connection,
    `READ` bytes per request.

    :param on_span: called once each span is written (from any of the threads).
    :param on_bytes: ``on_bytes(n)`` as `n` more bytes land; raise `Cancelled` to stop.
    :raises PreheatError: a span failed (the spans already written stay written).
    """
    from preheat.config import open_store
    from preheat.plugins import lookup
    from preheat.ranged import connections_from_env

    connections = connections or connections_from_env()
    store = open_store(job.store)
    fetcher = lookup("fetchers", job.source).value(token_key=job.token_key)

    def chunks(span: Span) -> Iterator[bytes]:
        offset = span.start
        while offset < span.end:
            data = fetcher.read_range(
                job.snapshot, t.file.path, offset, min(READ, span.end - offset)
            )
            if not data:
                raise PreheatError(f"{t.file.path}: the source ended at byte {offset}")
            offset += len(data)
            yield data
            on_bytes(len(data))

    def one(span: Span) -> None:
        store.write_range(t.key, upload, span, chunks(span))
        on_span(span)

    try:
        with ThreadPoolExecutor(connections, thread_name_prefix="preheat-span") as pool:
            try:
                for future in [pool.submit(one, s) for s in spans]:
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the spans not started are not fetched
                raise
    finally:
        fetcher.close()
        store.close()


def finish_spans(job: TransferJob, t: Transfer, upload: str, spans: Sequence[Span]) -> Transferred:
    """Assemble the upload at `t.key`, read it back and check its sha256 against the source's.

    Called again after it succeeded (a retried task), it checks the object already there.

    :raises IntegrityError: the bytes do not match (the object is removed).
    :raises PreheatError: the upload could not be assembled (an object of the right size
        already at the key that does not match is removed, and this error raised).
    """
    from preheat.config import open_store

    store = open_store(job.store)
    try:
        unfinished: PreheatError | None = None
        try:
            info = store.finish_ranges(t.key, upload, spans)
        except PreheatError as exc:
            # a retry after this step already assembled the object (the upload is gone)
            info = store.head(t.key)
            if info is None or info.size != t.file.size:
                raise
            unfinished = exc
        digest = hashlib.sha256()
        size = 0
        for chunk in store.open_reader(t.key):
            digest.update(chunk)
            size += len(chunk)
        if size != t.file.size or digest.hexdigest() != t.file.sha256:
            store.delete(t.key)
            if unfinished is not None:  # what was there is not this upload's: the real failure
                raise unfinished
            raise IntegrityError(
                f"{t.file.path}: the {len(spans)} spans fetched apart hash to "
                f"{digest.hexdigest()[:12]}..., not the published {t.file.sha256[:12]}...; "
                "nothing was published, retry the prefetch"
            )
    finally:
        store.close()
    from preheat.pipeline.reuse import source_etag

    entry = FileEntry(
        path=t.file.path, size=t.file.size, sha256=digest.hexdigest(), etag=source_etag(t.file)
    )
    return Transferred(entry, info)
