"""Fault injection and the request log of the loopback hub (`HubServer` mixes `RequestLog` in)."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("status", "drop", "corrupt", "slow", "hang")
BODY_FAULTS = ("drop", "corrupt", "slow", "hang")


@dataclass
class Fault:
    """A fault applied to the next `times` matching requests (None: every one).

    `path` is a glob matched against the decoded URL path and against the repo file path
    (so "*.safetensors" hits both the resolve URL and the CDN URL of a weight file).
    Kinds: `status` answers `status` (with `headers`); `drop` sends the headers and the
    first `after_bytes` body bytes, then closes the connection (with `reset`, resets it: the
    client sees ECONNRESET, not an early end); `corrupt` flips the body
    byte at offset `after_bytes`; `slow` caps the body at `bytes_per_sec`; `hang` stalls
    `seconds` after the headers and `after_bytes` bytes (before the headers when the
    response has no body), then closes. Body faults never match bodiless responses.
    `after_bytes` counts from the first byte of the body sent (of a ranged answer too).
    """

    kind: str
    path: str = "*"
    method: str = "*"
    origin: str = "*"
    times: int | None = 1
    status: int = 503
    after_bytes: int = 0
    bytes_per_sec: int = 64 * 1024
    seconds: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")


@dataclass
class RequestRecord:
    """One request seen by either origin; secret header values are redacted.

    `connection` numbers the TCP connection it came on (one number per accepted
    connection, across both origins); `started` and `finished` are `time.monotonic()`
    when the request arrived and when its answer was sent (0 while in progress).
    """

    origin: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0
    repo_id: str | None = None
    revision: str | None = None
    file: str | None = None
    fault: str | None = None
    connection: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def has_auth(self) -> bool:
        return "authorization" in self.headers


@dataclass(frozen=True)
class PathStats:
    """Request count and body bytes served for one key."""

    requests: int
    bytes: int


class RequestLog:
    """Armed faults and every request seen, kept under the server's lock."""

    _lock: threading.RLock
    _faults: list[Fault]
    _log: list[RequestRecord]

    def inject(self, fault: Fault) -> Fault:
        """Arm a fault; returns it so tests can read `hits` and `times` later."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request since the last `reset_stats()`, in arrival order."""
        with self._lock:
            return list(self._log)

    def find_requests(
        self, path: str = "*", *, method: str = "*", origin: str = "*"
    ) -> list[RequestRecord]:
        """Requests whose URL path or file matches the glob `path`."""
        return [r for r in self.requests if _matches(r, path, method, origin)]

    def request_count(self, path: str = "*", *, method: str = "*", origin: str = "*") -> int:
        return len(self.find_requests(path, method=method, origin=origin))

    def bytes_served(self, path: str = "*", *, method: str = "*", origin: str = "*") -> int:
        """Body bytes sent for matching requests (counted before they hit the socket)."""
        return sum(r.body_bytes for r in self.find_requests(path, method=method, origin=origin))

    @property
    def total_bytes(self) -> int:
        return self.bytes_served()

    def stats_by_path(self) -> dict[str, PathStats]:
        """Counts and body bytes keyed by "origin /decoded/url/path"."""
        return _group(self.requests, lambda r: f"{r.origin} {r.path}")

    def stats_by_file(self) -> dict[str, PathStats]:
        """Counts and body bytes of resolve and CDN requests keyed by "repo_id/file"."""
        return _group(
            (r for r in self.requests if r.file is not None), lambda r: f"{r.repo_id}/{r.file}"
        )

    def reset_stats(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._log.append(rec)

    def _take_faults(
        self, rec: RequestRecord, kinds: Sequence[str], has_body: bool
    ) -> dict[str, Fault]:
        taken: dict[str, Fault] = {}
        with self._lock:
            for fault in list(self._faults):
                if fault.kind not in kinds or fault.kind in taken:
                    continue
                if fault.kind in ("drop", "corrupt", "slow") and not has_body:
                    continue
                if not _matches(rec, fault.path, fault.method, fault.origin):
                    continue
                taken[fault.kind] = fault
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
        return taken


def _matches(rec: RequestRecord, glob: str, method: str, origin: str) -> bool:
    if method != "*" and rec.method != method.upper():
        return False
    if origin != "*" and rec.origin != origin:
        return False
    if glob == "*" or fnmatch.fnmatchcase(rec.path, glob):
        return True
    return rec.file is not None and fnmatch.fnmatchcase(rec.file, glob)


def _group(records: Any, key: Any) -> dict[str, PathStats]:
    out: dict[str, PathStats] = {}
    for r in records:
        k = key(r)
        old = out.get(k, PathStats(0, 0))
        out[k] = PathStats(old.requests + 1, old.bytes + r.body_bytes)
    return out
