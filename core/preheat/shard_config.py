"""Shard configs as users write them (`ShardConfig`, YAML, dicts) and as preheat carries them (`ShardRequest`).

A shard config is parsed once, at the edge (CLI, Python API, YAML), into a
`ShardRequest`: the engine name and a validated instance of the args class
its plugin registered. Run records keep its plain-data form (`to_dict()`),
read back by `ShardRequest.from_record` in the process that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from preheat.errors import PreheatError
from preheat.plugins import get_registry


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


def args_class_for(engine: Any) -> type:
    """The args class the plugin for `engine` registered, or an error with the `pip install` line."""
    reg = get_registry().get("sharders", engine) if isinstance(engine, str) else None
    if reg is None:
        known = ", ".join(get_registry().names("sharders")) or "none installed"
        raise PreheatError(
            f"no sharder for engine {engine!r} (available: {known}): "
            f"pip install preheat-{engine}, or fix `engine:`"
        )
    assert reg.args_class is not None
    return reg.args_class


_converter: Any = None


def _args_converter() -> Any:
    """The converter of args classes (cattrs is imported when a shard config is first used)."""
    global _converter
    if _converter is None:
        import cattrs

        _converter = cattrs.Converter(forbid_extra_keys=True)
    return _converter


@attrs.frozen
class ShardRequest:
    """A parsed shard config: the engine and a validated instance of its args class.

    `available` is False only for a request read back from a run record whose
    engine plugin is not installed here; `args` is then the recorded plain
    data and `require()` says what to install.
    """

    engine: str
    args: Any
    available: bool = True

    @classmethod
    def parse(
        cls, config: ShardRequest | ShardConfig | Mapping[str, Any] | str | Path
    ) -> ShardRequest:
        """Parse and validate a shard config given as a ShardConfig, a dict or a YAML path."""
        if isinstance(config, ShardRequest):
            return config
        if isinstance(config, (str, Path)):
            config = ShardConfig.from_yaml(config)
        elif isinstance(config, Mapping):
            config = ShardConfig(engine=config.get("engine"), args=config.get("args") or {})
        elif not isinstance(config, ShardConfig):
            raise PreheatError(
                f"shard_config must be a ShardConfig, a dict or a YAML path, not {type(config).__name__}"
            )
        args_class = args_class_for(config.engine)
        return cls(config.engine, _build_args(config.engine, args_class, config.args))

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> ShardRequest:
        """The request kept in a run record; unavailable (not an error) when its plugin is missing."""
        engine = data.get("engine")
        if get_registry().get("sharders", engine) is None:
            return cls(str(engine), dict(data.get("args") or {}), available=False)
        return cls.parse(data)

    def require(self) -> ShardRequest:
        """This request, or the error naming the plugin to install when its engine is missing."""
        if not self.available:
            args_class_for(self.engine)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form kept in run records and manifests and hashed into versions."""
        if not self.available:
            return {"engine": self.engine, "args": dict(self.args)}
        return {"engine": self.engine, "args": _args_converter().unstructure(self.args)}


def _build_args(engine: str, args_class: type, args: Any) -> Any:
    if args is None:
        return args_class()
    if isinstance(args, args_class):
        return args
    if not isinstance(args, Mapping):
        raise PreheatError(
            f"shard args for engine {engine!r} must be a {args_class.__name__}, not {type(args).__name__}"
        )
    allowed = [f.name for f in attrs.fields(args_class)]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise PreheatError(
            f"{engine} shard args: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
        )
    try:
        return args_class(**args)
    except (PreheatError, ValueError, TypeError) as exc:
        raise PreheatError(f"{engine} shard args: {exc}") from None


def to_shard_request(value: Any) -> ShardRequest | None:
    """`PrefetchRequest.shard`'s converter: anything `ShardRequest.parse` takes, or None."""
    return None if value is None else ShardRequest.parse(value)
