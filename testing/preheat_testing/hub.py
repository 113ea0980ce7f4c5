"""A Hugging Face Hub on loopback, with a CDN origin for LFS blobs and fault injection.

`HubServer` answers the endpoints huggingface_hub calls (model info, tree, paths-info,
refs, commits, resolve) on `http://127.0.0.1:P1` and serves LFS blobs, after a 302, from a
second origin `http://localhost:P2` as the real hub does with its CDN. It never advertises
Xet. Run `python -m preheat_testing.hub --serve DIR` to serve every `DIR/ORG/NAME` folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

FileSource = bytes | str | Path

DEFAULT_LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.gguf",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.npz",
)
LFS_THRESHOLD = 10 * 1024 * 1024
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
FAULT_KINDS = ("status", "drop", "corrupt", "slow", "hang")

_BODY_FAULTS = ("drop", "corrupt", "slow", "hang")
_COPY_CHUNK = 1 << 20
_HASH_CHUNK = 8 << 20
_BASE_TIME = 1_704_067_200
_REDACTED = "<redacted>"
_SECRET_HEADERS = ("authorization", "cookie", "proxy-authorization")


@dataclass
class Fault:
    """A fault applied to the next `times` matching requests (None: every one).

    `path` is a glob matched against the decoded URL path and against the repo file path
    (so "*.safetensors" hits both the resolve URL and the CDN URL of a weight file).
    Kinds: `status` answers `status` (with `headers`); `drop` sends the headers and the
    first `after_bytes` body bytes, then closes the connection; `corrupt` flips the body
    byte at offset `after_bytes`; `slow` caps the body at `bytes_per_sec`; `hang` stalls
    `seconds` after the headers and `after_bytes` bytes (before the headers when the
    response has no body), then closes. Body faults never match bodiless responses.
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
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")


@dataclass
class RequestRecord:
    """One request seen by either origin; secret header values are redacted."""

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


_digest_cache: dict[tuple[str, int, int, str], str] = {}
_digest_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, streamed and cached by (path, size, mtime) for the process."""
    return _file_digest(Path(path), "sha256")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file text for a blob."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _file_digest(path: Path, algo: str) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, algo)
    with _digest_lock:
        hit = _digest_cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256() if algo == "sha256" else hashlib.sha1(b"blob %d\0" % st.st_size)
    buf = bytearray(min(_HASH_CHUNK, max(st.st_size, 1)))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    with _digest_lock:
        _digest_cache[key] = digest
    return digest


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


@dataclass(frozen=True)
class _Blob:
    size: int
    oid: str
    data: bytes | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    def read(self, start: int = 0, length: int | None = None) -> bytes:
        length = self.size - start if length is None else length
        if self.data is not None:
            return self.data[start : start + length]
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(length)


def _make_blob(
    repo_path: str,
    source: FileSource,
    patterns: Sequence[str],
    threshold: int,
    sha256: str | None,
) -> _Blob:
    if isinstance(source, str):
        source = source.encode()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path, size = bytes(source), None, len(source)
    else:
        data, path = None, Path(source)
        size = path.stat().st_size
    name = repo_path.rsplit("/", 1)[-1]
    is_lfs = size > threshold or any(
        fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(repo_path, p) for p in patterns
    )
    if is_lfs:
        if sha256 is None:
            sha256 = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
        return _Blob(size, git_blob_sha1(lfs_pointer(sha256, size)), data, path, sha256)
    oid = git_blob_sha1(data) if data is not None else _file_digest(path, "gitsha1")
    return _Blob(size, oid, data, path)


def _file_entry(path: str, blob: _Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.sha256 is not None:
        pointer = len(lfs_pointer(blob.sha256, blob.size))
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": pointer}
    return entry


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    date: str
    files: dict[str, _Blob]
    entries: list[dict[str, Any]]
    by_path: dict[str, dict[str, Any]]
    dirs: frozenset[str]
    cache: dict[str, Any] = field(default_factory=dict)


def _build_commit(
    repo_id: str,
    files: dict[str, _Blob],
    extra: Sequence[Mapping[str, Any]],
    parent: str | None,
    title: str,
    index: int,
) -> _Commit:
    listing = sorted((p, b.oid, b.size) for p, b in files.items())
    payload = json.dumps(
        [repo_id, parent, title, listing, list(extra)], sort_keys=True, default=str
    )
    sha = hashlib.sha1(payload.encode()).hexdigest()
    dirs: set[str] = set()
    for p in files:
        parts = p.split("/")
        if all(part not in ("", ".", "..") for part in parts):
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    entries = [_file_entry(p, b) for p, b in files.items()]
    for d in dirs:
        inner = "\n".join(f"{p} {oid}" for p, oid, _ in listing if p.startswith(d + "/"))
        oid = hashlib.sha1(inner.encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
    entries.sort(key=lambda e: e["path"])
    entries.extend(dict(e) for e in extra)
    by_path = {str(e.get("path")): e for e in entries}
    date = _iso(_BASE_TIME + 60 * index)
    return _Commit(sha, parent, title, date, files, entries, by_path, frozenset(dirs))


@dataclass
class _Repo:
    repo_id: str
    default_branch: str
    gated: bool | str
    private: bool
    patterns: tuple[str, ...]
    threshold: int
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> _Commit | None:
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            name = rev[len(prefix) :] if rev.startswith(prefix) else rev
            if name in refs:
                return self.commits[refs[name]]
        return self.commits.get(rev.lower()) if len(rev) == 40 else None


class HubServer:
    """A loopback Hugging Face Hub plus a CDN origin, in one object.

    `endpoint` is `http://127.0.0.1:P1`; LFS resolves 302 to `cdn_endpoint`
    (`http://localhost:P2`), a different origin. Thread-safe: repos, tokens and faults
    may be changed while serving. Use as a context manager or call `start()`/`stop()`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_host: str = "localhost",
        cdn_port: int = 0,
        page_size: int = 1000,
        expand_page_size: int = 50,
        lfs_threshold: int = LFS_THRESHOLD,
    ) -> None:
        self.host = host
        self.port = port
        self.cdn_host = cdn_host
        self.cdn_port = cdn_port
        self.page_size = page_size
        self.expand_page_size = expand_page_size
        self.lfs_threshold = lfs_threshold
        self.reject_cdn_auth = False
        self.endpoint = ""
        self.cdn_endpoint = ""
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._lfs: dict[str, _Blob] = {}
        self._tokens: dict[str, frozenset[str] | None] = {}
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._conns: set[socket.socket] = set()
        self._servers: list[_Server] = []
        self._stopping = threading.Event()
        self._secret = secrets.token_bytes(16)
        self._commit_index = 0

    def start(self) -> HubServer:
        """Bind both origins and serve them on daemon threads."""
        if self._servers:
            return self
        self._stopping.clear()
        hub = _Server((self.host, self.port), self, "hub")
        cdn = _Server((self.host, self.cdn_port), self, "cdn")
        servers = [hub, cdn]
        cdn_port = cdn.server_address[1]
        if self.host == "127.0.0.1" and _resolves_to_ipv6_loopback(self.cdn_host):
            with contextlib.suppress(OSError):
                servers.append(_Server(("::1", cdn_port), self, "cdn", socket.AF_INET6))
        for srv in servers:
            name = f"hub-{srv.origin}-{srv.server_address[1]}"
            threading.Thread(target=srv.serve_forever, args=(0.05,), name=name, daemon=True).start()
        self._servers = servers
        self.endpoint = f"http://{_url_host(self.host)}:{hub.server_address[1]}"
        self.cdn_endpoint = f"http://{_url_host(self.cdn_host)}:{cdn_port}"
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release both ports."""
        servers, self._servers = self._servers, []
        if not servers:
            return
        self._stopping.set()
        stoppers = [threading.Thread(target=s.shutdown, daemon=True) for s in servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(5)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for s in servers:
            s.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        branch: str = "main",
        tags: Sequence[str] | None = None,
        gated: bool | str = False,
        private: bool = False,
        lfs_patterns: Sequence[str] = DEFAULT_LFS_PATTERNS,
        lfs_threshold: int | None = None,
        extra_revisions: Mapping[str, Mapping[str, FileSource]] | None = None,
        extra_entries: Sequence[Mapping[str, Any]] = (),
        sha256: Mapping[str, str] | None = None,
        title: str = "initial commit",
    ) -> str:
        """Create (or replace) a repo with one commit on `branch`; return its sha.

        Values of `files` are bytes, text, or a Path served from disk (never loaded
        whole). `sha256` gives precomputed digests of LFS files by repo path.
        `extra_revisions` maps more branch names to their own full file sets.
        `extra_entries` are raw tree entries appended verbatim (hostile names...).
        `gated` may be True ("auto") or "manual".
        """
        repo = _Repo(
            repo_id=repo_id,
            default_branch=branch,
            gated="auto" if gated is True else gated,
            private=private,
            patterns=tuple(lfs_patterns),
            threshold=self.lfs_threshold if lfs_threshold is None else lfs_threshold,
        )
        with self._lock:
            self._repos[repo_id] = repo
        sha = self.add_revision(
            repo_id,
            files,
            branch=branch,
            tags=tags or (),
            extra_entries=extra_entries,
            sha256=sha256,
            title=title,
            parent=None,
        )
        for name, other in (extra_revisions or {}).items():
            self.add_revision(repo_id, other, branch=name, parent=sha, sha256=sha256)
        return sha

    def add_revision(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        branch: str | None = "main",
        tags: Sequence[str] = (),
        extra_entries: Sequence[Mapping[str, Any]] = (),
        sha256: Mapping[str, str] | None = None,
        title: str | None = None,
        parent: str | None | bool = True,
    ) -> str:
        """Add a commit holding exactly `files`; move `branch` and `tags` to it; return its sha.

        `parent=True` uses the current head of `branch`; pass a sha or None to choose.
        """
        repo = self._repo(repo_id)
        digests = sha256 or {}
        blobs = {
            p: _make_blob(p, src, repo.patterns, repo.threshold, digests.get(p))
            for p, src in files.items()
        }
        with self._lock:
            if parent is True:
                parent = repo.branches.get(branch) if branch else None
            self._commit_index += 1
            index = self._commit_index
            title = title or f"commit {len(repo.commits) + 1}"
            commit = _build_commit(repo_id, blobs, extra_entries, parent or None, title, index)
            repo.commits[commit.sha] = commit
            if branch:
                repo.branches[branch] = commit.sha
            for tag in tags:
                repo.tags[tag] = commit.sha
            for blob in blobs.values():
                if blob.sha256 is not None:
                    self._lfs.setdefault(blob.sha256, blob)
        return commit.sha

    def add_ref(self, repo_id: str, name: str, revision: str, *, tag: bool = False) -> str:
        """Point branch (or tag) `name`, e.g. "refs/pr/1", at an existing revision."""
        repo = self._repo(repo_id)
        with self._lock:
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}: no revision {revision!r}")
            (repo.tags if tag else repo.branches)[name] = commit.sha
        return commit.sha

    def set_gated(self, repo_id: str, gated: bool | str) -> None:
        """Change whether file downloads of a repo need a token with access."""
        self._repo(repo_id).gated = "auto" if gated is True else gated

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha a revision resolves to."""
        commit = self._repo(repo_id).resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id}: no revision {revision!r}")
        return commit.sha

    def tree_entry(self, repo_id: str, path: str, revision: str = "main") -> dict[str, Any]:
        """The tree entry the server lists for `path` (with `lfs` for LFS files)."""
        commit = self._repo(repo_id).resolve(revision)
        if commit is None or path not in commit.by_path:
            raise KeyError(f"{repo_id}@{revision}: no entry {path!r}")
        return dict(commit.by_path[path])

    def file_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        """The resolve URL of a file, as huggingface_hub builds it."""
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def add_token(self, token: str, repos: Sequence[str] | None = None) -> None:
        """Accept `token`; it opens private and gated `repos` (None: every repo)."""
        with self._lock:
            self._tokens[token] = None if repos is None else frozenset(repos)

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

    def _repo(self, repo_id: str) -> _Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r}")
        return repo

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

    def _token_allows(self, token: str | None, repo_id: str) -> bool:
        if token is None:
            return False
        with self._lock:
            scope = self._tokens.get(token, frozenset())
        return scope is None or repo_id in scope

    def _sign(self, sha: str, repo_id: str, path: str, expires: str) -> str:
        msg = f"{sha}\n{repo_id}\n{path}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _cdn_url(self, repo_id: str, path: str, sha: str) -> str:
        expires = str(int(time.time()) + 3600)
        query = urlencode(
            {
                "repo": repo_id,
                "file": path,
                "Expires": expires,
                "Signature": self._sign(sha, repo_id, path, expires),
            },
            quote_via=quote,
        )
        return f"{self.cdn_endpoint}/lfs/{sha}?{query}"


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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _resolves_to_ipv6_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET6, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return any(info[4][0] == "::1" for info in infos)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], hub: HubServer, origin: str, family: int = socket.AF_INET
    ) -> None:
        self.address_family = family
        self.hub = hub
        self.origin = origin
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.hub._lock:
            self.hub._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.hub._lock:
            self.hub._conns.discard(request)
        super().shutdown_request(request)


@dataclass
class _Slice:
    blob: _Blob
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
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | _Slice = b""

    @property
    def length(self) -> int:
        return len(self.body) if isinstance(self.body, bytes) else self.body.length


def _error(
    status: int,
    message: str,
    code: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> _Response:
    out = [("Content-Type", "application/json; charset=utf-8"), ("X-Error-Message", message)]
    if code:
        out.append(("X-Error-Code", code))
    out.extend(headers)
    return _Response(status, out, json.dumps({"error": message}).encode())


def _json(data: Any, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    out = [("Content-Type", "application/json; charset=utf-8"), *headers]
    return _Response(200, out, json.dumps(data).encode())


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or query.get(name + "[]") or []
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


def _parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
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


def _split_repo(segs: list[str], keywords: Sequence[str]) -> tuple[str, list[str]]:
    if len(segs) >= 3 and segs[2] in keywords:
        return f"{unquote(segs[0])}/{unquote(segs[1])}", segs[2:]
    if len(segs) >= 2 and segs[1] in keywords:
        return unquote(segs[0]), segs[1:]
    return "/".join(unquote(s) for s in segs), []


def _split_rev(segs: list[str]) -> tuple[str, list[str]]:
    """Split "REV/rest..." where REV is URL-encoded, or a bare "refs/<kind>/<name>"."""
    if not segs:
        return "", []
    if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "heads", "tags", "convert"):
        return "/".join(unquote(s) for s in segs[:3]), segs[3:]
    return unquote(segs[0]), segs[1:]


def _content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    safe = name.encode("ascii", "replace").decode().replace('"', "")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{safe}\";"


def _redact(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        k = key.lower()
        out[k] = _REDACTED if k in _SECRET_HEADERS else value
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "preheat-testing-hub/1"
    sys_version = ""
    timeout = 120
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_GET

    def _dispatch(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        rec = RequestRecord(
            origin=self.server.origin,
            method=self.command,
            path=unquote(split.path),
            query=split.query,
            headers=_redact(self.headers),
        )
        hub._record(rec)
        self.rec = rec
        try:
            body = self._read_body()
            query = parse_qs(split.query, keep_blank_values=True)
            if self.server.origin == "cdn":
                resp = self._cdn(split.path, query)
            else:
                resp = self._route(split.path, query, body)
        except Exception as exc:
            resp = _error(500, f"{type(exc).__name__}: {exc}")
        try:
            self._respond(resp)
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 64 << 20:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _token(self) -> tuple[str | None, bool]:
        value = self.headers.get("Authorization")
        if not value:
            return None, True
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        with self.server.hub._lock:
            known = token in self.server.hub._tokens
        return token, scheme.lower() == "bearer" and known

    def _open_repo(
        self, repo_id: str, *, files: bool = False
    ) -> tuple[_Repo | None, _Response | None]:
        hub = self.server.hub
        token, valid = self._token()
        if not valid:
            return None, _error(401, INVALID_CREDENTIALS)
        with hub._lock:
            repo = hub._repos.get(repo_id)
        allowed = hub._token_allows(token, repo_id)
        if repo is None or (repo.private and not allowed):
            return None, _error(
                401 if token is None else 404, "Repository not found", "RepoNotFound"
            )
        if files and repo.gated and not allowed:
            if token is None:
                msg = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be"
                    " authenticated to access it. Please log in."
                )
                return None, _error(401, msg, "GatedRepo")
            msg = (
                f"Access to model {repo_id} is restricted and you are not in the authorized list."
                f" Visit https://huggingface.co/{repo_id} to ask for access."
            )
            return None, _error(403, msg, "GatedRepo")
        return repo, None

    def _commit(self, repo: _Repo, rev: str) -> tuple[_Commit | None, _Response | None]:
        self.rec.revision = rev
        with self.server.hub._lock:
            commit = repo.resolve(rev)
        if commit is None:
            return None, _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit, None

    def _route(self, raw_path: str, query: dict[str, list[str]], body: bytes) -> _Response:
        segs = raw_path.split("/")[1:]
        if raw_path == "/api/whoami-v2":
            return self._whoami()
        if segs[:2] == ["api", "models"]:
            return self._api(segs[2:], query, body)
        repo_id, rest = _split_repo(segs, ("resolve",))
        if rest and self.command in ("GET", "HEAD"):
            return self._resolve(repo_id, rest[1:])
        return _error(404, "Not Found")

    def _whoami(self) -> _Response:
        token, valid = self._token()
        if token is None or not valid:
            return _error(401, INVALID_CREDENTIALS)
        role = {"displayName": "preheat-testing", "role": "read"}
        return _json({"type": "user", "name": "preheat-testing", "auth": {"accessToken": role}})

    def _api(self, segs: list[str], query: dict[str, list[str]], body: bytes) -> _Response:
        keywords = ("revision", "tree", "paths-info", "refs", "commits")
        repo_id, rest = _split_repo(segs, keywords)
        self.rec.repo_id = repo_id
        kind = rest[0] if rest else None
        wanted = "POST" if kind == "paths-info" else "GET"
        if self.command not in (wanted, "HEAD") or (
            kind == "paths-info" and self.command == "HEAD"
        ):
            return _error(405, "Method Not Allowed")
        repo, err = self._open_repo(repo_id)
        if err is not None:
            return err
        assert repo is not None
        if kind == "refs":
            return _json(_refs(repo, _flag(query, "include_prs")))
        rev, tail = _split_rev(rest[1:]) if rest else (repo.default_branch, [])
        if kind == "revision":
            rev = "/".join([rev, *map(unquote, tail)])
        commit, err = self._commit(repo, rev)
        if err is not None:
            return err
        assert commit is not None
        if kind is None or kind == "revision":
            expand = query.get("expand") or query.get("expand[]") or []
            return _json(_model_info(repo, commit, _flag(query, "blobs"), expand))
        if kind == "commits":
            return _json(_commits(repo, commit))
        if kind == "paths-info":
            return self._paths_info(commit, body)
        return self._tree(raw_tree_path=tail, commit=commit, query=query)

    def _tree(
        self, raw_tree_path: list[str], commit: _Commit, query: dict[str, list[str]]
    ) -> _Response:
        hub = self.server.hub
        path = unquote("/".join(raw_tree_path)).strip("/")
        if path and path not in commit.dirs:
            return _error(404, f"{path} does not exist on this revision", "EntryNotFound")
        recursive, expand = _flag(query, "recursive"), _flag(query, "expand")
        prefix = path + "/" if path else ""
        items = []
        for entry in commit.entries:
            p = str(entry.get("path", ""))
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if recursive or "/" not in rest or (not prefix and _parent(p) not in commit.dirs):
                items.append(entry)
        size = max(1, hub.expand_page_size if expand else hub.page_size)
        try:
            start = int((query.get("cursor") or ["0"])[-1] or 0)
        except ValueError:
            return _error(400, "Invalid cursor")
        page = items[start : start + size]
        if expand:
            page = [_expanded(e, commit) for e in page]
        headers = []
        if start + size < len(items):
            params = {k: v[-1] for k, v in query.items() if k != "cursor"}
            params["cursor"] = str(start + size)
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
            url = f"http://{host}{urlsplit(self.path).path}?{urlencode(params)}"
            headers.append(("Link", f'<{url}>; rel="next"'))
        return _json(page, headers)

    def _paths_info(self, commit: _Commit, body: bytes) -> _Response:
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype:
            data = json.loads(body or b"{}")
            paths, expand = list(data.get("paths") or []), bool(data.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _flag(form, "expand")
        out = []
        for p in paths:
            entry = commit.by_path.get(p.strip("/")) if p.strip("/") else None
            if entry is not None:
                out.append(_expanded(entry, commit) if expand else entry)
        return _json(out)

    def _resolve(self, repo_id: str, segs: list[str]) -> _Response:
        hub = self.server.hub
        rev, file_segs = _split_rev(segs)
        path = unquote("/".join(file_segs))
        self.rec.repo_id, self.rec.file = repo_id, path
        repo, err = self._open_repo(repo_id, files=True)
        if err is not None:
            return err
        assert repo is not None
        commit, err = self._commit(repo, rev)
        if err is not None:
            return err
        assert commit is not None
        blob = commit.files.get(path)
        if blob is None:
            return _error(404, "Entry not found", "EntryNotFound", [("X-Repo-Commit", commit.sha)])
        if blob.sha256 is not None:
            location = hub._cdn_url(repo_id, path, blob.sha256)
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Location", location),
                ("ETag", f'"{blob.sha256}"'),
                ("X-Linked-Etag", f'"{blob.sha256}"'),
                ("X-Linked-Size", str(blob.size)),
                ("X-Repo-Commit", commit.sha),
            ]
            return _Response(302, headers, f"Found. Redirecting to {location}".encode())
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Disposition", _content_disposition(path)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{blob.oid}"'),
            ("X-Repo-Commit", commit.sha),
        ]
        return self._ranged(blob, headers)

    def _cdn(self, raw_path: str, query: dict[str, list[str]]) -> _Response:
        hub = self.server.hub
        if self.command not in ("GET", "HEAD"):
            return _plain(405, "MethodNotAllowed")
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})", raw_path)
        if m is None:
            return _plain(404, "NoSuchKey")
        sha = m[1]
        repo_id, path = (query.get("repo") or [""])[-1], (query.get("file") or [""])[-1]
        expires, signature = (
            (query.get("Expires") or [""])[-1],
            (query.get("Signature") or [""])[-1],
        )
        self.rec.repo_id, self.rec.file = repo_id or None, path or None
        expected = hub._sign(sha, repo_id, path, expires)
        if not hmac.compare_digest(expected, signature):
            return _plain(403, "AccessDenied")
        if hub.reject_cdn_auth and "Authorization" in self.headers:
            return _plain(400, "InvalidArgument: Only one auth mechanism allowed")
        with hub._lock:
            blob = hub._lfs.get(sha)
        if blob is None:
            return _plain(404, "NoSuchKey")
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Disposition", _content_disposition(path or sha)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{sha}"'),
            ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]
        return self._ranged(blob, headers)

    def _ranged(self, blob: _Blob, headers: list[tuple[str, str]]) -> _Response:
        rng = _parse_range(self.headers.get("Range"), blob.size)
        if rng == "unsatisfiable":
            return _Response(416, [*headers, ("Content-Range", f"bytes */{blob.size}")])
        if rng is None:
            return _Response(200, headers, _Slice(blob, 0, blob.size))
        assert isinstance(rng, tuple)
        start, end = rng
        content_range = ("Content-Range", f"bytes {start}-{end}/{blob.size}")
        return _Response(206, [*headers, content_range], _Slice(blob, start, end - start + 1))

    def _respond(self, resp: _Response) -> None:
        hub, rec = self.server.hub, self.rec
        has_body = self.command != "HEAD" and resp.length > 0
        faultable = has_body and 200 <= resp.status < 300
        status = hub._take_faults(rec, ("status",), faultable).get("status")
        faults: dict[str, Fault] = {}
        if status is not None:
            rec.fault = "status"
            resp = _error(
                status.status, f"injected {status.status}", None, list(status.headers.items())
            )
            has_body = self.command != "HEAD"
        else:
            faults = hub._take_faults(rec, _BODY_FAULTS, faultable)
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
        if faults:
            self._write_faulty(resp.body, faults)
        elif isinstance(resp.body, _Slice) and resp.body.blob.path is not None:
            self._sendfile(resp.body)
        else:
            self._write_all(resp.body)

    def _write_all(self, body: bytes | _Slice) -> None:
        if isinstance(body, bytes):
            self.rec.body_bytes += len(body)
            self.wfile.write(body)
            return
        for chunk in body.chunks(_COPY_CHUNK, body.length):
            self.rec.body_bytes += len(chunk)
            self.wfile.write(chunk)

    def _sendfile(self, body: _Slice) -> None:
        assert body.blob.path is not None
        with open(body.blob.path, "rb") as f:
            self.rec.body_bytes += body.length
            try:
                self.connection.sendfile(f, body.start, body.length)
            except OSError:
                self.rec.body_bytes -= body.length - max(0, f.tell() - body.start)
                self.close_connection = True
                raise

    def _write_faulty(self, body: bytes | _Slice, faults: dict[str, Fault]) -> None:
        hub = self.server.hub
        if isinstance(body, bytes):
            body = _Slice(_Blob(len(body), "", data=body), 0, len(body))
        total = body.length
        stop_at = total
        drop, hang, corrupt, slow = (faults.get(k) for k in ("drop", "hang", "corrupt", "slow"))
        if drop is not None:
            stop_at = min(drop.after_bytes, max(total - 1, 0))
        if hang is not None:
            stop_at = min(stop_at, hang.after_bytes)
        flip = min(corrupt.after_bytes, total - 1) if corrupt is not None else -1
        rate = max(1, slow.bytes_per_sec) if slow is not None else 0
        size = max(1, min(_COPY_CHUNK, rate // 20)) if rate else _COPY_CHUNK
        sent, t0 = 0, time.monotonic()
        for chunk in body.chunks(size, stop_at):
            if sent <= flip < sent + len(chunk):
                buf = bytearray(chunk)
                buf[flip - sent] ^= 0xFF
                chunk = bytes(buf)
            self.rec.body_bytes += len(chunk)
            self.wfile.write(chunk)
            sent += len(chunk)
            if rate:
                delay = sent / rate - (time.monotonic() - t0)
                if delay > 0 and hub._stopping.wait(delay):
                    break
        if hang is not None:
            hub._stopping.wait(hang.seconds)
        if sent < total:
            self.close_connection = True


def _plain(status: int, message: str) -> _Response:
    return _Response(status, [("Content-Type", "text/plain; charset=utf-8")], message.encode())


def _expanded(entry: dict[str, Any], commit: _Commit) -> dict[str, Any]:
    out = dict(entry)
    out["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
    if out.get("type") == "file":
        out["securityFileStatus"] = {
            "status": "safe",
            "avScan": {"virusFound": False, "virusNames": None},
            "pickleImportScan": None,
        }
    return out


def _refs(repo: _Repo, include_prs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"branches": [], "converts": [], "tags": []}
    if include_prs:
        out["pullRequests"] = []
    for name, sha in sorted(repo.branches.items()):
        if name.startswith("refs/pr/"):
            if include_prs:
                out["pullRequests"].append({"name": name[8:], "ref": name, "targetCommit": sha})
            continue
        out["branches"].append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
    for name, sha in sorted(repo.tags.items()):
        out["tags"].append({"name": name, "ref": f"refs/tags/{name}", "targetCommit": sha})
    return out


def _commits(repo: _Repo, commit: _Commit | None) -> list[dict[str, Any]]:
    out = []
    while commit is not None:
        out.append(
            {
                "id": commit.sha,
                "title": commit.title,
                "message": "",
                "authors": [{"user": "preheat-testing", "avatar": None}],
                "date": commit.date,
            }
        )
        commit = repo.commits.get(commit.parent) if commit.parent else None
    return out


def _model_info(repo: _Repo, commit: _Commit, blobs: bool, expand: list[str]) -> dict[str, Any]:
    siblings = []
    for entry in commit.entries:
        if entry.get("type") != "file":
            continue
        sib: dict[str, Any] = {"rfilename": entry.get("path")}
        if blobs:
            sib["size"] = entry.get("size")
            sib["blobId"] = entry.get("oid")
            lfs = entry.get("lfs")
            if lfs:
                sib["lfs"] = {
                    "sha256": lfs["oid"],
                    "size": lfs["size"],
                    "pointerSize": lfs["pointerSize"],
                }
        siblings.append(sib)
    card = _card_data(commit)
    config = _config(commit)
    library = card.get("library_name") or ("transformers" if config else None)
    tags = [str(t) for t in _as_list(card.get("tags"))]
    if library and library not in tags:
        tags.insert(0, library)
    first = min(repo.commits.values(), key=lambda c: c.date)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.sha,
        "lastModified": commit.date,
        "createdAt": first.date,
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "library_name": library,
        "pipeline_tag": card.get("pipeline_tag"),
        "cardData": card or None,
        "config": config,
        "safetensors": _safetensors_summary(commit),
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(b.size for b in commit.files.values()),
    }
    info = {k: v for k, v in info.items() if v is not None}
    if expand:
        info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
    return info


def _small_text(commit: _Commit, path: str, limit: int = 1 << 20) -> str | None:
    blob = commit.files.get(path)
    if blob is None or blob.size > limit:
        return None
    return blob.read().decode("utf-8", "replace")


def _config(commit: _Commit) -> dict[str, Any] | None:
    text = _small_text(commit, "config.json")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in ("architectures", "model_type") if k in data}


def _card_data(commit: _Commit) -> dict[str, Any]:
    if "card" not in commit.cache:
        commit.cache["card"] = _front_matter(_small_text(commit, "README.md") or "")
    return commit.cache["card"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def _front_matter(text: str) -> dict[str, Any]:
    """The flat keys and simple lists of a README's YAML front matter."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data: dict[str, Any] = {}
    key = None
    for line in text[3:end].splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- ") and key is not None and line[:1] in (" ", "\t", "-"):
            if isinstance(data.get(key), list):
                data[key].append(_scalar(stripped[2:]))
            continue
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not value:
            data[key] = []
        elif value.startswith("[") and value.endswith("]"):
            data[key] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
        else:
            data[key] = _scalar(value)
    return {k: (v if v != [] else None) for k, v in data.items()}


def _safetensors_summary(commit: _Commit) -> dict[str, Any] | None:
    if "safetensors" in commit.cache:
        return commit.cache["safetensors"]
    params: dict[str, int] = {}
    for path, blob in commit.files.items():
        if not path.endswith(".safetensors") or blob.size < 8:
            continue
        try:
            (n,) = struct.unpack("<Q", blob.read(0, 8))
            if n > min(blob.size - 8, 100 << 20):
                continue
            header = json.loads(blob.read(8, n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in meta["shape"]:
                    count *= int(dim)
                params[meta["dtype"]] = params.get(meta["dtype"], 0) + count
        except (ValueError, KeyError, TypeError, AttributeError, OSError, struct.error):
            continue
    summary = {"parameters": params, "total": sum(params.values())} if params else None
    commit.cache["safetensors"] = summary
    return summary


def _repo_files(root: Path) -> dict[str, FileSource]:
    files: dict[str, FileSource] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            full = Path(dirpath, name)
            files[full.relative_to(root).as_posix()] = full
    return files


def serve_directory(server: HubServer, root: str | os.PathLike[str]) -> list[str]:
    """Add every `root/ORG/NAME` folder as a repo (its files on branch main)."""
    added = []
    for org in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for repo_dir in sorted(
            p for p in org.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            repo_id = f"{org.name}/{repo_dir.name}"
            server.add_repo(repo_id, _repo_files(repo_dir))
            added.append(repo_id)
    return added


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a directory of repos until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m preheat_testing.hub", description=__doc__)
    parser.add_argument("--serve", metavar="DIR", required=True, help="folder of ORG/NAME repos")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-host", default="localhost")
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], help="accept this token")
    args = parser.parse_args(argv)
    server = HubServer(
        host=args.host, port=args.port, cdn_host=args.cdn_host, cdn_port=args.cdn_port
    )
    for token in args.token:
        server.add_token(token)
    repos = serve_directory(server, args.serve)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with server:
        print(server.endpoint, flush=True)
        print(f"serving {len(repos)} repos: {', '.join(repos)}", file=sys.stderr, flush=True)
        while not done.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
