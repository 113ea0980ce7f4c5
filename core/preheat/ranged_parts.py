"""A file fetched as byte ranges: helpers fill buffers ahead while the head writes in order."""

from __future__ import annotations

import http.client
import threading
from typing import TYPE_CHECKING

from preheat.ranged_job import NoRanges, retriable
from preheat.transfer import HTTPStatus

if TYPE_CHECKING:
    from preheat.ranged_job import FileDownload

MiB = 1 << 20
# when no helper can take ranges, the head asks for up to this much at once (fewer round trips)
HEAD_SPAN = 64 * MiB
READ = 1 * MiB
# how often a head waiting for a helper's range checks for a cancel and more free helpers
POLL = 0.05


class Part:
    """A range a helper fetches into a buffer: bytes `start`..`end` (exclusive)."""

    __slots__ = ("start", "end", "buf", "filled", "done", "error")

    def __init__(self, start: int, end: int, buf: bytearray) -> None:
        self.start = start
        self.end = end
        self.buf = buf
        self.filled = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class RangedDownload:
    """The ranges of one file, from the first byte not yet written; see `preheat.ranged`."""

    def __init__(self, job: FileDownload) -> None:
        self.job = job
        self.limits = job.limits
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.parts: dict[int, Part] = {}
        self.next_free = 0
        self.written = 0
        # the ranges [first, stop) the head is streaming itself; helpers that come free once
        # no range is left after it take its last ranges (the head then stops before them)
        self.span: tuple[int, int] | None = None

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
                self.span = (i, j)
                self._stream(i)
                i, span = self.span[1], min(most, span * 2)
                self.span = None
        except NoRanges:
            raise NoRanges(self.written) from None
        finally:
            self._finish()

    # the head

    def _top_up(self, head: int) -> None:
        """Give the next unassigned ranges to helpers while a slot and a buffer are free;
        with none left, the last ranges of the head's own span (the file's tail)."""
        limits = self.limits
        while self.next_free < len(self.ranges) and self.next_free < head + limits.buffers:
            if not self._assign(self.next_free):
                return
            self.next_free += 1
        while self.next_free >= len(self.ranges) and self.span is not None:
            first, stop = self.span
            current = first + (self.written - self.ranges[first][0]) // self.limits.range_size
            if stop - 1 <= current or not self._assign(stop - 1):
                return
            self.span = (first, stop - 1)

    def _assign(self, index: int) -> bool:
        """Hand the range `index` to a helper, if a buffer and a connection slot are free."""
        limits = self.limits
        buf = limits.pool.try_take()
        if buf is None:
            return False
        if not limits.slots.try_acquire():
            limits.pool.give(buf)
            return False
        start, end = self.ranges[index]
        part = Part(start, end, buf)
        self.parts[index] = part
        limits.submit(lambda part=part: self._helper(part))
        return True

    def _span_end(self) -> int:
        """The byte the head's own stream stops at (its span's end, as helpers took its tail)."""
        assert self.span is not None
        return self.ranges[self.span[1] - 1][1]

    def _consume(self, index: int, part: Part) -> None:
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

    def _stream(self, index: int) -> None:
        """Fetch the bytes from the first one not written to the end of the head's span on this
        thread, into the sink."""
        job, attempt = self.job, 0
        while self.written < self._span_end():
            self.limits.slots.acquire()
            try:
                self._stream_attempt(index, self._span_end())
            except HTTPStatus as exc:
                if not retriable(exc):
                    raise job.policy.fatal(exc, job.path) from None
                failure: Exception = exc
            except (OSError, http.client.HTTPException) as exc:
                failure = exc
            else:
                if self.written >= self._span_end():
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
                raise NoRanges(self.written)
            for chunk in body.chunks():
                stop = self._span_end()
                if self.written + len(chunk) > stop:
                    chunk = chunk[: stop - self.written]
                job.sink(chunk)
                self.written += len(chunk)
                job.on_bytes(len(chunk))
                self._raise_failure()
                self._top_up(index)
                if self.written >= self._span_end():
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

    def _helper(self, part: Part) -> None:
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

    def _fill(self, part: Part) -> None:
        job = self.job
        start = part.start + part.filled
        body = job.remote.open(start, part.end - 1)
        try:
            found = job.check_total(body) if body.status == 206 else None
            if found is None or found[0] != start:
                raise NoRanges(self.written)
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
