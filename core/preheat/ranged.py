"""One file over several connections: byte ranges fetched in parallel, written in file order.

CDNs cap each connection's throughput and refuse single requests for the very
largest files, so a file larger than one range (`PREHEAT_RANGE_SIZE`, 16 MiB by
default) is fetched as ranges. The thread that downloads the file (the *head*)
writes every byte in order into the sink (the store writer and the digests),
so the writer's offset is always the resume point and the sha256 is computed
over the whole file as it lands. Helper connections fetch ranges ahead of the
head into buffers, which the head writes once it gets there; when no helper is
free the head fetches its next range itself, straight into the sink.

The limits are the fetcher's, shared by every file of a run: at most
`PREHEAT_CONNECTIONS` (8) requests in flight at once, heads first, and at most
128 MiB of range buffers. A head never waits for a buffer and a helper never
waits for anything but its connection, so files cannot starve each other.

Every request resumes by range after a dropped connection and is retried with
backoff (the policy's); a server that ignores Range (200 for a ranged request)
gets one plain stream from the bytes already written, and a file whose plain
GET is refused (the Hub's bridge refuses files above 50 GB in one request) is
fetched by ranges.
"""

from __future__ import annotations

import http.client
import os
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from preheat.errors import PreheatError
from preheat.fetch import IntegrityError
from preheat.transfer import BufferPool, HTTPStatus, Remote, Slots, content_range

MiB = 1 << 20
RANGE_SIZE = 16 * MiB
CONNECTIONS = 8
BUFFER_MEMORY = 128 * MiB
# when no helper can take ranges, the head asks for up to this much at once (fewer round trips)
HEAD_SPAN = 64 * MiB
READ = 1 * MiB
# how often a head waiting for a helper's range checks for a cancel and more free helpers
POLL = 0.05
# answers to a plain GET that mean "ask for ranges" (the Hub's CDN answers 400 for files too
# large to serve whole; other CDNs use 403, 413 or 416) when no hub error code explains them
REFUSED = (400, 403, 413, 416)

Sink = Callable[[memoryview], None]


def _size(text: str | None, default: int) -> int:
    if not text:
        return default
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise PreheatError(
            f"invalid PREHEAT_RANGE_SIZE {text!r}: use a byte count such as 16777216 or 16M"
        ) from None
    return min(max(value, 64 << 10), 64 * MiB)


class Policy(Protocol):
    """What the fetcher decides: how often to retry, and the one-line errors."""

    retries: int

    def backoff(self, attempt: int) -> float: ...

    def fatal(self, exc: HTTPStatus, path: str) -> PreheatError:
        """The error for a status that retrying will not fix (401, 403, 404, ...)."""

    def gave_up(self, path: str, attempts: int, exc: Exception) -> PreheatError:
        """The error once `attempts` attempts failed."""


def retriable(exc: HTTPStatus) -> bool:
    return exc.status >= 500 or exc.status in (408, 429)


class Limits:
    """The connection slots, range buffers and helper threads one fetcher shares across files."""

    def __init__(self, connections: int = CONNECTIONS, range_size: int = RANGE_SIZE) -> None:
        self.connections = max(1, connections)
        self.range_size = range_size
        self.slots = Slots(self.connections)
        self.buffers = max(1, min(self.connections, BUFFER_MEMORY // range_size))
        self.pool = BufferPool(self.buffers, range_size)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Limits:
        """`PREHEAT_CONNECTIONS` and `PREHEAT_RANGE_SIZE` (bytes, or with K/M/G; 64 KiB to 64 MiB)."""
        raw = os.environ.get("PREHEAT_CONNECTIONS", "")
        try:
            connections = int(raw) if raw.strip() else CONNECTIONS
        except ValueError:
            raise PreheatError(
                f"invalid PREHEAT_CONNECTIONS {raw!r}: use a whole number such as 8"
            ) from None
        return cls(connections, _size(os.environ.get("PREHEAT_RANGE_SIZE"), RANGE_SIZE))

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if len(self._threads) < self.connections:
                t = threading.Thread(
                    target=self._work, name=f"preheat-range-{len(self._threads)}", daemon=True
                )
                t.start()
                self._threads.append(t)
        self._queue.put(fn)

    def _work(self) -> None:
        from preheat.transfer import close_connections

        while (fn := self._queue.get()) is not None:
            fn()
        close_connections()

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)


class _NoRanges(Exception):
    """The server answered a ranged request with the whole body: `written` bytes are in order."""

    def __init__(self, written: int) -> None:
        self.written = written


class _Refused(Exception):
    """A plain GET of the whole file was refused: fetch it by ranges."""


def fetch(
    remote: Remote,
    size: int,
    offset: int,
    sink: Sink,
    *,
    path: str,
    limits: Limits,
    policy: Policy,
    on_bytes: Callable[[int], None],
) -> None:
    """Write bytes `offset`..`size` of `remote` into `sink`, in order.

    `on_bytes(n)` follows every write (and is called with 0 while waiting, so it may raise
    to cancel). Raises the policy's errors, IntegrityError for a body longer than `size`.
    """
    job = _Job(remote, size, path, sink, limits, policy, on_bytes)
    if offset >= size:
        return
    if size - offset > limits.range_size:
        try:
            _Ranged(job).run(offset)
            return
        except _NoRanges as exc:
            offset = exc.written
    try:
        job.single(offset)
    except _Refused:
        try:
            _Ranged(job).run(offset)
        except _NoRanges:
            raise PreheatError(
                f"download of {path} failed: the server refuses to send it whole and ignores "
                "byte ranges"
            ) from None


class _Job:
    """One file's download: where it comes from, where its bytes go, and the shared limits."""

    def __init__(
        self,
        remote: Remote,
        size: int,
        path: str,
        sink: Sink,
        limits: Limits,
        policy: Policy,
        on_bytes: Callable[[int], None],
    ) -> None:
        self.remote = remote
        self.size = size
        self.path = path
        self.sink = sink
        self.limits = limits
        self.policy = policy
        self.on_bytes = on_bytes

    def retry(self, attempt: int, exc: Exception, wait: Callable[[float], object]) -> int:
        if attempt >= self.policy.retries:
            raise self.policy.gave_up(self.path, attempt + 1, exc)
        wait(self.policy.backoff(attempt))
        return attempt + 1

    def check_total(self, body) -> tuple[int, int, int] | None:
        found = content_range(body)
        if found is not None and found[2] not in (-1, self.size):
            raise IntegrityError(
                f"{self.path}: the hub serves {found[2]} bytes but listed {self.size}; "
                "nothing was published, retry later or report it to the repository owner"
            )
        return found

    def single(self, offset: int) -> None:
        """One stream from `offset` to the end (Range `offset-` once resumed), resumed after drops."""
        import time

        self.written, attempt = offset, 0
        while self.written < self.size:
            self.limits.slots.acquire()
            try:
                self._single_attempt()
                if self.written < self.size:
                    raise ConnectionError(
                        f"{self.path}: connection closed at byte {self.written} of {self.size}"
                    )
            except HTTPStatus as exc:
                refused = exc.status in REFUSED and "x-error-code" not in exc.headers
                if self.written == 0 and refused:
                    raise _Refused() from None
                if not retriable(exc):
                    raise self.policy.fatal(exc, self.path) from None
                failure: Exception = exc
            except (OSError, http.client.HTTPException) as exc:
                failure = exc
            else:
                return
            finally:
                self.limits.slots.release()
            attempt = self.retry(attempt, failure, time.sleep)

    def _single_attempt(self) -> None:
        offset = self.written
        body = self.remote.open(offset) if offset else self.remote.open()
        try:
            skip = 0
            if offset:
                if body.status == 206:
                    found = self.check_total(body)
                    skip = offset - found[0] if found is not None else 0
                else:
                    skip = offset
            if skip < 0:
                raise ConnectionError(f"{self.path}: the server resumed before byte {offset}")
            for chunk in body.chunks():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if self.written + len(chunk) > self.size:
                    raise IntegrityError(
                        f"{self.path}: the hub sent more bytes than the listed size {self.size}"
                    )
                self.sink(chunk)
                self.written += len(chunk)
                self.on_bytes(len(chunk))
        finally:
            body.close()


class _Part:
    """A range a helper fetches into a buffer: bytes `start`..`end` (exclusive)."""

    __slots__ = ("start", "end", "buf", "filled", "done", "error")

    def __init__(self, start: int, end: int, buf: bytearray) -> None:
        self.start = start
        self.end = end
        self.buf = buf
        self.filled = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Ranged:
    """The ranges of one file, from the first byte not yet written; see the module docstring."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.limits = job.limits
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.parts: dict[int, _Part] = {}
        self.next_free = 0
        self.written = 0

    def run(self, offset: int) -> None:
        job, step = self.job, self.limits.range_size
        self.ranges = [(s, min(s + step, job.size)) for s in range(offset, job.size, step)]
        self.written = offset
        span, most = 1, max(1, HEAD_SPAN // step)
        i = 0
        try:
            while i < len(self.ranges):
                self._raise_failure()
                self._top_up(i)
                part = self.parts.get(i)
                if part is not None:
                    self._consume(i, part)
                    i, span = i + 1, 1
                    continue
                # no helper was free for the next range: the head fetches it (and, while helpers
                # stay busy, a few more at once) itself; helpers may still take the ranges after
                j = min(len(self.ranges), i + span)
                self.next_free = j
                self._stream(i, self.ranges[j - 1][1])
                i, span = j, min(most, span * 2)
        except _NoRanges:
            raise _NoRanges(self.written) from None
        finally:
            self._finish()

    # the head

    def _top_up(self, head: int) -> None:
        """Give the next unassigned ranges to helpers while a slot and a buffer are free."""
        limits = self.limits
        while self.next_free < len(self.ranges) and self.next_free < head + limits.buffers:
            buf = limits.pool.try_take()
            if buf is None:
                return
            if not limits.slots.try_acquire():
                limits.pool.give(buf)
                return
            index = self.next_free
            self.next_free += 1
            start, end = self.ranges[index]
            part = _Part(start, end, buf)
            self.parts[index] = part
            limits.submit(lambda part=part: self._helper(part))

    def _consume(self, index: int, part: _Part) -> None:
        while not part.done.wait(POLL):
            self.job.on_bytes(0)
            self._raise_failure()
            self._top_up(index)
        del self.parts[index]
        try:
            if part.error is not None:
                raise part.error
            self.job.sink(memoryview(part.buf)[: part.filled])
            self.written += part.filled
            self.job.on_bytes(part.filled)
        finally:
            self.limits.pool.give(part.buf)

    def _stream(self, index: int, end: int) -> None:
        """Fetch the bytes from the first one not written up to `end` on this thread, into the sink."""
        job, attempt = self.job, 0
        while self.written < end:
            self.limits.slots.acquire()
            try:
                self._stream_attempt(index, end)
            except HTTPStatus as exc:
                if not retriable(exc):
                    raise job.policy.fatal(exc, job.path) from None
                failure: Exception = exc
            except (OSError, http.client.HTTPException) as exc:
                failure = exc
            else:
                if self.written >= end:
                    return
                failure = ConnectionError(
                    f"{job.path}: connection closed at byte {self.written} of {job.size}"
                )
            finally:
                self.limits.slots.release()
            attempt = job.retry(attempt, failure, self.stop.wait)

    def _stream_attempt(self, index: int, end: int) -> None:
        job = self.job
        body = job.remote.open(self.written, end - 1)
        try:
            found = job.check_total(body) if body.status == 206 else None
            if found is None or found[0] != self.written:
                raise _NoRanges(self.written)
            for chunk in body.chunks():
                if self.written + len(chunk) > end:
                    chunk = chunk[: end - self.written]
                job.sink(chunk)
                self.written += len(chunk)
                job.on_bytes(len(chunk))
                self._raise_failure()
                self._top_up(index)
                if self.written >= end:
                    break
        finally:
            body.close()

    def _raise_failure(self) -> None:
        with self.lock:
            error = self.error
        if error is not None:
            raise error

    def _finish(self) -> None:
        with self.lock:
            self.stop.set()
            for part in self.parts.values():
                if part.done.is_set():
                    self.limits.pool.give(part.buf)
            self.parts.clear()

    # the helpers (on the fetcher's range threads, each holding a connection slot)

    def _helper(self, part: _Part) -> None:
        job, attempt = self.job, 0
        try:
            while not self.stop.is_set():
                try:
                    self._fill(part)
                    break
                except HTTPStatus as exc:
                    if not retriable(exc):
                        raise job.policy.fatal(exc, job.path) from None
                    failure: Exception = exc
                except (OSError, http.client.HTTPException) as exc:
                    failure = exc
                attempt = job.retry(attempt, failure, self.stop.wait)
        except BaseException as exc:  # handed to the head, which raises it
            part.error = exc
        finally:
            self.limits.slots.release()
            with self.lock:
                if part.error is not None and self.error is None:
                    self.error = part.error
                part.done.set()
                orphaned = self.stop.is_set()
            if orphaned:
                self.limits.pool.give(part.buf)

    def _fill(self, part: _Part) -> None:
        job = self.job
        start = part.start + part.filled
        body = job.remote.open(start, part.end - 1)
        try:
            found = job.check_total(body) if body.status == 206 else None
            if found is None or found[0] != start:
                raise _NoRanges(self.written)
            view = memoryview(part.buf)[: part.end - part.start]
            while part.filled < len(view) and not self.stop.is_set():
                n = body.readinto(view[part.filled : part.filled + READ])
                if not n:
                    raise ConnectionError(
                        f"{job.path}: connection closed at byte {part.start + part.filled} "
                        f"of {job.size}"
                    )
                part.filled += n
        finally:
            body.close()
