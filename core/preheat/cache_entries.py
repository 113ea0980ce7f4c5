"""What the node cache records: its entries as listed, their keys, and each file's stat record."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import attrs

from preheat.models import FileEntry

STATE_SCHEMA = 1


@attrs.frozen
class CacheEntry:
    """One entry of the node cache as listed: what it holds, how big, when last used."""

    key: str
    path: Path
    store: str | None
    name: str | None
    version: str | None
    bytes: int
    files: int
    complete: bool
    used: float
    filled: str | None = None
    in_use: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.name else self.key

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "store": self.store,
            "path": str(self.path),
            "bytes": self.bytes,
            "files": self.files,
            "status": "ready" if self.complete else ("filling" if self.in_use else "incomplete"),
            "in_use": self.in_use,
            "used": iso_time(self.used),
            "filled": self.filled,
        }


@attrs.frozen
class PruneResult:
    """What `prune` removed, and the entries it would have removed but that are in use."""

    removed: tuple[CacheEntry, ...]
    in_use: tuple[CacheEntry, ...]
    bytes: int


def iso_time(ts: float) -> str:
    """`ts` (seconds since the epoch) as an ISO 8601 UTC time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def entry_key(store_url: str, name: str, version: str) -> str:
    """The entry of one artifact version from one store."""
    return f"{name}--{version}--{hashlib.sha256(store_url.encode()).hexdigest()[:16]}"


def stat_record(path: Path, entry: FileEntry) -> dict:
    """What `unchanged` later compares: the verified file's sha256 and its stat now."""
    st = os.stat(path)
    return {
        "sha256": entry.sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def unchanged(path: Path, record: dict | None, entry: FileEntry) -> bool:
    """The file is as it was when verified (by stat alone: no reads)."""
    if not record or record.get("sha256") != entry.sha256 or record.get("size") != entry.size:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
        record["size"],
        record["mtime_ns"],
        record["ctime_ns"],
        record["ino"],
    )
