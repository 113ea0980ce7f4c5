"""Lean HTTP for the Hub: stdlib `http.client`, one kept-alive connection per origin and thread.

Weight bytes, API calls (JSON) and small reads all go through `get`: the Hub
client library streams bodies through a pure-Python HTTP parser at roughly a
quarter of what the socket gives on a fast link (measured in
benchmarks/prefetch.py), and importing it costs more than a no-op prefetch
may. `Remote` is one file behind a redirect: the CDN URL the hub redirects to
is kept for the next ranges and resolved again when it is refused (expired).
`Slots` and `BufferPool` are the limits one fetcher shares across its files
(see `preheat.ranged`).
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 8
BUFFER = 1 << 20
# yield once this much arrived: big enough to keep per-chunk work cheap, small enough to
# notice a cancel quickly on a slow link
FILL = 256 << 10
ERROR_BODY = 64 << 10
# a cached (signed) URL answered with one of these has expired or was revoked: resolve again
EXPIRED = (401, 403, 410)

_local = threading.local()
_ssl_context = None


def _context():
    global _ssl_context
    if _ssl_context is None:
        import ssl

        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
    )


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port (credentials may travel between them)."""
    return _origin(a) == _origin(b)


def _proxy(scheme: str, host: str) -> str | None:
    """The proxy for `scheme` as urllib finds it (on Linux only `*_proxy` variables name one)."""
    if sys.platform.startswith("linux") and not any(
        k.lower().endswith("_proxy") for k in os.environ
    ):
        return None
    import urllib.request

    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """A kept-alive connection to the URL's origin (through a proxy when the environment says so)."""
    scheme, host, port = _origin(url)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = (scheme, host, port)
    conn, absolute = pool.get(key, (None, False))
    if conn is None:
        proxy = _proxy(scheme, host)
        if proxy:
            p_scheme, p_host, p_port = _origin(proxy if "://" in proxy else f"http://{proxy}")
            if p_scheme == "https":
                conn = http.client.HTTPSConnection(
                    p_host, p_port, timeout=timeout, context=_context()
                )
            else:
                conn = http.client.HTTPConnection(p_host, p_port, timeout=timeout)
            if scheme == "https":
                conn.set_tunnel(host, port)
        elif scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        absolute = bool(proxy) and scheme == "http"
        pool[key] = (conn, absolute)
    return conn, absolute


def _drop(url: str) -> None:
    pool = getattr(_local, "pool", {})
    conn, _ = pool.pop(_origin(url), (None, False))
    if conn is not None:
        conn.close()


def close_connections() -> None:
    """Close this thread's kept-alive connections."""
    pool = getattr(_local, "pool", {})
    for conn, _ in pool.values():
        conn.close()
    pool.clear()


class HTTPStatus(Exception):
    """A status >= 400: `url` is the last URL requested (after redirects), `headers` lowercased,
    `body` the start of the answer (for error messages)."""

    def __init__(self, status: int, url: str, headers: dict[str, str], body: bytes = b"") -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.url = url
        self.headers = headers
        self.body = body


class Body:
    """An open response: `status`, lowercased `headers`, the final `url`; read it with `chunks()`,
    `readinto()` or `read()`, then `close()` (which keeps the connection when the body was read)."""

    def __init__(self, response: http.client.HTTPResponse, url: str) -> None:
        self.response = response
        self.status = response.status
        self.url = url
        self.headers = {k.lower(): v for k, v in response.getheaders()}

    def chunks(self) -> Iterator[memoryview]:
        """The body as memoryviews of one reused buffer (each valid until the next)."""
        view = memoryview(bytearray(BUFFER))
        while True:
            filled = 0
            while filled < FILL and (n := self.response.readinto(view[filled:])):
                filled += n
            if not filled:
                return
            yield view[:filled]

    def readinto(self, view: memoryview) -> int:
        """Read into `view` until it is full or the body ends; return the bytes read."""
        filled = 0
        while filled < len(view) and (n := self.response.readinto(view[filled:])):
            filled += n
        return filled

    def read(self) -> bytes:
        return self.response.read()

    def close(self) -> None:
        if not self.response.isclosed():
            self.response.close()
            _drop(self.url)


def get(url: str, headers: dict[str, str], *, timeout: float = 60.0) -> Body:
    """GET `url`, following redirects (dropping Authorization across origins); raise HTTPStatus on >= 400."""
    headers = dict(headers)
    for _ in range(MAX_REDIRECTS):
        response = None
        for attempt in range(2):
            conn, absolute = _connection(url, timeout)
            parts = urlsplit(url)
            path = (
                url
                if absolute
                else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            )
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed meanwhile: one fresh try
                _drop(url)
                if attempt:
                    raise
            except BaseException:
                _drop(url)
                raise
        assert response is not None
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            response.read()
            if not location:
                raise HTTPStatus(response.status, url, {})
            target = urljoin(url, location)
            if not same_origin(target, url):
                headers = without_auth(headers)
            url = target
            continue
        if response.status >= 400:
            hdrs = {k.lower(): v for k, v in response.getheaders()}
            try:
                body = response.read(ERROR_BODY)
                if not response.isclosed():
                    response.close()
                    _drop(url)
            except (OSError, http.client.HTTPException):
                body = b""
                _drop(url)
            raise HTTPStatus(response.status, url, hdrs, body)
        return Body(response, url)
    raise HTTPStatus(310, url, {})


def without_auth(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def content_range(body: Body) -> tuple[int, int, int] | None:
    """(first, last, total) of a 206 answer's Content-Range, or None when absent or unreadable."""
    value = body.headers.get("content-range", "")
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first), int(last), int(total) if total != "*" else -1
    except ValueError:
        return None


class Remote:
    """One file at `url`, fetched whole or by range; the URL a redirect leads to is kept.

    The first request follows the hub's redirect; later ones go straight to
    the CDN URL it led to, without the hub's credentials (a different origin). A
    kept URL that is refused (EXPIRED: signed URLs expire) is dropped and the
    request goes through the hub again, once.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self._final: str | None = None
        self._lock = threading.Lock()

    def open(self, start: int = 0, end: int | None = None, *, timeout: float = 60.0) -> Body:
        """GET bytes `start`..`end` (inclusive; None: to the end; no Range header for the whole file)."""
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        with self._lock:
            final = self._final
        if final is not None:
            headers = self.headers if same_origin(final, self.url) else without_auth(self.headers)
            try:
                return get(final, {**headers, **extra}, timeout=timeout)
            except HTTPStatus as exc:
                if exc.status not in EXPIRED:
                    raise
                with self._lock:
                    if self._final == final:
                        self._final = None
        body = get(self.url, {**self.headers, **extra}, timeout=timeout)
        if body.url != self.url:
            with self._lock:
                self._final = body.url
        return body


class Slots:
    """At most `n` connections busy at once; a blocking `acquire` goes before any `try_acquire`."""

    def __init__(self, n: int) -> None:
        self._free = max(1, n)
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._free <= 0:
                    self._cond.wait()
                self._free -= 1
            finally:
                self._waiting -= 1

    def try_acquire(self) -> bool:
        """Take a slot only if one is free and nobody waits for one."""
        with self._cond:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return True
            return False

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()


class BufferPool:
    """At most `count` buffers of `size` bytes, allocated on first use and reused."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._left = max(0, count)
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def try_take(self) -> bytearray | None:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._left > 0:
                self._left -= 1
                return bytearray(self.size)
            return None

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
