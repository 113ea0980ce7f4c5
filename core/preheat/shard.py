"""The sharder interface and shard configs.

An engine plugin registers a sharder and its argument class through
`preheat_register_sharders`. The pipeline asks the sharder to `plan` from
config.json and the safetensors headers alone, before any weight byte is
fetched (this is where every refusal happens), then to `shard` a stored,
verified unsharded artifact into a new draft version.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from preheat.errors import PreheatError
from preheat.metadata import SafetensorsHeader, parse_safetensors_header
from preheat.models import FileEntry, Manifest, Resources, ServingFacts, ShardSpec
from preheat.plugins import get_registry
from preheat.store import Store


@attrs.frozen
class ShardConfig:
    """Which engine to pre-shard for and its arguments (an instance of the engine's args class, or a dict)."""

    engine: str
    args: Any = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> ShardConfig:
        """Load `engine:` and `args:` from a YAML file."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise PreheatError(f"cannot read shard config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise PreheatError(
                f"shard config {path} is not valid YAML{where}: fix the syntax"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("engine"), str):
            raise PreheatError(
                f"shard config {path} must be a mapping with `engine: NAME` and `args: {{...}}`"
            )
        unknown = set(data) - {"engine", "args"}
        if unknown:
            raise PreheatError(
                f"shard config {path}: unknown key(s) {', '.join(sorted(unknown))}; use engine and args"
            )
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise PreheatError(f"shard config {path}: `args` must be a mapping")
        return cls(engine=data["engine"], args=args)


def sharder_registration(engine: str):
    """The registration of the sharder for `engine`, or an error saying what to install."""
    reg = get_registry().get("sharders", engine)
    if reg is None:
        known = ", ".join(get_registry().names("sharders")) or "none installed"
        raise PreheatError(
            f"no sharder for engine {engine!r} (available: {known}); install preheat-{engine} or fix `engine:`"
        )
    return reg


_args_converter = cattrs.Converter(forbid_extra_keys=True)


def normalize_shard_config(config: ShardConfig | Mapping[str, Any] | str | Path) -> tuple[str, Any]:
    """(engine, args instance) from a ShardConfig, a plain dict or a YAML path; validates every field."""
    if isinstance(config, (str, Path)):
        config = ShardConfig.from_yaml(config)
    elif isinstance(config, Mapping):
        config = ShardConfig(engine=config.get("engine"), args=config.get("args") or {})
    reg = sharder_registration(config.engine)
    args_class = reg.extra[0]
    args = config.args
    if args is None:
        args = args_class()
    elif isinstance(args, Mapping):
        allowed = [f.name for f in attrs.fields(args_class)]
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise PreheatError(
                f"{config.engine} shard args: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
            )
        try:
            args = args_class(**args)
        except PreheatError as exc:
            raise PreheatError(f"{config.engine} shard args: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise PreheatError(f"{config.engine} shard args: {exc}") from None
    elif not isinstance(args, args_class):
        raise PreheatError(
            f"shard args for engine {config.engine!r} must be a {args_class.__name__}, not {type(args).__name__}"
        )
    return config.engine, args


def shard_request(engine: str, args: Any) -> dict[str, Any]:
    """A shard request as plain data, as kept in run records and hashed into versions."""
    return {"engine": engine, "args": _args_converter.unstructure(args)}


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
