"""The sharder interface.

An engine plugin registers a sharder and its argument class through
`preheat_register_sharders`. The pipeline asks the sharder to `plan` from
config.json and the safetensors headers alone, before any weight byte is
fetched (this is where every refusal happens), then to `shard` a stored,
verified unsharded artifact into a new draft version.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from preheat.errors import PreheatError
from preheat.metadata import SafetensorsHeader, parse_safetensors_header
from preheat.models import FileEntry, Manifest, Resources, ServingFacts, ShardSpec
from preheat.store import Store


@attrs.frozen
class ModelView:
    """What a sharder may look at before download: config, file list and safetensors headers.

    `config` is config.json parsed (empty when the repository has none),
    `files` the selected files (sha256 empty where the source gives none),
    `headers` each safetensors file's parsed header by path, `serving` the
    facts derived from both.
    """

    config: dict[str, Any]
    files: tuple[FileEntry, ...]
    headers: dict[str, SafetensorsHeader]
    serving: ServingFacts


@attrs.frozen
class ShardPlan:
    """A validated shard job: what the manifest will record and how big the output is.

    `spec` goes into the manifest as is; `output_bytes` (every file the
    shard writes) is checked against the store's free space before any
    download; `weight_bytes_per_rank` feeds the serving facts; `data` is the
    sharder's own, handed back to `Sharder.shard` untouched (same process).
    """

    spec: ShardSpec
    output_bytes: int
    weight_bytes_per_rank: int | None = None
    data: Any = None


class SourceArtifact:
    """Read access to a stored, verified artifact (the input of a shard job).

    Paths are the artifact's file paths as listed in `manifest.files`. Every
    method may be called from several threads.
    """

    def __init__(self, store: Store, prefix: str, manifest: Manifest) -> None:
        self.store = store
        self.prefix = prefix
        self.manifest = manifest
        self._headers: dict[str, SafetensorsHeader] | None = None

    def key(self, path: str) -> str:
        """The store key of the artifact file `path`."""
        return self.prefix + path

    def read(self, path: str) -> bytes:
        """A whole (small) file; PreheatError when it is missing."""
        found = self.store.read(self.key(path))
        if found is None:
            raise PreheatError(f"{path} is missing from {self.manifest.ref}")
        return found[0]

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """`length` bytes of `path` from `start` (fewer only at the end)."""
        return self.store.read_range(self.key(path), start, length)

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several (start, length) ranges of `path`, in order, fetched concurrently where the store can."""
        return self.store.read_ranges(self.key(path), ranges)

    def local_path(self, path: str) -> Path | None:
        """A local file to read `path` from directly (mmap, pread), or None for a remote store."""
        return self.store.local_path(self.key(path))

    def config(self) -> dict[str, Any]:
        """config.json, parsed."""
        return json.loads(self.read("config.json"))

    def headers(self) -> dict[str, SafetensorsHeader]:
        """Parsed headers of every safetensors file of the artifact."""
        if self._headers is None:
            self._headers = {
                f.path: parse_safetensors_header(
                    lambda s, n, p=f.path: self.read_range(p, s, n), f.path
                )
                for f in self.manifest.files
                if f.path.endswith(".safetensors")
            }
        return self._headers


class Sharder(abc.ABC):
    """Pre-shards a stored model for one engine's tensor-parallel loader.

    A new sharder is made per run by the registered factory, in the process
    that runs the pipeline; `plan` and `shard` are called once each, on the
    pipeline's thread, `shard` only after `plan` succeeded and the unsharded
    artifact is stored and verified.
    """

    #: Set before `plan` when the run writes the parts through a `ShardPool`, which may
    #: call `shard_part` on other machines. Checks that only the machine writing a part
    #: can answer (an engine and its GPUs) then belong in `shard_part`, not in `plan`.
    parts_elsewhere: bool = False

    @abc.abstractmethod
    def plan(self, model: ModelView, args: Any, resources: Resources) -> ShardPlan:
        """Validate everything that can be checked before download and size the output.

        :param model: config, file list and safetensors headers, read by
            range before any weight byte is fetched.
        :param args: the validated instance of the engine's args class.
        :param resources: the run's requests (e.g. `accelerator` to check
            that weights per GPU fit).
        :returns: the plan; its `spec` goes into the manifest.
        :raises PreheatError: to refuse, with a one-line message saying what
            to change; nothing has been downloaded yet.
        """

    @abc.abstractmethod
    def shard(
        self,
        plan: ShardPlan,
        source: SourceArtifact,
        write: Callable[[str, Any], FileEntry],
        progress: Callable[[int], None],
    ) -> list[FileEntry]:
        """Write every file of the sharded artifact.

        :param plan: what `plan` returned.
        :param source: the stored, verified unsharded artifact.
        :param write: ``write(path, chunks)`` streams an iterable of bytes
            into the new version under `path`, hashing as it goes, and
            returns its `FileEntry`; callable from several threads, one file
            per call.
        :param progress: ``progress(n)`` after `n` more output bytes; it
            raises `Cancelled` once the run was cancelled (let it propagate).
        :returns: the entries `write` returned, one per file (config and
            tokenizer files included: copy those the engine needs).
        :raises PreheatError: the shard failed; the version stays invisible
            and a rerun starts it again.
        """

    def parts(self, plan: ShardPlan) -> list[str]:
        """Names of the independent parts of `plan`'s output, for writing them apart.

        An executor that spreads work (a `ShardPool`) writes each part with
        `shard_part`, in other processes or machines; together the parts
        must write exactly the files `shard` writes. Called on the
        pipeline's thread after `plan`.

        :returns: the part names (e.g. one per rank), or [] (the default)
            when only `shard` can write the output.
        """
        return []

    def shard_part(
        self,
        plan: ShardPlan,
        source: SourceArtifact,
        part: str,
        write: Callable[[str, Any], FileEntry],
        progress: Callable[[int], None],
    ) -> list[FileEntry]:
        """Write the files of one part named by `parts`, in any process that sees the store.

        Called on a sharder made fresh from the registry, with a copy of the
        plan (so `plan.data` must pickle); parameters and errors as for
        `shard`. A part may be written again after a failure: it rewrites
        the same files.

        :returns: the entries of the part's files.
        """
        raise NotImplementedError(f"{type(self).__name__} does not write parts apart")
