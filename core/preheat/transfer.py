"""A lean streaming HTTP GET for large bodies (stdlib `http.client`, keep-alive per thread).

The Hub client library streams bodies through a pure-Python HTTP parser at
roughly a quarter of what the socket gives on a fast link (measured in
benchmarks/prefetch.py), so weight bytes take this path; every API call and
error still goes through huggingface_hub.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 8
BUFFER = 1 << 20
# yield once this much arrived: big enough to keep per-chunk work cheap, small enough to
# notice a cancel quickly on a slow link
FILL = 256 << 10

_local = threading.local()
_ssl_context: ssl.SSLContext | None = None


def _context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
    )


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """A kept-alive connection to the URL's origin (through a proxy when the environment says so)."""
    scheme, host, port = _origin(url)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = (scheme, host, port)
    conn = pool.get(key)
    proxy = None
    if not urllib.request.proxy_bypass(host):
        proxy = urllib.request.getproxies().get(scheme)
    if conn is None:
        if proxy:
            p_scheme, p_host, p_port = _origin(proxy if "://" in proxy else f"http://{proxy}")
            cls = http.client.HTTPSConnection if p_scheme == "https" else http.client.HTTPConnection
            kwargs = {"context": _context()} if p_scheme == "https" else {}
            conn = cls(p_host, p_port, timeout=timeout, **kwargs)
            if scheme == "https":
                conn.set_tunnel(host, port)
        elif scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        pool[key] = conn
    return conn, bool(proxy) and scheme == "http"


def _drop(url: str) -> None:
    pool = getattr(_local, "pool", {})
    conn = pool.pop(_origin(url), None)
    if conn is not None:
        conn.close()


class HTTPStatus(Exception):
    """A non-success status; `url` is the last URL requested (after redirects)."""

    def __init__(self, status: int, url: str, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.url = url
        self.headers = headers


class Body:
    """An open response body: `status`, `headers`, and `chunks()` yielding memoryviews of one reused buffer."""

    def __init__(self, response: http.client.HTTPResponse, url: str) -> None:
        self.response = response
        self.status = response.status
        self.url = url
        self.headers = {k.lower(): v for k, v in response.getheaders()}

    def chunks(self) -> Iterator[memoryview]:
        view = memoryview(bytearray(BUFFER))
        while True:
            filled = 0
            while filled < FILL and (n := self.response.readinto(view[filled:])):
                filled += n
            if not filled:
                return
            yield view[:filled]

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
            path = (
                url
                if absolute
                else (urlsplit(url).path or "/")
                + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")
            )
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                _drop(url)
                if attempt:
                    raise
        assert response is not None
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            response.read()
            if not location:
                raise HTTPStatus(response.status, url, {})
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            continue
        if response.status >= 400:
            hdrs = {k: v for k, v in response.getheaders()}
            response.read()
            raise HTTPStatus(response.status, url, hdrs)
        return Body(response, url)
    raise HTTPStatus(310, url, {})
