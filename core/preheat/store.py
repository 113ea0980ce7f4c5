"""The store interface: where artifacts, manifests and run records live.

A store is an object store rooted at one URL. Keys are relative, `/`-separated
paths under that root. Every method may be called from several threads at
once (the pipeline downloads on a pool of threads) and from several
processes and machines sharing the store; conditional writes (`put` with
`if_absent` / `if_match`) are how they coordinate. Store plugins subclass
`Store` and register a factory per URL scheme through the
`preheat_register_stores` hook. Raise `PreheatError` (or `NotFound`,
`PreconditionFailed`) with a one-line message; any other exception is shown
to the user as an internal error.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs

from preheat.errors import NotFound, PreheatError


@attrs.frozen
class ObjectInfo:
    """What a store knows about one object without reading it: key, size and an etag (any change-detecting token).

    `modified` is when the object was last written (POSIX seconds), where the store
    says (`gc` uses it to leave young objects alone); it takes no part in equality.
    """

    key: str
    size: int
    etag: str | None = None
    modified: float | None = attrs.field(default=None, eq=False)


class ObjectWriter(abc.ABC):
    """A streaming write of one object; the object becomes visible only on `commit`.

    One writer is used by one thread. `offset` is the number of bytes a
    resumable writer already holds from an earlier, interrupted write of the
    same key (0 otherwise); `existing()` yields those bytes so the caller
    can re-hash them before appending.
    """

    offset: int = 0

    def existing(self) -> Iterator[bytes]:
        """Yield the bytes kept from an interrupted write (nothing by default)."""
        return iter(())

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; may buffer or upload a part.

        :param data: the next bytes. Callers reuse `data`'s buffer once this
            returns: an implementation that keeps the bytes (to upload
            later) must copy them.
        :raises PreheatError: the store refused the write (the caller then
            calls `abort`).
        """

    @abc.abstractmethod
    def commit(self) -> ObjectInfo:
        """Make the object visible under its key, replacing any older one.

        :returns: the committed object's info (its etag is journaled to
            detect later changes).
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was written; leave no visible object (keeps resumable bytes). Must not raise."""

    def discard(self) -> None:
        """Abort and also drop any resumable bytes (they are known to be bad)."""
        self.abort()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


@attrs.frozen
class Span:
    """One byte range `[start, end)` of an object written in ranges; `index` is its place, from 0."""

    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


MIN_SPAN = 8 << 20
"""The smallest span a ranged write accepts, but for the last (S3 parts are at least 5 MiB)."""


def span_chunks(
    span: Span, chunks: Iterable[bytes | memoryview], what: str
) -> Iterator[memoryview]:
    """`chunks` as byte views, for a store's `write_range`: raises `PreheatError` before
    more than `span.size` bytes pass, or at the end when fewer did (`what` names the object)."""
    passed = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        passed += len(view)
        if passed > span.size:
            raise PreheatError(f"{what}: more than the {span.size} bytes of span {span.index}")
        if view:
            yield view
    if passed != span.size:
        raise PreheatError(f"{what}: span {span.index} got {passed} of {span.size} bytes")


def check_spans(spans: Sequence[Span], what: str) -> None:
    """For a store's `finish_ranges`: the spans must cover the object from byte 0 in index
    order, without gaps or overlaps, or `PreheatError` (`what` names the object)."""
    if not spans:
        raise PreheatError(f"{what}: a ranged upload needs at least one span")
    end = 0
    for i, span in enumerate(spans):
        if span.index != i or span.start != end or span.end < span.start:
            after = f"span {i - 1} (ending at {end})" if i else "the start (0)"
            raise PreheatError(f"{what}: span {span.index} does not follow {after}")
        end = span.end


class Store(abc.ABC):
    """An object store rooted at `url`, holding artifacts, manifests and runs."""

    url: str

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """The full URI of `key` (what a streaming loader would read)."""

    def local_path(self, key: str) -> Path | None:
        """A local filesystem path for `key` when the store is local, else None.

        A non-None answer lets the pipeline check free disk space and lets
        engines load artifacts in place.
        """
        return None

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and etag of `key`, or None when it does not exist."""

    @abc.abstractmethod
    def read(self, key: str) -> tuple[bytes, str | None] | None:
        """The whole object and its etag, or None when it does not exist (small objects only)."""

    @abc.abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from `start` (fewer only at the end).

        :raises NotFound: `key` does not exist.
        """

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several (start, length) ranges of `key`, in order; stores may fetch them concurrently."""
        return [self.read_range(key, start, length) for start, length in ranges]

    @abc.abstractmethod
    def open_reader(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """Stream `key` in chunks of about `chunk_size` bytes.

        :raises NotFound: `key` does not exist.
        """

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Write a small object at once (records, manifests, leases).

        :param if_absent: fail with PreconditionFailed if `key` exists.
        :param if_match: fail with PreconditionFailed unless the current
            etag equals it (compare-and-swap, used for aliases and leases).
        :returns: the written object's info, with its new etag.
        """

    @abc.abstractmethod
    def open_writer(self, key: str, *, resume: bool = False) -> ObjectWriter:
        """Start a streaming write of `key`; with `resume`, keep bytes from an interrupted one."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursive); in-progress writes are not listed."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone."""

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Copy the object `src_key` to `dst_key` inside this store, replacing any `dst_key`.

        Stores copy without moving the bytes through this process where they
        can (a hard link or reflink on a filesystem, a server-side copy on an
        object store); this default streams them through `open_reader` and
        `open_writer` as the last resort. Like a writer's commit, the copy
        becomes visible at `dst_key` only once complete.

        :param src_key: the object to copy; it is left as it is.
        :param dst_key: where the copy lands.
        :returns: the info of the new object at `dst_key` (its size, etag).
        :raises NotFound: `src_key` does not exist.
        :raises PreheatError: the store refused the copy (nothing is left at
            `dst_key` in that case, or the old object).
        """
        if self.head(src_key) is None:
            raise NotFound(f"{self.uri(src_key)} does not exist")
        writer = self.open_writer(dst_key)
        try:
            for chunk in self.open_reader(src_key):
                writer.write(chunk)
            info = writer.commit()
        except BaseException:
            writer.abort()
            raise
        return self.head(dst_key) or info

    def begin_ranges(self, key: str, size: int) -> str | None:
        """Start writing `key` (`size` bytes) as spans that several processes write at once.

        Large files are split across machines this way; a store that cannot
        take them returns None (the default) and the file is written whole
        with `open_writer`. Nothing is visible at `key` until `finish_ranges`.

        :returns: the upload's handle (plain text, sent to the writers), or None.
        """
        return None

    def write_range(
        self, key: str, upload: str, span: Span, chunks: Iterable[bytes | memoryview]
    ) -> None:
        """Write one span of the upload `upload`, from any process that opened this store.

        :param chunks: exactly `span.size` bytes, in order; their buffers may be
            reused once each is written.
        :raises PreheatError: the store refused the write; writing the same span
            again replaces it.
        """
        raise NotImplementedError

    def finish_ranges(self, key: str, upload: str, spans: Sequence[Span]) -> ObjectInfo:
        """Make `key` from the written `spans` (every span of the object, in order), at once.

        :raises PreheatError: a span is missing or has the wrong size (the upload is kept).
        """
        raise NotImplementedError

    def abort_ranges(self, key: str, upload: str) -> None:
        """Drop an unfinished upload and every span written to it. Must not raise."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix`; return how many were removed."""
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    can_rename = False

    def rename_prefix(self, src: str, dst: str) -> None:
        """Move every object under `src` to `dst` at once (stores with `can_rename` only); replaces `dst`.

        Stores that can rename a folder atomically publish a staged version
        in one step; the others write final keys, invisible until the
        manifest exists.
        """
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        """Room left for new objects, or None when the store does not say."""
        return None

    def streaming_env(self) -> dict[str, str]:
        """Environment a streaming loader needs to read this store (endpoints, regions; never secrets)."""
        return {}

    gc_after: float = 0.0
    """How old (seconds) a leftover of an interrupted write must be before `gc` removes it by default."""

    def gc(self, older_than: float | None = None) -> int:
        """Remove leftovers of interrupted writes (partial files, open uploads); return a count.

        :param older_than: remove only leftovers at least this many seconds
            old (None: the store's default, `gc_after`). A leftover still in
            use by a live writer is younger than any sensible threshold.
        :returns: how many leftovers were removed.
        """
        return 0

    def close(self) -> None:
        """Release connections and threads."""
