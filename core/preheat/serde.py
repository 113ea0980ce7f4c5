"""JSON (de)serialisation of preheat's attrs records through one cattrs converter."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs

from preheat.shard_config import ShardRequest

T = TypeVar("T")

converter = cattrs.Converter(omit_if_default=False, forbid_extra_keys=False)
# a shard request crosses processes as plain data and is parsed again only here
converter.register_unstructure_hook(ShardRequest, ShardRequest.to_dict)
converter.register_structure_hook(ShardRequest, lambda data, _: ShardRequest.from_record(data))


def to_dict(obj: Any) -> Any:
    """An attrs record as plain JSON-ready data."""
    return converter.unstructure(obj)


def from_dict(data: Any, cls: type[T]) -> T:
    """Plain data back into an attrs record."""
    return converter.structure(data, cls)


def dumps(obj: Any) -> bytes:
    """An attrs record (or plain data) as stable, readable JSON bytes."""
    return (json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n").encode()


def loads(data: bytes | str, cls: type[T]) -> T:
    """JSON bytes into an attrs record."""
    return from_dict(json.loads(data), cls)
