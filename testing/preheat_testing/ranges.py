"""Helpers for ranged-write tests: spans of a byte string, and spans written by other processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from preheat.api import Span

# Opens the store by URL, as another machine would, and writes the spans given as
# INDEX:START:END, streaming each from the source file in chunks of CHUNK bytes.
WRITER = r"""
import sys
from preheat.api import Span, open_store

url, key, upload, source, chunk = sys.argv[1:6]
store = open_store(url)

def chunks(f, n):
    while n:
        block = f.read(min(n, int(chunk)))
        n -= len(block)
        yield block

with open(source, "rb") as f:
    for arg in sys.argv[6:]:
        index, start, end = map(int, arg.split(":"))
        f.seek(start)
        store.write_range(key, upload, Span(index, start, end), chunks(f, end - start))
store.close()
"""


def spans_of(size: int, part: int) -> list[Span]:
    """`size` bytes as spans of `part` bytes (the last one shorter)."""
    return [Span(i, s, min(s + part, size)) for i, s in enumerate(range(0, size, part))]


def piece(data: bytes, span: Span, chunk: int) -> Iterator[memoryview]:
    """The bytes of `span` of `data`, in views of `chunk` bytes."""
    view = memoryview(data)[span.start : span.end]
    return (view[i : i + chunk] for i in range(0, len(view), chunk))


def write_elsewhere(
    url: str, key: str, upload: str, source: Path, spans: Sequence[Span], *, chunk: int
) -> subprocess.Popen:
    """A process that opens the store at `url` and writes `spans` of `source` into `upload`."""
    args = [f"{s.index}:{s.start}:{s.end}" for s in spans]
    cmd = [sys.executable, "-c", WRITER, url, key, upload, str(source), str(chunk), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
