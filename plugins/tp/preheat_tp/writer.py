"""Streaming safetensors output: a header computed up front, then tensors one at a time."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from .dtypes import ITEMSIZE

EXTRA_ITEMSIZE = {"F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype."""
    return ITEMSIZE.get(dtype) or EXTRA_ITEMSIZE[dtype]


@dataclass(frozen=True)
class Entry:
    """One tensor of an output file: its name, dtype, shape and a function producing its raw bytes in chunks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], Iterable[bytes | memoryview]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


def header(entries: Sequence[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors header (length prefix included), padded to 8 bytes as safetensors does."""
    table: dict[str, object] = {}
    if metadata:
        table["__metadata__"] = metadata
    offset = 0
    for e in entries:
        table[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(table, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def file_size(entries: Sequence[Entry], metadata: dict[str, str] | None = None) -> int:
    """Bytes of the whole file."""
    return len(header(entries, metadata)) + sum(e.nbytes for e in entries)


def chunks(
    entries: Sequence[Entry], metadata: dict[str, str] | None = None
) -> Iterator[bytes | memoryview]:
    """The file's bytes: the header, then each tensor produced only when it is reached."""
    yield header(entries, metadata)
    for e in entries:
        produced = 0
        for chunk in e.produce():
            produced += len(chunk)
            yield chunk
        if produced != e.nbytes:
            raise ValueError(f"{e.name}: produced {produced} bytes, expected {e.nbytes}")


def split_parts(entries: Sequence[Entry], max_size: int) -> list[list[Entry]]:
    """Group tensors into parts, starting a new part when the running size would exceed `max_size`."""
    parts: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if parts[-1] and size + e.nbytes > max_size:
            parts.append([])
            size = 0
        parts[-1].append(e)
        size += e.nbytes
    return parts
