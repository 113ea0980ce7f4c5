"""A Hugging Face Hub on loopback, with a CDN origin for LFS blobs and fault injection.

`HubServer` answers the endpoints huggingface_hub calls (model info, tree, paths-info,
refs, commits, resolve) on `http://127.0.0.1:P1` and serves LFS blobs, after a 302, from a
second origin `http://localhost:P2` as the real hub does with its CDN. It never advertises
Xet. Run `python -m preheat_testing.hub --serve DIR` to serve every `DIR/ORG/NAME` folder.

The server is split by job: `hub_data` (blobs, commits, repos, digests), `hub_log` (faults
and the request log), `hub_payloads` (the JSON it answers), `hub_http` (answers, ranges,
sending bodies) and `hub_routes` (the request handler); this module is the server itself
and re-exports the public names.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from preheat_testing.hub_data import (
    DEFAULT_LFS_PATTERNS,
    LFS_THRESHOLD,
    Blob,
    FileSource,
    Repo,
    build_commit,
    file_sha256,
    git_blob_sha1,
    lfs_pointer,
    make_blob,
)
from preheat_testing.hub_http import resolves_to_ipv6_loopback, url_host
from preheat_testing.hub_log import FAULT_KINDS, Fault, PathStats, RequestLog, RequestRecord
from preheat_testing.hub_routes import INVALID_CREDENTIALS, Server

__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "FAULT_KINDS",
    "INVALID_CREDENTIALS",
    "LFS_THRESHOLD",
    "UNRANGED_STATUS",
    "Fault",
    "FileSource",
    "HubServer",
    "PathStats",
    "RequestRecord",
    "file_sha256",
    "git_blob_sha1",
    "lfs_pointer",
    "main",
    "serve_directory",
]
# What the Hub's CDN answers a plain (unranged) GET of a file too large to serve in one
# request: 400 Bad Request, as reported for whole-file GETs of very large files in
# huggingface/huggingface_hub#4330 (ranged GETs of the same files work).
UNRANGED_STATUS = 400


class HubServer(RequestLog):
    """A loopback Hugging Face Hub plus a CDN origin, in one object.

    `endpoint` is `http://127.0.0.1:P1`; LFS resolves 302 to `cdn_endpoint`
    (`http://localhost:P2`), a different origin. Thread-safe: repos, tokens and faults
    may be changed while serving. Use as a context manager or call `start()`/`stop()`.

    Like a CDN, it can cap each TCP connection's throughput
    (`per_connection_bytes_per_sec`: every body on either origin is paced to that rate),
    refuse a plain GET of a file larger than `max_unranged_bytes` (answered
    `unranged_status`, 400 as the Hub's CDN does above its single-request limit; GETs
    with a Range still work), and sign CDN URLs that expire `cdn_url_ttl` seconds after
    the redirect (answered 403 after that). These three may be changed while serving.
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
        per_connection_bytes_per_sec: int | None = None,
        max_unranged_bytes: int | None = None,
        unranged_status: int = UNRANGED_STATUS,
        cdn_url_ttl: float = 3600.0,
    ) -> None:
        self.host = host
        self.port = port
        self.cdn_host = cdn_host
        self.cdn_port = cdn_port
        self.page_size = page_size
        self.expand_page_size = expand_page_size
        self.lfs_threshold = lfs_threshold
        self.reject_cdn_auth = False
        self.per_connection_bytes_per_sec = per_connection_bytes_per_sec
        self.max_unranged_bytes = max_unranged_bytes
        self.unranged_status = unranged_status
        self.cdn_url_ttl = cdn_url_ttl
        self.endpoint = ""
        self.cdn_endpoint = ""
        self._lock = threading.RLock()
        self._repos: dict[str, Repo] = {}
        self._lfs: dict[str, Blob] = {}
        self._tokens: dict[str, frozenset[str] | None] = {}
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._conns: set[socket.socket] = set()
        self._servers: list[Server] = []
        self._stopping = threading.Event()
        self._secret = secrets.token_bytes(16)
        self._commit_index = 0

    def start(self) -> HubServer:
        """Bind both origins and serve them on daemon threads."""
        if self._servers:
            return self
        self._stopping.clear()
        hub = Server((self.host, self.port), self, "hub")
        cdn = Server((self.host, self.cdn_port), self, "cdn")
        servers = [hub, cdn]
        cdn_port = cdn.server_address[1]
        if self.host == "127.0.0.1" and resolves_to_ipv6_loopback(self.cdn_host):
            with contextlib.suppress(OSError):
                servers.append(Server(("::1", cdn_port), self, "cdn", socket.AF_INET6))
        for srv in servers:
            name = f"hub-{srv.origin}-{srv.server_address[1]}"
            threading.Thread(target=srv.serve_forever, args=(0.05,), name=name, daemon=True).start()
        self._servers = servers
        self.endpoint = f"http://{url_host(self.host)}:{hub.server_address[1]}"
        self.cdn_endpoint = f"http://{url_host(self.cdn_host)}:{cdn_port}"
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
        repo = Repo(
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
            p: make_blob(p, src, repo.patterns, repo.threshold, digests.get(p))
            for p, src in files.items()
        }
        with self._lock:
            if parent is True:
                parent = repo.branches.get(branch) if branch else None
            self._commit_index += 1
            index = self._commit_index
            title = title or f"commit {len(repo.commits) + 1}"
            commit = build_commit(repo_id, blobs, extra_entries, parent or None, title, index)
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

    def _repo(self, repo_id: str) -> Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r}")
        return repo

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
        expires = str(int(time.time() + self.cdn_url_ttl))
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
    parser.add_argument(
        "--per-connection-bytes-per-sec", type=int, default=None, help="cap each connection"
    )
    parser.add_argument(
        "--max-unranged-bytes", type=int, default=None, help="refuse larger plain GETs"
    )
    args = parser.parse_args(argv)
    server = HubServer(
        host=args.host,
        port=args.port,
        cdn_host=args.cdn_host,
        cdn_port=args.cdn_port,
        per_connection_bytes_per_sec=args.per_connection_bytes_per_sec,
        max_unranged_bytes=args.max_unranged_bytes,
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
