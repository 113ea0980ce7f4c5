"""The loopback hub's request handler: routing of both origins (hub API, resolve, CDN) and the servers."""

from __future__ import annotations

import hmac
import http.server
import itertools
import json
import re
import socket
import socketserver
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from preheat_testing.hub_data import Blob, Commit, Repo, parent_dir
from preheat_testing.hub_http import (
    BodyWriter,
    Response,
    Slice,
    content_disposition,
    error,
    flag,
    json_answer,
    parse_range,
    plain,
    redact_headers,
    split_repo,
    split_rev,
)
from preheat_testing.hub_log import RequestRecord
from preheat_testing.hub_payloads import commits, expanded, model_info, refs

if TYPE_CHECKING:
    from preheat_testing.hub import HubServer

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_connections = itertools.count(1)


class Handler(BodyWriter, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "preheat-testing-hub/1"
    sys_version = ""
    timeout = 120
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_GET

    def setup(self) -> None:
        super().setup()
        self.connection_id = next(_connections)

    def _dispatch(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        rec = RequestRecord(
            origin=self.server.origin,
            method=self.command,
            path=unquote(split.path),
            query=split.query,
            headers=redact_headers(self.headers),
            connection=self.connection_id,
            started=time.monotonic(),
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
            resp = error(500, f"{type(exc).__name__}: {exc}")
        try:
            self._respond(resp)
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        finally:
            rec.finished = time.monotonic()

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
    ) -> tuple[Repo | None, Response | None]:
        hub = self.server.hub
        token, valid = self._token()
        if not valid:
            return None, error(401, INVALID_CREDENTIALS)
        with hub._lock:
            repo = hub._repos.get(repo_id)
        allowed = hub._token_allows(token, repo_id)
        if repo is None or (repo.private and not allowed):
            return None, error(
                401 if token is None else 404, "Repository not found", "RepoNotFound"
            )
        if files and repo.gated and not allowed:
            if token is None:
                msg = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be"
                    " authenticated to access it. Please log in."
                )
                return None, error(401, msg, "GatedRepo")
            msg = (
                f"Access to model {repo_id} is restricted and you are not in the authorized list."
                f" Visit https://huggingface.co/{repo_id} to ask for access."
            )
            return None, error(403, msg, "GatedRepo")
        return repo, None

    def _commit(self, repo: Repo, rev: str) -> tuple[Commit | None, Response | None]:
        self.rec.revision = rev
        with self.server.hub._lock:
            commit = repo.resolve(rev)
        if commit is None:
            return None, error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit, None

    def _route(self, raw_path: str, query: dict[str, list[str]], body: bytes) -> Response:
        segs = raw_path.split("/")[1:]
        if raw_path == "/api/whoami-v2":
            return self._whoami()
        if segs[:2] == ["api", "models"]:
            return self._api(segs[2:], query, body)
        repo_id, rest = split_repo(segs, ("resolve",))
        if rest and self.command in ("GET", "HEAD"):
            return self._resolve(repo_id, rest[1:])
        return error(404, "Not Found")

    def _whoami(self) -> Response:
        token, valid = self._token()
        if token is None or not valid:
            return error(401, INVALID_CREDENTIALS)
        role = {"displayName": "preheat-testing", "role": "read"}
        return json_answer(
            {"type": "user", "name": "preheat-testing", "auth": {"accessToken": role}}
        )

    def _api(self, segs: list[str], query: dict[str, list[str]], body: bytes) -> Response:
        keywords = ("revision", "tree", "paths-info", "refs", "commits")
        repo_id, rest = split_repo(segs, keywords)
        self.rec.repo_id = repo_id
        kind = rest[0] if rest else None
        wanted = "POST" if kind == "paths-info" else "GET"
        if self.command not in (wanted, "HEAD") or (
            kind == "paths-info" and self.command == "HEAD"
        ):
            return error(405, "Method Not Allowed")
        repo, err = self._open_repo(repo_id)
        if err is not None:
            return err
        assert repo is not None
        if kind == "refs":
            return json_answer(refs(repo, flag(query, "include_prs")))
        rev, tail = split_rev(rest[1:]) if rest else (repo.default_branch, [])
        if kind == "revision":
            rev = "/".join([rev, *map(unquote, tail)])
        commit, err = self._commit(repo, rev)
        if err is not None:
            return err
        assert commit is not None
        if kind is None or kind == "revision":
            expand = query.get("expand") or query.get("expand[]") or []
            return json_answer(model_info(repo, commit, flag(query, "blobs"), expand))
        if kind == "commits":
            return json_answer(commits(repo, commit))
        if kind == "paths-info":
            return self._paths_info(commit, body)
        return self._tree(raw_tree_path=tail, commit=commit, query=query)

    def _tree(
        self, raw_tree_path: list[str], commit: Commit, query: dict[str, list[str]]
    ) -> Response:
        hub = self.server.hub
        path = unquote("/".join(raw_tree_path)).strip("/")
        if path and path not in commit.dirs:
            return error(404, f"{path} does not exist on this revision", "EntryNotFound")
        recursive, expand = flag(query, "recursive"), flag(query, "expand")
        prefix = path + "/" if path else ""
        items = []
        for entry in commit.entries:
            p = str(entry.get("path", ""))
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if recursive or "/" not in rest or (not prefix and parent_dir(p) not in commit.dirs):
                items.append(entry)
        size = max(1, hub.expand_page_size if expand else hub.page_size)
        try:
            start = int((query.get("cursor") or ["0"])[-1] or 0)
        except ValueError:
            return error(400, "Invalid cursor")
        page = items[start : start + size]
        if expand:
            page = [expanded(e, commit) for e in page]
        headers = []
        if start + size < len(items):
            params = {k: v[-1] for k, v in query.items() if k != "cursor"}
            params["cursor"] = str(start + size)
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
            url = f"http://{host}{urlsplit(self.path).path}?{urlencode(params)}"
            headers.append(("Link", f'<{url}>; rel="next"'))
        return json_answer(page, headers)

    def _paths_info(self, commit: Commit, body: bytes) -> Response:
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype:
            data = json.loads(body or b"{}")
            paths, expand = list(data.get("paths") or []), bool(data.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), flag(form, "expand")
        out = []
        for p in paths:
            entry = commit.by_path.get(p.strip("/")) if p.strip("/") else None
            if entry is not None:
                out.append(expanded(entry, commit) if expand else entry)
        return json_answer(out)

    def _resolve(self, repo_id: str, segs: list[str]) -> Response:
        hub = self.server.hub
        rev, file_segs = split_rev(segs)
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
            return error(404, "Entry not found", "EntryNotFound", [("X-Repo-Commit", commit.sha)])
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
            return Response(302, headers, f"Found. Redirecting to {location}".encode())
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Disposition", content_disposition(path)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{blob.oid}"'),
            ("X-Repo-Commit", commit.sha),
        ]
        return self._ranged(blob, headers)

    def _cdn(self, raw_path: str, query: dict[str, list[str]]) -> Response:
        hub = self.server.hub
        if self.command not in ("GET", "HEAD"):
            return plain(405, "MethodNotAllowed")
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})", raw_path)
        if m is None:
            return plain(404, "NoSuchKey")
        sha = m[1]
        repo_id, path = (query.get("repo") or [""])[-1], (query.get("file") or [""])[-1]
        expires, signature = (
            (query.get("Expires") or [""])[-1],
            (query.get("Signature") or [""])[-1],
        )
        self.rec.repo_id, self.rec.file = repo_id or None, path or None
        expected = hub._sign(sha, repo_id, path, expires)
        if not hmac.compare_digest(expected, signature):
            return plain(403, "AccessDenied")
        if not expires.isdigit() or int(expires) < time.time():
            return plain(403, "AccessDenied: Request has expired")
        if hub.reject_cdn_auth and "Authorization" in self.headers:
            return plain(400, "InvalidArgument: Only one auth mechanism allowed")
        with hub._lock:
            blob = hub._lfs.get(sha)
        if blob is None:
            return plain(404, "NoSuchKey")
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Disposition", content_disposition(path or sha)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{sha}"'),
            ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]
        return self._ranged(blob, headers)

    def _ranged(self, blob: Blob, headers: list[tuple[str, str]]) -> Response:
        hub = self.server.hub
        rng = parse_range(self.headers.get("Range"), blob.size)
        if rng == "unsatisfiable":
            return Response(416, [*headers, ("Content-Range", f"bytes */{blob.size}")])
        if rng is None:
            limit = hub.max_unranged_bytes
            if limit is not None and blob.size > limit and self.command == "GET":
                return plain(
                    hub.unranged_status,
                    f"The file is too large ({blob.size} bytes) to be served in a single request;"
                    " request byte ranges instead (Range: bytes=START-END)",
                )
            return Response(200, headers, Slice(blob, 0, blob.size))
        assert isinstance(rng, tuple)
        start, end = rng
        content_range = ("Content-Range", f"bytes {start}-{end}/{blob.size}")
        return Response(206, [*headers, content_range], Slice(blob, start, end - start + 1))


class Server(http.server.ThreadingHTTPServer):
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
        super().__init__(address, Handler)

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
