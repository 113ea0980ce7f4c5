"""Writing an artifact into a Hugging Face hub cache, so that `HF_HUB_OFFLINE=1` tools find it by repo id.

The layout is huggingface_hub's own, under its original repo id and commit:

    DIR/models--ORG--NAME/blobs/ETAG               each file's bytes, named by the hub's etag
    DIR/models--ORG--NAME/snapshots/COMMIT/PATH    relative symlinks into blobs/
    DIR/models--ORG--NAME/refs/REVISION            the commit, when the revision is a branch or tag
    DIR/.locks/models--ORG--NAME/ETAG.lock         held while a blob is written (as huggingface_hub does)

DIR defaults to `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. Other
snapshots of the repo are kept; blobs are shared by etag; `refs/REVISION` moves to this commit.

ETAG is the manifest's `FileEntry.etag` when it was recorded. For older manifests it is the
sha256 for files the hub keeps in LFS, taken to be those matching the hub's default
`.gitattributes` patterns (`*.safetensors`, `*.bin`, `*.pt`, `*.gguf`, ...) or over 10 MiB, and
the git blob id (sha1 of `blob SIZE\\0` + content) for the rest. A wrong guess only makes an
online `hf_hub_download` fetch that file again; offline lookups go through the snapshot.

Blobs are hard links to a local store's files where the file system allows (same device),
else copies verified against the manifest's sha256.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.models import FileEntry, Manifest

# the hub's default .gitattributes LFS patterns, plus *.gguf
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "saved_model/**/*", "*.tar.*", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
    "*tfevents*",
)  # fmt: skip
LFS_THRESHOLD = 10 * 1024 * 1024


@attrs.frozen
class HfCacheExport:
    """Where an artifact was written in a hub cache, and how its blobs got there."""

    dir: Path
    repo: str
    commit: str
    revision: str | None
    snapshot: Path
    linked: int = 0
    copied: int = 0
    reused: int = 0


def default_hub_cache() -> Path:
    """huggingface_hub's cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def repo_folder(repo: str) -> str:
    """`models--ORG--NAME`, the folder of a model repo in the hub cache."""
    return "models--" + repo.replace("/", "--")


def is_lfs_like(path: str, size: int) -> bool:
    """Whether the hub keeps a file in LFS by default (its .gitattributes patterns, or > 10 MiB)."""
    name = path.rsplit("/", 1)[-1]
    return size > LFS_THRESHOLD or any(
        fnmatch.fnmatchcase(path if "/" in p else name, p) for p in LFS_PATTERNS
    )


def git_blob_id(path: Path) -> str:
    """The git blob id of a file: sha1 of `blob SIZE\\0` and its bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's id
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def known_etag(entry: FileEntry) -> str | None:
    """The hub etag of a file when it needs no reading: recorded, or the sha256 of an LFS file."""
    if entry.etag:
        return entry.etag
    return entry.sha256 if is_lfs_like(entry.path, entry.size) else None


@contextlib.contextmanager
def _blob_lock(path: Path) -> Iterator[None]:
    """flock on huggingface_hub's own lock file of a blob (its FileLock takes the same lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_error(exc: OSError, where: Path) -> PreheatError:
    if exc.errno == errno.ENOSPC:
        return PreheatError(f"no space left on the device holding the Hugging Face cache {where}")
    return PreheatError(
        f"cannot write the Hugging Face cache {where}: {exc.strerror or exc}; pass a writable "
        "directory to --hf-cache-dir or set HF_HUB_CACHE / HF_HOME"
    )


def _replace_symlink(link: Path, target: str) -> None:
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.preheat-link")
    os.symlink(target, tmp)
    try:
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _place(blob: Path, locks: Path, source: Path, size: int, *, link: bool) -> str:
    """Put `source` at `blob` (hard link or move); 'reused' when an intact blob is already there."""
    with _blob_lock(locks / f"{blob.name}.lock"):
        with contextlib.suppress(OSError):
            if blob.stat().st_size == size:
                return "reused"
        tmp = blob.with_name(f"{blob.name}.{uuid.uuid4().hex[:8]}.preheat-partial")
        if link:
            os.link(source, tmp)
            os.replace(tmp, blob)
            return "linked"
        os.replace(source, blob)
        return "copied"


def export_hf_cache(
    catalog: Catalog, manifest: Manifest, hub_dir: str | os.PathLike[str] | None = None
) -> HfCacheExport:
    """Write `manifest`'s artifact into the hub cache `hub_dir` under its repo id and commit.

    :raises PreheatError: the artifact is pre-sharded (not the repo's own files), has no
        source commit, a stored file is damaged, or the cache is not writable.
    """
    from preheat.names import validate_repo_id
    from preheat.resolve import materialize

    source = manifest.source
    if manifest.shard is not None:
        raise PreheatError(
            f"{manifest.ref} is pre-sharded for {manifest.shard.engine} "
            f"tp={manifest.shard.tensor_parallel_size}: its files are not those of {source.repo}, "
            "so it cannot go into a Hugging Face cache; use --to DIR or --cache"
            + (f", or --hf-cache with {manifest.lineage}" if manifest.lineage else "")
        )
    if not source.commit:
        raise PreheatError(
            f"{manifest.ref} records no source commit: it cannot go into an HF cache"
        )
    validate_repo_id(source.repo)
    root = Path(hub_dir).expanduser().absolute() if hub_dir else default_hub_cache().absolute()
    repo_dir = root / repo_folder(source.repo)
    blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / source.commit
    locks = root / ".locks" / repo_folder(source.repo)
    try:
        for d in (blobs, snapshot, repo_dir / "refs", locks):
            d.mkdir(parents=True, exist_ok=True)
        probe = repo_dir / f".preheat-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _write_error(exc, root) from None

    prefix = catalog.artifact_prefix(manifest.name, manifest.version)
    local = catalog.store.local_path(prefix.rstrip("/"))
    etags: dict[str, str] = {}
    counts = {"linked": 0, "copied": 0, "reused": 0}
    to_copy: list[FileEntry] = []
    try:
        for entry in manifest.files:
            etag = known_etag(entry)
            blob = None if etag is None else blobs / etag
            if blob is not None and blob.is_file() and blob.stat().st_size == entry.size:
                etags[entry.path] = etag
                counts["reused"] += 1
                continue
            src = None if local is None else Path(local) / entry.path
            if src is None or not src.is_file() or src.stat().st_size != entry.size:
                to_copy.append(entry)
                continue
            etag = etag or git_blob_id(src)
            try:
                counts[_place(blobs / etag, locks, src, entry.size, link=True)] += 1
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                to_copy.append(entry)  # another device, or links not allowed: copy instead
                continue
            etags[entry.path] = etag
        if to_copy:
            staging = repo_dir / f".preheat-{uuid.uuid4().hex[:12]}"
            try:
                # a verified copy (sha256 of every byte) beside the blobs, then moved in
                materialize(catalog, attrs.evolve(manifest, files=tuple(to_copy)), staging)
                for entry in to_copy:
                    path = staging / entry.path
                    etag = known_etag(entry) or git_blob_id(path)
                    counts[_place(blobs / etag, locks, path, entry.size, link=False)] += 1
                    etags[entry.path] = etag
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        for entry in manifest.files:
            link = snapshot / entry.path
            _replace_symlink(link, os.path.relpath(blobs / etags[entry.path], link.parent))
        revision = source.revision
        parts = (revision or "").split("/")
        if revision and revision != source.commit and not {"", ".", ".."} & set(parts):
            ref = repo_dir / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(source.commit)
            os.replace(tmp, ref)
    except OSError as exc:
        raise _write_error(exc, root) from None
    return HfCacheExport(
        dir=root,
        repo=source.repo,
        commit=source.commit,
        revision=source.revision,
        snapshot=snapshot,
        **counts,
    )
