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
    """What a sharder may look at before download: config, file list and safetensors headers."""

    config: dict[str, Any]
    files: tuple[FileEntry, ...]
    headers: dict[str, SafetensorsHeader]
    serving: ServingFacts


@attrs.frozen
class ShardPlan:
    """A validated shard job: what the manifest will record and how big the output is."""

    spec: ShardSpec
    output_bytes: int
    weight_bytes_per_rank: int | None = None
    data: Any = None


class SourceArtifact:
    """Read access to a stored, verified artifact (the input of a shard job)."""

    def __init__(self, store: Store, prefix: str, manifest: Manifest) -> None:
        self.store = store
        self.prefix = prefix
        self.manifest = manifest
        self._headers: dict[str, SafetensorsHeader] | None = None

    def key(self, path: str) -> str:
        return self.prefix + path

    def read(self, path: str) -> bytes:
        found = self.store.read(self.key(path))
        if found is None:
            raise PreheatError(f"{path} is missing from {self.manifest.ref}")
        return found[0]

    def read_range(self, path: str, start: int, length: int) -> bytes:
        return self.store.read_range(self.key(path), start, length)

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        return self.store.read_ranges(self.key(path), ranges)

    def local_path(self, path: str) -> Path | None:
        return self.store.local_path(self.key(path))

    def config(self) -> dict[str, Any]:
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
    """Pre-shards a stored model for one engine's tensor-parallel loader."""

    @abc.abstractmethod
    def plan(self, model: ModelView, args: Any, resources: Resources) -> ShardPlan:
        """Validate everything that can be checked before download; raise PreheatError to refuse."""

    @abc.abstractmethod
    def shard(
        self,
        plan: ShardPlan,
        source: SourceArtifact,
        write: Callable[[str, Any], FileEntry],
        progress: Callable[[int], None],
    ) -> list[FileEntry]:
        """Write the sharded files with `write(path, chunks)` (an iterable of bytes); return their entries."""
