"""The `fs` fetcher: a model directory on a local or network file system (NFS, a mounted bucket).

    preheat prefetch model /mnt/models/Qwen3-0.6B --source fs --wait

A directory has no commits, so the snapshot pins one: a digest of the
listing (every file's path, size and mtime_ns). The same directory gives
the same version (and nothing is copied twice); any change to it gives a
new one. Bytes are hashed with sha256 on the way into the store, and a file
whose size or mtime changes while it is copied fails the run with
IntegrityError: nothing is published from a directory that is being written.

Imports only `preheat.api`, like every preheat plugin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable

from preheat.api import (
    Fetcher,
    IntegrityError,
    NotFound,
    ObjectWriter,
    PreheatError,
    RemoteFile,
    Snapshot,
    Source,
    check_path,
    hookimpl,
)

CHUNK = 8 << 20
# what the pinned "commit" looks like: 40 hex digits, as on the Hub
COMMIT_LENGTH = 40
SHORT_REVISION = 8


class FsFetcher(Fetcher):
    """Lists and copies the files of one model directory; one instance serves one run."""

    def __init__(self, *, token_key: str = "HF_TOKEN") -> None:
        # a file system needs no credentials: the key is accepted (every fetcher gets one) and unused
        self.token_key = token_key
        self._stats: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}

    # -- called in the submitting process, before any run exists

    @staticmethod
    def check_repo(repo: str) -> str:
        """The directory as preheat records it: an absolute, normalised path that exists now."""
        if not isinstance(repo, str) or not os.path.isabs(repo):
            raise PreheatError(
                f"invalid model directory {repo!r}: --source fs needs an absolute path, "
                "e.g. /mnt/models/Qwen3-0.6B"
            )
        path = os.path.normpath(repo)
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise NotFound(f"model directory {path} {what} (on {os.uname().nodename})")
        return path

    @staticmethod
    def default_artifact_name(repo: str) -> str:
        """The directory's name, lowercased, every character outside [a-z0-9_-] replaced by '-'."""
        name = os.path.basename(os.path.normpath(repo)).lower()
        name = re.sub(r"[^a-z0-9_-]", "-", name).strip("-_")[:128]
        return name or "model"

    # -- called in the worker, by the pipeline

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        """List every file under `repo` and pin the listing's digest as the commit.

        `revision` is None (the directory as it is now) or the commit of an
        earlier import, whole or its first 8+ characters: the directory must
        still be exactly as it was then.
        """
        root = self.check_repo(repo)
        stats = _listing(root)
        if not stats:
            raise NotFound(f"model directory {root} holds no files")
        commit = _commit(stats)
        if revision is not None and not (
            len(revision) >= SHORT_REVISION and commit.startswith(revision.lower())
        ):
            raise NotFound(
                f"{root} is no longer at revision {revision!r} (it is now {commit[:12]}): "
                "drop --revision to import it as it is now"
            )
        self._stats[(root, commit)] = stats
        files = tuple(RemoteFile(path=p, size=size) for p, (size, _) in sorted(stats.items()))
        return Snapshot(
            source=Source(type="fs", repo=root, revision=revision or "main", commit=commit),
            files=files,
        )

    def read(self, snapshot: Snapshot, path: str) -> bytes:
        size = self._expected(snapshot, path)[0]
        return self._pread(snapshot, path, 0, size)

    def read_range(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        self._expected(snapshot, path)
        return self._pread(snapshot, path, start, length)

    def download(
        self,
        snapshot: Snapshot,
        file: RemoteFile,
        writer: ObjectWriter,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> str:
        """Copy `file` into `writer` after its `offset`, hash it, and check the file did not change."""
        expected = self._expected(snapshot, file.path)
        digest = hashlib.sha256()
        offset = 0
        for chunk in writer.existing():  # bytes kept from an interrupted copy: hash them again
            digest.update(chunk)
            offset += len(chunk)
        if offset > file.size:
            raise IntegrityError(
                f"{file.path}: a resumed partial is larger than the file; run `preheat gc` and retry"
            )
        if offset:
            on_bytes(offset)
        path = self._path(snapshot, file.path)
        view = memoryview(bytearray(max(1, min(CHUNK, file.size - offset))))
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                _check_unchanged(file.path, expected, before, "since it was listed")
                f.seek(offset)
                while offset < file.size:
                    n = f.readinto(view[: min(len(view), file.size - offset)])
                    if not n:
                        break
                    writer.write(view[:n])
                    digest.update(view[:n])
                    offset += n
                    on_bytes(n)
                longer = bool(f.read(1))
            after = os.stat(path)  # the path again: catches a file replaced by a rename too
        except OSError as exc:
            raise PreheatError(f"cannot read {path}: {exc.strerror or exc}") from None
        if offset != file.size or longer:
            raise IntegrityError(
                f"{file.path} changed while it was copied (listed with {file.size} bytes); "
                "nothing was published: rerun once the directory is no longer being written"
            )
        _check_unchanged(file.path, expected, after, "while it was copied")
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise IntegrityError(
                f"{file.path} was replaced while it was copied; nothing was published: "
                "rerun once the directory is no longer being written"
            )
        return digest.hexdigest()

    # -- helpers

    def _path(self, snapshot: Snapshot, path: str) -> str:
        return os.path.join(snapshot.source.repo, *check_path(path).split("/"))

    def _expected(self, snapshot: Snapshot, path: str) -> tuple[int, int]:
        """(size, mtime_ns) of `path` when the snapshot was listed."""
        key = (snapshot.source.repo, snapshot.source.commit)
        stats = self._stats.get(key)
        if stats is None:  # a snapshot listed by another instance: the directory must be unchanged
            stats = _listing(snapshot.source.repo)
            if _commit(stats) != snapshot.source.commit:
                raise IntegrityError(
                    f"{snapshot.source.repo} changed since it was listed; rerun the import"
                )
            self._stats[key] = stats
        if path not in stats:
            raise NotFound(f"file {path!r} is not part of {snapshot.source.repo}")
        return stats[path]

    def _pread(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        full = self._path(snapshot, path)
        try:
            with open(full, "rb") as f:
                return os.pread(f.fileno(), max(length, 0), start)
        except OSError as exc:
            raise PreheatError(f"cannot read {full}: {exc.strerror or exc}") from None


def _listing(root: str) -> dict[str, tuple[int, int]]:
    """{relative posix path: (size, mtime_ns)} of every regular file under `root`.

    Directories whose name starts with a dot (`.git`, `.cache`, ...) are
    skipped; symbolic links are followed (a Hugging Face cache snapshot is
    made of them), each real directory visited once.
    """
    found: dict[str, tuple[int, int]] = {}
    seen: set[tuple[int, int]] = set()

    def fail(exc: OSError) -> None:
        raise PreheatError(f"cannot list {exc.filename}: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = check_path(os.path.relpath(full, root).replace(os.sep, "/"))
            try:
                st = os.stat(full)
            except FileNotFoundError:
                raise PreheatError(f"{full} is a broken symbolic link: fix or remove it") from None
            except OSError as exc:
                raise PreheatError(f"cannot read {full}: {exc.strerror or exc}") from None
            if stat.S_ISREG(st.st_mode):
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def _commit(stats: dict[str, tuple[int, int]]) -> str:
    """The listing's digest: what a commit is to a Hub repository."""
    listing = json.dumps(sorted((p, s, m) for p, (s, m) in stats.items()), separators=(",", ":"))
    return hashlib.sha256(listing.encode()).hexdigest()[:COMMIT_LENGTH]


def _check_unchanged(path: str, expected: tuple[int, int], st: os.stat_result, when: str) -> None:
    if (st.st_size, st.st_mtime_ns) != expected:
        raise IntegrityError(
            f"{path} changed {when} (size {expected[0]} -> {st.st_size}, "
            f"mtime_ns {expected[1]} -> {st.st_mtime_ns}); nothing was published: "
            "rerun once the directory is no longer being written"
        )


@hookimpl
def preheat_register_fetchers(register):
    register("fs", FsFetcher)
