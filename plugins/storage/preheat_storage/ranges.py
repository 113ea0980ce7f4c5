"""Ranged writes on S3: one object's spans uploaded by several processes as multipart parts.

obstore keeps a multipart upload's id and parts inside one process, so these use
the signed stdlib client (`s3api`): the UploadId is the handle handed to the
writers, span `i` is part `i + 1`, and `finish_ranges` completes the upload from
ListParts. An upload that is never finished is aborted by `gc()` once stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from obstore import exceptions as oe

from preheat.api import ObjectInfo, PreheatError, Span, check_spans, span_chunks
from preheat_storage.errors import StoreError
from preheat_storage.s3api import Part, S3Api, S3Error

if TYPE_CHECKING:
    from preheat_storage.store import ObstoreStore

_MAX_PARTS = 10_000
_MAX_PART = 5 << 30
_MIN_PART = 5 << 20  # S3's smallest part but for the last
_PART_TIMEOUT = 120.0  # seconds one socket operation of a part upload may stall
_COMPLETE_TIMEOUT = 300.0  # completing many large parts can take the server minutes


class S3Ranges:
    """`Store.begin_ranges` and friends for `ObstoreStore`, on S3 with static credentials."""

    def begin_ranges(self: ObstoreStore, key: str, size: int) -> str | None:
        """CreateMultipartUpload; None on Azure, GCS and memory stores or without static S3 keys."""
        if self._u.kind != "s3":
            return None
        api = self._s3api()
        if api is None:
            return None
        try:
            return api.create_upload(self._path(key))
        except S3Error as exc:
            raise _failure(self, exc, "start the ranged upload of", key) from None

    def write_range(
        self: ObstoreStore, key: str, upload: str, span: Span, chunks: Iterable[bytes | memoryview]
    ) -> None:
        """UploadPart `span.index + 1`, streamed from `chunks`; a span written again is replaced."""
        if not 0 <= span.index < _MAX_PARTS:
            raise PreheatError(
                f"{self.uri(key)}: span {span.index} is past S3's {_MAX_PARTS} parts"
            )
        if not 0 <= span.size <= _MAX_PART:
            raise PreheatError(f"{self.uri(key)}: span {span.index} is over S3's 5 GiB part limit")
        api = _api(self, key, _PART_TIMEOUT)
        body = span_chunks(span, chunks, self.uri(key))
        try:
            api.upload_part(self._path(key), upload, span.index + 1, span.size, body)
        except S3Error as exc:
            raise _failure(self, exc, f"write span {span.index} of", key) from None

    def finish_ranges(
        self: ObstoreStore, key: str, upload: str, spans: Sequence[Span]
    ) -> ObjectInfo:
        """ListParts, check that every span is there at its size, then CompleteMultipartUpload."""
        uri = self.uri(key)
        _check_layout(spans, uri)
        api = _api(self, key, _COMPLETE_TIMEOUT)
        path = self._path(key)
        try:
            parts = _latest(api.list_parts(path, upload))
        except S3Error as exc:
            raise _failure(self, exc, "finish the ranged upload of", key) from None
        chosen: list[tuple[int, str]] = []
        for span in spans:
            found = parts.get(span.index + 1, [])
            where = f"span {span.index} (bytes {span.start}-{span.end})"
            if not found:
                raise PreheatError(f"{uri}: {where} was never written; the upload is kept")
            for part in found:
                if part.size != span.size:
                    raise PreheatError(
                        f"{uri}: {where} holds {part.size} bytes, not {span.size}; the upload is kept"
                    )
                chosen.append((part.number, part.etag))
        try:
            api.complete_upload(path, upload, chosen)
        except S3Error as exc:
            raise _failure(self, exc, "finish the ranged upload of", key) from None
        info = self.head(key)
        if info is None:
            raise StoreError(
                self._scrub(f"{uri} is missing right after its ranged upload finished")
            )
        return info

    def abort_ranges(self: ObstoreStore, key: str, upload: str) -> None:
        """AbortMultipartUpload, dropping every part; errors are ignored (`gc()` catches leftovers)."""
        with contextlib.suppress(Exception):
            api = self._s3api() if self._u.kind == "s3" else None
            if api is not None:
                api.abort(self._path(key), upload)


def _latest(parts: Iterable[Part]) -> dict[int, list[Part]]:
    """The last upload of each part number: one on S3; on servers that list every upload
    of a part (SeaweedFS), those of the latest second, of which the server takes the newest."""
    by_number: dict[int, list[Part]] = {}
    for part in parts:
        by_number.setdefault(part.number, []).append(part)
    for number, found in by_number.items():
        newest = max(p.modified for p in found)
        by_number[number] = [p for p in found if p.modified == newest]
    return by_number


def _api(store: ObstoreStore, key: str, timeout: float) -> S3Api:
    api = store._s3api(timeout) if store._u.kind == "s3" else None
    if api is None:
        raise StoreError(
            store._scrub(
                f"cannot write {store.uri(key)} in ranges: that needs an S3 store with static credentials"
            )
        )
    return api


def _check_layout(spans: Sequence[Span], uri: str) -> None:
    """The spans must cover the object from 0 in order; S3 needs 5 MiB parts but for the last."""
    check_spans(spans, uri)
    for span in spans[:-1]:
        if span.size < _MIN_PART:
            raise PreheatError(
                f"{uri}: span {span.index} has {span.size} bytes; S3 needs 5 MiB but for the last span"
            )


def _failure(store: ObstoreStore, exc: S3Error, doing: str, key: str) -> PreheatError:
    """One clear error for a failed S3 call on `key`, without secrets."""
    uri, bucket = store.uri(key), store._u.bucket
    if exc.code == "NoSuchBucket":
        return store._errors.bucket_missing(bucket)
    if exc.code == "NoSuchUpload":
        return PreheatError(
            store._scrub(f"the ranged upload of {uri} is gone (aborted or finished)")
        )
    if exc.status in (401, 403):
        return store._errors.translate(
            oe.PermissionDeniedError(f"<Code>{exc.code}</Code>"), doing, uri, bucket
        )
    if exc.status is None:
        translated = store._errors.translate(RuntimeError(str(exc)), doing, uri, bucket)
        if type(translated) is not StoreError:
            return translated
    message = " ".join(str(exc).split())
    return StoreError(store._scrub(f"cannot {doing} {uri}: {message}"))
