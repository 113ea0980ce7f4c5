"""A TCP proxy on loopback that cuts chosen HTTP responses short, as a dropped connection does.

    with CuttingProxy(upstream_port) as proxy:
        proxy.cut("GET", "/bucket/key", after=1 << 20, times=2)
        ...                     # clients talk to proxy.endpoint
        proxy.requests          # every request head seen, in order (method, target, headers)
        proxy.served            # response bytes sent to clients, per request

Requests pass through unchanged (so signed S3 requests stay valid: the client signed the
proxy's host, which the server sees). A response to a request that matches a cut is
forwarded up to `after` bytes, headers included, then the connection is closed. Clients
must not pipeline, which HTTP/1.1 clients do not: a request's response is whatever the
server sends after it, until the next request.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD = re.compile(rb"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.S)


@dataclass
class Request:
    """A request head as the proxy forwarded it."""

    method: str
    target: str
    headers: dict[str, str]
    served: int = 0  # response bytes the client got, headers included
    head: int | None = None  # bytes of the response's status line and headers
    cut: bool = False

    @property
    def body(self) -> int:
        """Response body bytes the client got."""
        return self.served - (self.head or 0)


@dataclass
class _Cut:
    method: str
    target: str
    after: int
    times: int
    then: Callable[[], None] | None = None


@dataclass
class _Conn:
    current: Request | None = None
    limit: int | None = None  # response bytes left before the reset
    then: Callable[[], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class CuttingProxy:
    """Forwards loopback TCP to `upstream_port`, cutting the responses `cut()` names."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.requests: list[Request] = []
        self._cuts: list[_Cut] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(
        self,
        method: str,
        target: str,
        *,
        after: int,
        times: int = 1,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Reset the next `times` responses to `method` on a path starting with `target` after
        `after` bytes; `then()` runs once each was cut, before the client sees the reset."""
        with self._lock:
            self._cuts.append(_Cut(method, target, after, times, then))

    def matching(self, method: str, target: str) -> list[Request]:
        """The requests seen with `method` on a path starting with `target`."""
        return [r for r in self.requests if r.method == method and r.target.startswith(target)]

    def __enter__(self) -> CuttingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            conn = _Conn()
            threading.Thread(
                target=self._requests, args=(client, server, conn), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(server, client, conn), daemon=True
            ).start()

    def _arm(self, head: re.Match, conn: _Conn) -> None:
        method, target = head.group(1).decode(), head.group(2).decode()
        headers = {}
        for line in head.group(3).decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        request = Request(method, target, headers)
        with self._lock:
            self.requests.append(request)
            cut = next(
                (
                    c
                    for c in self._cuts
                    if c.times and c.method == method and target.startswith(c.target)
                ),
                None,
            )
            if cut is not None:
                cut.times -= 1
        with conn.lock:
            conn.current = request
            conn.limit, conn.then = (cut.after, cut.then) if cut else (None, None)

    def _requests(self, client: socket.socket, server: socket.socket, conn: _Conn) -> None:
        tail = b""  # the end of the last chunk, for a head split across reads
        try:
            while data := client.recv(1 << 16):
                seen = tail + data
                for head in HEAD.finditer(seen):
                    if head.end() > len(tail):  # not one matched in the previous round
                        self._arm(head, conn)
                tail = seen[-4096:]
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _responses(self, server: socket.socket, client: socket.socket, conn: _Conn) -> None:
        try:
            while data := server.recv(1 << 16):
                with conn.lock:
                    request, limit, then = conn.current, conn.limit, conn.then
                    if limit is not None:
                        data = data[:limit]
                        conn.limit = limit - len(data)
                    if request is not None:
                        if request.head is None and (end := data.find(b"\r\n\r\n")) >= 0:
                            request.head = request.served + end + 4
                        request.served += len(data)
                client.sendall(data)
                if limit is not None and conn.limit == 0:
                    if request is not None:
                        request.cut = True
                    if then is not None:
                        then()
                    # closed cleanly, so the client got every byte counted in `served`
                    client.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
            with self._lock:
                self._open.discard(s)
