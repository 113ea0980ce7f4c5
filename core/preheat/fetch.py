"""The fetcher interface: list a model repository at one commit and stream its files.

Fetcher plugins register a factory through `preheat_register_fetchers` (a Fetcher
subclass is the natural one); before any run exists the submitting process checks the
request with the factory's `check_repo` and `default_artifact_name`. The pipeline then
calls `snapshot` once (which validates the request and pins the commit), reads small
files and byte ranges for validation, then streams each selected file into a store
writer with `download`.
"""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Callable, Iterable

import attrs

from preheat import names
from preheat.errors import PreheatError
from preheat.models import Source
from preheat.store import ObjectWriter


@attrs.frozen
class RemoteFile:
    """One file of a repository snapshot with what is known to verify it."""

    path: str
    size: int
    sha256: str | None = None
    git_oid: str | None = None


@attrs.frozen
class Snapshot:
    """A repository pinned to one commit, with its full recursive file listing."""

    source: Source
    files: tuple[RemoteFile, ...]

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


class SourceOffline(PreheatError):
    """The source cannot be reached by configuration (e.g. HF_HUB_OFFLINE); stored artifacts may still serve."""


class IntegrityError(PreheatError):
    """Downloaded bytes do not match the digest the source published."""


class Fetcher(abc.ABC):
    """Lists and streams the files of a model repository; one instance serves one run.

    Made by the registered factory in the process that runs the pipeline.
    `snapshot` is called first, once, on the pipeline's thread; `read`,
    `read_range` and `download` may then be called from several threads at
    once (headers are read and files downloaded on thread pools). Raise
    `PreheatError` (or `NotFound`, `SourceOffline`, `IntegrityError`) with a
    one-line message; any other exception is reported as an internal error.
    Never put a credential in a message: `register_secret` it.
    """

    @abc.abstractmethod
    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        """Pin `revision` to one commit and list every file, before any weight byte moves.

        :param repo: the reference `check_repo` returned.
        :param revision: a branch, tag or commit; None means the default branch.
        :returns: the snapshot every later call receives; each `RemoteFile`
            carries its size and what is known to verify it (sha256, git oid).
        :raises NotFound: no such repository or revision.
        :raises SourceOffline: the source cannot be reached by configuration
            (stored artifacts built from the same request are then reused).
        :raises PreheatError: access refused, unsafe file names (use
            `check_path`), or anything else the user must fix.
        """

    @abc.abstractmethod
    def read(self, snapshot: Snapshot, path: str) -> bytes:
        """A small file of the snapshot, whole (config.json, README.md)."""

    @abc.abstractmethod
    def read_range(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        """Bytes `start`..`start+length` of a file (fewer only at its end), e.g. a safetensors header."""

    @abc.abstractmethod
    def download(
        self,
        snapshot: Snapshot,
        file: RemoteFile,
        writer: ObjectWriter,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> str:
        """Stream `file` into `writer`, verify it and return its sha256.

        :param writer: already holds `writer.offset` bytes of an interrupted
            attempt (re-hash them from `writer.existing()`, then append the
            rest); the caller commits or aborts it.
        :param on_bytes: call with each chunk's size; it raises `Cancelled`
            when the run is cancelled (let it propagate).
        :returns: the sha256 of the whole file, hex.
        :raises IntegrityError: the bytes do not match what the source
            published (the caller discards the partial bytes).
        :raises PreheatError: the transfer failed after retrying transient
            failures (resume by range where the source allows it).
        """

    def close(self) -> None:
        """Release connections."""

    # Checks of a request, made before any fetcher exists. They are static so that the
    # registered factory can answer them: register the Fetcher subclass itself
    # (`register("fs", FsFetcher)`, constructed as `FsFetcher(token_key=...)`) and override them.

    @staticmethod
    def check_repo(repo: str) -> str:
        """Validate a repository reference as the user typed it.

        Called in the submitting process (the CLI or the Python API) before any run
        exists; it must not touch the network or the store.

        :param repo: the reference given to `--source NAME REPO` / `model(repo, source=NAME)`.
        :return: the reference to fetch (`repo` itself, or a normalized form of it).
        :raises PreheatError: to refuse it, with a one-line message that says what to
            type instead.

        The default accepts any non-empty string without control characters.
        """
        if not isinstance(repo, str) or not repo.strip():
            raise PreheatError("give a repository to fetch: the repository reference is empty")
        if any(ord(c) < 32 or ord(c) == 127 for c in repo):
            raise PreheatError(
                f"invalid repository reference {repo!r}: it holds control characters; "
                "type it without tabs or newlines"
            )
        return repo

    @staticmethod
    def default_artifact_name(repo: str) -> str:
        """The artifact name a request publishes under when it gives none.

        Called in the submitting process after `check_repo`, before any run exists; it
        must not touch the network or the store. A name that is not a valid artifact name
        is refused with a message asking for `--artifact-name`.

        :param repo: the reference `check_repo` returned.
        :return: the default artifact name.

        The default is `preheat.names.default_artifact_name` of the last `/`-separated part
        of `repo` (trailing slashes ignored): lowercased, every character outside
        `[a-z0-9_-]` replaced by `-`.
        """
        return names.default_artifact_name(repo.rstrip("/").rsplit("/", 1)[-1])


def check_path(path: str) -> str:
    """Refuse file names that could escape the artifact directory."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
        or (len(path) > 1 and path[1] == ":")
    ):
        raise PreheatError(
            f"the source listed an unsafe file name {path!r}; refusing to download "
            "(nothing was written): report it to the repository owner"
        )
    return path


def select(
    files: Iterable[RemoteFile], include: Iterable[str], exclude: Iterable[str]
) -> list[RemoteFile]:
    """Files matching any `include` glob (all when none) and no `exclude` glob."""
    include, exclude = list(include), list(exclude)

    def match(path: str, pattern: str) -> bool:
        if pattern.endswith("/"):
            pattern += "*"
        return fnmatch.fnmatch(path, pattern)

    return [
        f
        for f in files
        if (not include or any(match(f.path, p) for p in include))
        and not any(match(f.path, p) for p in exclude)
    ]
