"""Streaming writes: one object uploaded in parts, visible only once committed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import obstore

from preheat.api import ObjectInfo, ObjectWriter, PreheatError
from preheat_storage.backend import NOT_FOUND
from preheat_storage.errors import StoreError

if TYPE_CHECKING:
    from preheat_storage.store import ObstoreStore

log = logging.getLogger(__name__)


class MultipartWriter(ObjectWriter):
    """A multipart upload (S3, GCS) or staged blocks (Azure), visible only after `commit`.

    The upload starts once a whole part is buffered (a smaller object is one PUT on
    commit). `max_concurrency` bounds the parts in flight of the whole store: each
    upload gets its share among the writers open when it starts, so eight files
    streamed at once hold about 2 x 8 parts in memory, not 8 x 9.
    """

    def __init__(self, store: ObstoreStore, key: str) -> None:
        self._store = store
        self._key = key
        self._size = 0
        self._closed = False
        self._file: Any = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        with store._lock:
            store._writers += 1

    def _start(self) -> None:
        store = self._store
        with store._lock:
            share = -(-store.settings.max_concurrency // max(1, store._writers))
        self._file = obstore.open_writer(
            store._store,
            store._path(self._key),
            buffer_size=store.settings.part_size,
            max_concurrency=share,
        )
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data in pending:
            self._file.write(data)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending, self._pending_size = [], 0
            with self._store._lock:
                self._store._writers -= 1

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise PreheatError(f"write to {self._store.uri(self._key)} after commit or abort")
        part = self._store.settings.part_size
        view = memoryview(data)
        try:
            # slices of at most one part, so a large write never makes a larger part in flight
            for start in range(0, len(view), part):
                # obstore keeps a zero-copy view until the part is uploaded; callers reuse buffers
                piece = bytes(view[start : start + part])
                if self._file is not None:
                    self._file.write(piece)
                else:
                    self._pending.append(piece)
                    self._pending_size += len(piece)
                    if self._pending_size >= part:
                        self._start()
        except Exception as exc:  # noqa: BLE001
            self.abort()
            raise self._error(exc) from None
        self._size += len(view)

    def commit(self) -> ObjectInfo:
        if self._closed:
            raise PreheatError(f"commit of {self._store.uri(self._key)} after commit or abort")
        try:
            if self._file is None:
                self._start()
            self._file.close()
        except Exception as exc:  # noqa: BLE001
            self._close()
            raise self._error(exc) from None
        self._close()
        info = self._store.head(self._key)
        if info is None:
            raise StoreError(f"{self._store.uri(self._key)} is missing right after its upload")
        return info

    def abort(self) -> None:
        if self._closed:
            return
        file = self._file
        self._close()
        if file is None:  # nothing was sent yet
            return
        try:
            # obstore aborts the multipart upload when its writer exits with an exception.
            file.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "aborting the upload of %s failed: %s", self._store.uri(self._key), self._error(exc)
            )

    def _error(self, exc: BaseException) -> PreheatError:
        store = self._store
        if isinstance(exc, NOT_FOUND):
            store._bucket_ok = False
            return store._errors.bucket_missing(store._u.bucket)
        return store._translate(exc, "write", store.uri(self._key))
