"""HTTP pieces of the loopback hub: answers, ranges, path parsing, and how bodies are sent."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from preheat_testing.hub_data import Blob
from preheat_testing.hub_log import BODY_FAULTS, Fault

COPY_CHUNK = 1 << 20
_REDACTED = "<redacted>"
_SECRET_HEADERS = ("authorization", "cookie", "proxy-authorization")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolves_to_ipv6_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET6, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return any(info[4][0] == "::1" for info in infos)


@dataclass
class Slice:
    blob: Blob
    start: int
    length: int

    def chunks(self, size: int, limit: int) -> Iterator[bytes]:
        end = self.start + min(limit, self.length)
        if self.blob.data is not None:
            view = memoryview(self.blob.data)
            for pos in range(self.start, end, size):
                yield bytes(view[pos : min(pos + size, end)])
            return
        assert self.blob.path is not None
        with open(self.blob.path, "rb", buffering=0) as f:
            f.seek(self.start)
            pos = self.start
            while pos < end:
                data = f.read(min(size, end - pos))
                if not data:
                    raise OSError(f"{self.blob.path} shrank while serving")
                pos += len(data)
                yield data


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | Slice = b""

    @property
    def length(self) -> int:
        return len(self.body) if isinstance(self.body, bytes) else self.body.length


def error(
    status: int,
    message: str,
    code: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    out = [("Content-Type", "application/json; charset=utf-8"), ("X-Error-Message", message)]
    if code:
        out.append(("X-Error-Code", code))
    out.extend(headers)
    return Response(status, out, json.dumps({"error": message}).encode())


def json_answer(data: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    out = [("Content-Type", "application/json; charset=utf-8"), *headers]
    return Response(200, out, json.dumps(data).encode())


def flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or query.get(name + "[]") or []
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


def parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or not (m[1] or m[2]):
        return None
    if m[1]:
        start = int(m[1])
        end = min(int(m[2]), size - 1) if m[2] else size - 1
        if start >= size or (m[2] and int(m[2]) < start):
            return "unsatisfiable"
        return start, end
    n = int(m[2])
    if n == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - n), size - 1


def split_repo(segs: list[str], keywords: Sequence[str]) -> tuple[str, list[str]]:
    if len(segs) >= 3 and segs[2] in keywords:
        return f"{unquote(segs[0])}/{unquote(segs[1])}", segs[2:]
    if len(segs) >= 2 and segs[1] in keywords:
        return unquote(segs[0]), segs[1:]
    return "/".join(unquote(s) for s in segs), []


def split_rev(segs: list[str]) -> tuple[str, list[str]]:
    """Split "REV/rest..." where REV is URL-encoded, or a bare "refs/<kind>/<name>"."""
    if not segs:
        return "", []
    if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "heads", "tags", "convert"):
        return "/".join(unquote(s) for s in segs[:3]), segs[3:]
    return unquote(segs[0]), segs[1:]


def content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    safe = name.encode("ascii", "replace").decode().replace('"', "")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{safe}\";"


def redact_headers(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        k = key.lower()
        out[k] = _REDACTED if k in _SECRET_HEADERS else value
    return out


def plain(status: int, message: str) -> Response:
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")], message.encode())


class BodyWriter:
    """How the request handler sends an answer: injected faults first, then the body.

    With `HubServer.per_connection_bytes_per_sec` set, every body is paced to that rate,
    as a CDN caps each connection (a connection serves one answer at a time, so this is a
    cap per TCP connection); a `slow` fault slows it further.
    """

    server: Any
    rec: Any
    command: str
    close_connection: bool

    def _respond(self, resp: Response) -> None:
        hub, rec = self.server.hub, self.rec
        has_body = self.command != "HEAD" and resp.length > 0
        faultable = has_body and 200 <= resp.status < 300
        status = hub._take_faults(rec, ("status",), faultable).get("status")
        faults: dict[str, Fault] = {}
        if status is not None:
            rec.fault = "status"
            resp = error(
                status.status, f"injected {status.status}", None, list(status.headers.items())
            )
            has_body = self.command != "HEAD"
        else:
            faults = hub._take_faults(rec, BODY_FAULTS, faultable)
            if faults:
                rec.fault = ",".join(sorted(faults))
        hang = faults.get("hang")
        if hang is not None and not faultable:
            hub._stopping.wait(hang.seconds)
            self.close_connection = True
            return
        rec.status = resp.status
        self.send_response(resp.status)
        for key, value in resp.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(resp.length))
        self.end_headers()
        if not has_body:
            return
        cap = hub.per_connection_bytes_per_sec
        if faults or cap:
            self._write_faulty(resp.body, faults, cap)
        elif isinstance(resp.body, Slice) and resp.body.blob.path is not None:
            self._sendfile(resp.body, 0, resp.body.length)
        else:
            self._write_all(resp.body)

    def _write_all(self, body: bytes | Slice) -> None:
        if isinstance(body, bytes):
            self.rec.body_bytes += len(body)
            self.wfile.write(body)
            return
        for chunk in body.chunks(COPY_CHUNK, body.length):
            self.rec.body_bytes += len(chunk)
            self.wfile.write(chunk)

    def _sendfile(self, body: Slice, offset: int, count: int) -> None:
        """Send `count` bytes of a file-backed body from `offset` (in the kernel)."""
        assert body.blob.path is not None
        with open(body.blob.path, "rb") as f:
            start = body.start + offset
            self.rec.body_bytes += count
            try:
                self.connection.sendfile(f, start, count)
            except OSError:
                self.rec.body_bytes -= count - max(0, f.tell() - start)
                self.close_connection = True
                raise

    def _write_faulty(
        self, body: bytes | Slice, faults: dict[str, Fault], cap: int | None = None
    ) -> None:
        hub = self.server.hub
        if isinstance(body, bytes):
            body = Slice(Blob(len(body), "", data=body), 0, len(body))
        total = body.length
        stop_at = total
        drop, hang, corrupt, slow = (faults.get(k) for k in ("drop", "hang", "corrupt", "slow"))
        if drop is not None:
            stop_at = min(drop.after_bytes, max(total - 1, 0))
        if hang is not None:
            stop_at = min(stop_at, hang.after_bytes)
        flip = min(corrupt.after_bytes, total - 1) if corrupt is not None else -1
        rates = [max(1, r) for r in (slow.bytes_per_sec if slow else None, cap) if r]
        rate = min(rates) if rates else 0
        size = max(1, min(COPY_CHUNK, rate // 50)) if rate else COPY_CHUNK
        sent, t0 = 0, time.monotonic()

        def paced() -> bool:
            """Wait until the next bytes are due (not after the last); True once the server stops."""
            if not rate or sent >= stop_at:
                return False
            delay = sent / rate - (time.monotonic() - t0)
            return delay > 0 and hub._stopping.wait(delay)

        if flip < 0 and body.blob.path is not None:  # a plain file body: sent by the kernel
            while sent < stop_at:
                n = min(size, stop_at - sent)
                self._sendfile(body, sent, n)
                sent += n
                if paced():
                    break
        else:
            for chunk in body.chunks(size, stop_at):
                if sent <= flip < sent + len(chunk):
                    buf = bytearray(chunk)
                    buf[flip - sent] ^= 0xFF
                    chunk = bytes(buf)
                self.rec.body_bytes += len(chunk)
                self.wfile.write(chunk)
                sent += len(chunk)
                if paced():
                    break
        if hang is not None:
            hub._stopping.wait(hang.seconds)
        if sent < total:
            self.close_connection = True
            if drop is not None and drop.reset:
                # close with SO_LINGER 0: the peer gets a reset, not an orderly end of stream
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()  # for good once the handler lets go of it
