"""One file's download: its policy, and one plain stream from an offset, resumed after drops."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from preheat.errors import PreheatError
from preheat.fetch import IntegrityError
from preheat.transfer import HTTPStatus, Remote, content_range

if TYPE_CHECKING:
    from preheat.ranged import Limits

# answers to a plain GET that mean "ask for ranges" (the Hub's CDN answers 400 for files too
# large to serve whole; other CDNs use 403, 413 or 416) when no hub error code explains them
REFUSED = (400, 403, 413, 416)

Sink = Callable[[memoryview], None]


class Policy(Protocol):
    """What the fetcher decides: how often to retry, and the one-line errors."""

    retries: int

    def backoff(self, attempt: int) -> float: ...

    def fatal(self, exc: HTTPStatus, path: str) -> PreheatError:
        """The error for a status that retrying will not fix (401, 403, 404, ...)."""

    def gave_up(self, path: str, attempts: int, exc: Exception) -> PreheatError:
        """The error once `attempts` attempts failed."""


def retriable(exc: HTTPStatus) -> bool:
    """Whether retrying may fix the status (a server error, a timeout, rate limiting)."""
    return exc.status >= 500 or exc.status in (408, 429)


class NoRanges(Exception):
    """The server answered a ranged request with the whole body: `written` bytes are in order."""

    def __init__(self, written: int) -> None:
        self.written = written


class Refused(Exception):
    """A plain GET of the whole file was refused: fetch it by ranges."""


class FileDownload:
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
                    raise Refused() from None
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
