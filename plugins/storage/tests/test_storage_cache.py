"""The node cache against a real S3 server: `preheat resolve --cache` from moto.

A model is prefetched into moto; a second machine (its own PREHEAT_HOME) reads the bucket
through a logging HTTP proxy, so every S3 request the resolves make is counted. The first
`resolve --cache` GETs each artifact object once; the second is a cache hit and GETs no
artifact object at all, not even a HEAD (only the alias and the manifest).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.s3

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class LoggingProxy:
    """A plain HTTP/1.1 forwarder to `upstream` that records (method, path, status, body bytes)."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.requests: list[tuple[str, str, int, int]] = []
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                with lock:
                    proxy.requests.append((self.command, self.path, response.status, len(data)))
                head = self.command == "HEAD"
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoggingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def artifact_gets(self, since: int = 0) -> dict[str, int]:
        """Body bytes per artifact object served by GETs since request number `since`."""
        out: dict[str, int] = {}
        for method, path, status, n in self.requests[since:]:
            key = path.split("?", 1)[0]
            if method == "GET" and "/artifacts/" in key and status in (200, 206):
                name = key.split("/artifacts/", 1)[1].split("/", 2)[2]
                out[name] = out.get(name, 0) + n
        return out


def test_a_cache_hit_reads_no_artifact_object_from_s3(e2e, tmp_path):
    server = e2e.server("moto")
    repo, model = e2e.repo("llama_multipart")
    url = e2e.url(server, "node-cache")
    summary = e2e.machine(server).cli(
        "prefetch", "hf-model", repo, "--store", url, "--wait", "--json"
    )
    name = summary.ok().json["artifact"]["name"]

    with LoggingProxy(server.endpoint) as proxy:
        node = e2e.machine(server, AWS_ENDPOINT_URL=proxy.endpoint)
        args = ("resolve", name, "--store", url, "--cache", "--json")
        first = node.cli(*args).ok().json
        path = Path(first["path"])
        assert first["cache"]["hit"] is False and path.is_relative_to(node.home / "cache")
        on_disk = {
            p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()
        }
        assert on_disk == model.files
        assert proxy.artifact_gets() == {p: len(b) for p, b in model.files.items()}

        mark = len(proxy.requests)
        again = node.cli(*args).ok().json
        assert again["path"] == first["path"] and again["cache"]["hit"] is True
        assert proxy.artifact_gets(mark) == {}, "a cache hit read artifact bytes from S3"
        # not even a HEAD of an artifact object: only the alias, the manifest (and a listing)
        keys = [p.split("?", 1)[0] for _, p, _, _ in proxy.requests[mark:]]
        assert any("/manifests/" in k for k in keys), keys
        assert not [k for k in keys if "/artifacts/" in k], keys

        # damage one cached file: only that object is fetched again
        weight = sorted(p for p in model.files if p.endswith(".safetensors"))[0]
        (path / weight).write_bytes(b"\0" * len(model.files[weight]))
        mark = len(proxy.requests)
        repaired = node.cli(*args).ok().json
        assert repaired["cache"]["hit"] is False and repaired["cache"]["filled_files"] == 1
        assert proxy.artifact_gets(mark) == {weight: len(model.files[weight])}
        assert (
            hashlib.sha256((path / weight).read_bytes()).hexdigest()
            == hashlib.sha256(model.files[weight]).hexdigest()
        )

        listed = node.cli("cache", "list", "--json").ok().json
        assert [(e["name"], e["store"], e["status"]) for e in listed["entries"]] == [
            (name, url, "ready")
        ]
        assert json.dumps(listed).count(url) == 1
