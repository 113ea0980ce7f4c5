"""`ObstoreStore`: preheat's Store interface over obstore (S3, GCS, Azure Blob, in-memory)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import obstore

from preheat.api import (
    NotFound,
    ObjectInfo,
    ObjectWriter,
    PreconditionFailed,
    PreheatError,
    Store,
    register_secret,
)
from preheat_storage.backend import NOT_FOUND, build_backend, object_etag
from preheat_storage.conditional import put_mode
from preheat_storage.errors import (
    ErrorContext,
    Scrubber,
    StoreError,
    is_bucket_missing,
    is_range_error,
)
from preheat_storage.loader_env import streaming_env
from preheat_storage.ranges import S3Ranges
from preheat_storage.reader import read_chunks
from preheat_storage.s3_extras import abort_stale_uploads, s3_client
from preheat_storage.settings import resolve
from preheat_storage.urls import StoreURL, parse_url
from preheat_storage.writer import MultipartWriter, PartBuffers

log = logging.getLogger(__name__)

_DELETE_BATCH = 1000
_S3_COPY_MAX = 5 << 30  # the largest object one S3 CopyObject may copy


class ObstoreStore(S3Ranges, Store):
    """A preheat store at `s3://`, `gs://`, `az://` (`azure://`, `abfs[s]://`) or `memory://` URL.

    Keys are relative to the URL's path. Settings come from `options`, then the
    preheat config file, then the cloud's usual environment variables (see
    `preheat_storage.settings.resolve`). Ranged writes (`begin_ranges`) come from `S3Ranges`.
    """

    def __init__(self, url: str | StoreURL, *, options: Mapping[str, Any] | None = None) -> None:
        parsed = url if isinstance(url, StoreURL) else parse_url(url)
        self.settings = resolve(parsed, options)
        self._u = parsed
        self.url = parsed.url
        self._scrub = Scrubber(self.settings.secrets)
        for secret in self.settings.secrets:  # keep them out of core's logs and run records too
            register_secret(secret)
        self._errors = ErrorContext(
            parsed.url,
            parsed.kind,
            self.settings.endpoint,
            self.settings.credential_hint,
            self.settings.endpoint_hint,
            self._scrub,
        )
        self._bucket_ok = parsed.kind == "memory"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._writers = 0  # open writers, which share `max_concurrency` parts in flight
        self._parts = PartBuffers(self.settings.part_size, 2 * self.settings.max_concurrency)
        try:
            self._store = build_backend(self.settings)
        except Exception as exc:  # noqa: BLE001 - obstore raises several types here
            raise self._translate(exc, "configure", self.url) from None

    @classmethod
    def from_url(cls, url: str) -> ObstoreStore:
        """The store at `url`, with settings from the config file and the environment."""
        return cls(url)

    def __repr__(self) -> str:
        return f"ObstoreStore({self.url!r}, endpoint={self._scrub(self.settings.endpoint)!r})"

    __str__ = __repr__

    # -- helpers (also used by `reader` and `writer`) -------------------------------------------

    def uri(self, key: str) -> str:
        """The full URL of a store-relative key."""
        return self._u.uri(key)

    def _path(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise PreheatError(f"invalid object key {key!r}: keys are non-empty relative paths")
        return self._u.path(key)

    def _key(self, path: str) -> str:
        prefix = self._u.prefix
        return path[len(prefix) + 1 :] if prefix else path

    def _translate(self, exc: BaseException, op: str, where: str) -> PreheatError:
        if isinstance(exc, NOT_FOUND) and is_bucket_missing(exc):
            self._bucket_ok = False
        return self._errors.translate(exc, op, where, self._u.bucket)

    def _missing(self, exc: BaseException) -> None:
        """Called on NotFoundError: raise unless it is the object (not the bucket) that is missing."""
        if is_bucket_missing(exc) or not self._check_bucket():
            raise self._errors.bucket_missing(self._u.bucket) from None

    def _check_bucket(self) -> bool:
        """Whether the bucket exists; a HEAD of a missing key cannot tell (404 either way)."""
        if self._bucket_ok:
            return True
        try:
            stream = obstore.list(self._store, self._u.prefix or None, chunk_size=1)
            next(iter(stream), None)
        except Exception as exc:  # noqa: BLE001
            if is_bucket_missing(exc, listing=True):
                return False
            raise self._translate(exc, "list", self.url) from None
        self._bucket_ok = True
        return True

    def _info(self, key: str, meta: Mapping[str, Any]) -> ObjectInfo:
        modified = meta.get("last_modified")
        return ObjectInfo(
            key=key,
            size=int(meta["size"]),
            etag=object_etag(meta, self._u.kind),
            modified=modified.timestamp() if isinstance(modified, dt.datetime) else None,
        )

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.settings.max_concurrency, thread_name_prefix="preheat-store"
                )
            return self._pool

    # -- reads ----------------------------------------------------------------------------------

    def _head_meta(self, key: str) -> Mapping[str, Any] | None:
        try:
            return obstore.head(self._store, self._path(key))
        except NOT_FOUND as exc:
            self._missing(exc)
            return None
        except PreheatError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "head", self.uri(key)) from None

    def head(self, key: str) -> ObjectInfo | None:
        meta = self._head_meta(key)
        return None if meta is None else self._info(key, meta)

    def read(self, key: str) -> tuple[bytes, str | None] | None:
        try:
            result = obstore.get(self._store, self._path(key))
            data = bytes(result.bytes())
        except NOT_FOUND as exc:
            self._missing(exc)
            return None
        except PreheatError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "read", self.uri(key)) from None
        return data, object_etag(result.meta, self._u.kind)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return bytes(
                obstore.get_range(self._store, self._path(key), start=start, length=length)
            )
        except NOT_FOUND as exc:
            self._missing(exc)
            raise NotFound(self._scrub(f"{self.uri(key)} does not exist")) from None
        except PreheatError:
            raise
        except Exception as exc:  # noqa: BLE001
            if is_range_error(exc):  # `start` at or past the end
                return b""
            raise self._translate(exc, "read", self.uri(key)) from None

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        meta = self._head_meta(key)
        if meta is None:
            raise NotFound(self._scrub(f"{self.uri(key)} does not exist"))
        size = int(meta["size"])
        # obstore must never see a range past the end (it can panic), so clamp first.
        spans = [(min(s, size), min(s + max(n, 0), size)) for s, n in ranges]
        wanted = [i for i, (s, e) in enumerate(spans) if e > s]
        out = [b""] * len(ranges)
        if not wanted:
            return out
        try:
            parts = obstore.get_ranges(
                self._store,
                self._path(key),
                starts=[spans[i][0] for i in wanted],
                ends=[spans[i][1] for i in wanted],
            )
        except NOT_FOUND as exc:
            self._missing(exc)
            raise NotFound(self._scrub(f"{self.uri(key)} does not exist")) from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "read", self.uri(key)) from None
        for i, part in zip(wanted, parts, strict=True):
            out[i] = bytes(part)
        return out

    def open_reader(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """One GET (ranged GETs for large objects) pinned to one version; chunks are read-only
        memoryviews of about `chunk_size` bytes."""
        meta = self._head_meta(key)
        if meta is None:
            raise NotFound(self._scrub(f"{self.uri(key)} does not exist"))
        return read_chunks(self, key, meta, max(1, chunk_size))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # obstore lists whole path segments ("a/b" matches a/b/x, not a/bc), so list the
        # parent directory from just before `prefix` and filter by string prefix.
        full = self._u.path(prefix) if prefix else self._u.prefix
        if not prefix or prefix.endswith("/"):
            parent, offset = full.rstrip("/"), None
        else:
            parent = full.rsplit("/", 1)[0] if "/" in full else ""
            before = full[:-1]
            offset = before if before and not before.endswith("/") else None
        try:
            stream = obstore.list(self._store, parent or None, offset=offset, chunk_size=1000)
            for batch in stream:
                for meta in batch:
                    path = meta["path"]
                    if path.startswith(full) and (
                        not self._u.prefix or path.startswith(self._u.prefix + "/")
                    ):
                        yield self._info(self._key(path), meta)
        except PreheatError:
            raise
        except Exception as exc:  # noqa: BLE001
            if is_bucket_missing(exc, listing=True):
                raise self._errors.bucket_missing(self._u.bucket) from None
            raise self._translate(exc, "list", self.uri(prefix)) from None

    # -- writes ---------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        if if_absent and if_match is not None:
            raise ValueError("put() takes if_absent or if_match, not both")
        path = self._path(key)
        mode: Any = "overwrite"
        if if_absent or if_match is not None:
            mode = self._conditional_mode(key, if_absent, if_match)
        try:
            result = obstore.put(self._store, path, data, mode=mode, use_multipart=False)
        except NOT_FOUND as exc:
            if isinstance(mode, dict) and not is_bucket_missing(exc):
                raise PreconditionFailed(self._scrub(f"{self.uri(key)} does not exist")) from None
            self._bucket_ok = False
            raise self._errors.bucket_missing(self._u.bucket) from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "write", self.uri(key)) from None
        self._bucket_ok = True
        return ObjectInfo(key=key, size=len(data), etag=object_etag(result, self._u.kind))

    def _conditional_mode(self, key: str, if_absent: bool, if_match: str | None) -> Any:
        """The obstore put mode; with `conditional_writes = false`, a best-effort check first."""
        return put_mode(self, key, if_absent, if_match)

    def open_writer(self, key: str, *, resume: bool = False) -> ObjectWriter:
        # Remote stores keep no partial bytes between processes: a resumed write starts over.
        return MultipartWriter(self, key)

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """A server-side copy (S3 CopyObject, GCS rewrite, Azure Copy Blob): no byte passes here.

        S3 copies an object of up to 5 GiB in one call; a larger one is copied part by part
        on the server (UploadPartCopy) where the store has static credentials.
        """
        src, dst = self._path(src_key), self._path(dst_key)
        meta = self._head_meta(src_key)
        if meta is None:
            raise NotFound(self._scrub(f"{self.uri(src_key)} does not exist"))
        size = int(meta["size"])
        if self._u.kind == "s3" and size > _S3_COPY_MAX:
            self._multipart_copy(src, dst, size)
        else:
            try:
                obstore.copy(self._store, src, dst, overwrite=True)
            except NOT_FOUND as exc:
                self._missing(exc)
                raise NotFound(self._scrub(f"{self.uri(src_key)} does not exist")) from None
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, "copy", self.uri(dst_key)) from None
        info = self.head(dst_key)
        if info is None:
            raise StoreError(self._scrub(f"{self.uri(dst_key)} is missing right after its copy"))
        return info

    def _multipart_copy(self, src: str, dst: str, size: int) -> None:
        api = self._s3api(timeout=300.0)  # one part copy moves up to 5 GiB on the server
        if api is None:
            raise StoreError(
                self._scrub(
                    f"cannot copy to s3://{self._u.bucket}/{dst}: objects over 5 GiB are copied "
                    "part by part, "
                    "which needs static S3 credentials"
                )
            )
        from preheat_storage.s3api import S3Error

        part = max(self.settings.part_size, -(-size // 10_000), 64 << 20)
        try:
            api.copy_multipart(src, dst, size, min(part, _S3_COPY_MAX))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "404"):
                raise NotFound(self._scrub(f"{self._u.bucket}/{src} does not exist")) from None
            raise StoreError(self._scrub(f"copy to {self._u.bucket}/{dst} failed: {exc}")) from None

    def _s3api(self, timeout: float = 10.0):
        """The minimal signed S3 client for the calls obstore lacks, or None without static keys."""
        return s3_client(self.settings, self._u.bucket, timeout)

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, self._path(key))
        except NOT_FOUND as exc:
            if is_bucket_missing(exc):
                raise self._errors.bucket_missing(self._u.bucket) from None
        except PreheatError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "delete", self.uri(key)) from None

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = [self._path(k) for k in keys[i : i + _DELETE_BATCH]]
            try:
                obstore.delete(self._store, batch)
            except NOT_FOUND:
                for path in batch:  # one was already gone; Azure fails the whole batch
                    self.delete(self._key(path))
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, "delete", self.uri(prefix)) from None
        return len(keys)

    def streaming_env(self) -> dict[str, str]:
        """Non-secret settings a streaming loader needs to reach this store.

        Credentials stay out: the engine's environment must provide its own.
        """
        return streaming_env(self.settings, self._u.kind, self._scrub)

    @property
    def gc_after(self) -> float:  # type: ignore[override]
        """The default age of a leftover `gc` removes (`gc_after` in the config, a day by default)."""
        return self.settings.gc_after

    def gc(self, older_than: float | None = None) -> int:
        """Abort multipart uploads under this store older than `older_than` s (default `gc_after`; S3 only).

        Azure discards uncommitted blocks by itself after a week; GCS and
        memory stores keep nothing to clean up that obstore can reach.
        """
        if self._u.kind != "s3":
            return 0
        api = self._s3api()
        if api is None:
            log.warning("gc of %s skipped: aborting uploads needs static S3 credentials", self.url)
            return 0
        age = self.settings.gc_after if older_than is None else older_than
        return abort_stale_uploads(self, api, age)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
