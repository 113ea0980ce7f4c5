"""The loopback hub's data: blobs (bytes or files on disk), commits, repos and their digests."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
_HASH_CHUNK = 8 << 20
_BASE_TIME = 1_704_067_200

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


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


@dataclass(frozen=True)
class Blob:
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


def make_blob(
    repo_path: str,
    source: FileSource,
    patterns: Sequence[str],
    threshold: int,
    sha256: str | None,
) -> Blob:
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
        return Blob(size, git_blob_sha1(lfs_pointer(sha256, size)), data, path, sha256)
    oid = git_blob_sha1(data) if data is not None else _file_digest(path, "gitsha1")
    return Blob(size, oid, data, path)


def file_entry(path: str, blob: Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.sha256 is not None:
        pointer = len(lfs_pointer(blob.sha256, blob.size))
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": pointer}
    return entry


def parent_dir(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    date: str
    files: dict[str, Blob]
    entries: list[dict[str, Any]]
    by_path: dict[str, dict[str, Any]]
    dirs: frozenset[str]
    cache: dict[str, Any] = field(default_factory=dict)


def build_commit(
    repo_id: str,
    files: dict[str, Blob],
    extra: Sequence[Mapping[str, Any]],
    parent: str | None,
    title: str,
    index: int,
) -> Commit:
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
    entries = [file_entry(p, b) for p, b in files.items()]
    for d in dirs:
        inner = "\n".join(f"{p} {oid}" for p, oid, _ in listing if p.startswith(d + "/"))
        oid = hashlib.sha1(inner.encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
    entries.sort(key=lambda e: e["path"])
    entries.extend(dict(e) for e in extra)
    by_path = {str(e.get("path")): e for e in entries}
    date = iso_time(_BASE_TIME + 60 * index)
    return Commit(sha, parent, title, date, files, entries, by_path, frozenset(dirs))


@dataclass
class Repo:
    repo_id: str
    default_branch: str
    gated: bool | str
    private: bool
    patterns: tuple[str, ...]
    threshold: int
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            name = rev[len(prefix) :] if rev.startswith(prefix) else rev
            if name in refs:
                return self.commits[refs[name]]
        return self.commits.get(rev.lower()) if len(rev) == 40 else None
