"""One file over several connections: byte ranges fetched in parallel, written in file order.

CDNs cap each connection's throughput and refuse single requests for the very
largest files, so a file larger than one range (`PREHEAT_RANGE_SIZE`, 16 MiB by
default) is fetched as ranges. The thread that downloads the file (the *head*)
writes every byte in order into the sink (the store writer and the digests),
so the writer's offset is always the resume point and the sha256 is computed
over the whole file as it lands. Helper connections fetch ranges ahead of the
head into buffers, which the head writes once it gets there; when no helper is
free the head fetches its next range itself, straight into the sink.

The limits are the fetcher's, shared by every file of a run: at most
`PREHEAT_CONNECTIONS` (8) requests in flight at once, heads first, and at most
128 MiB of range buffers. A head never waits for a buffer and a helper never
waits for anything but its connection, so files cannot starve each other.

Every request resumes by range after a dropped connection and is retried with
backoff (the policy's); a server that ignores Range (200 for a ranged request)
gets one plain stream from the bytes already written, and a file whose plain
GET is refused (the Hub's bridge refuses files above 50 GB in one request) is
fetched by ranges.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from preheat.errors import PreheatError
from preheat.ranged_job import REFUSED, FileDownload, NoRanges, Policy, Refused, Sink, retriable
from preheat.ranged_parts import HEAD_SPAN, POLL, READ, RangedDownload
from preheat.transfer import BufferPool, Remote, Slots

__all__ = [
    "BUFFER_MEMORY",
    "CONNECTIONS",
    "HEAD_SPAN",
    "POLL",
    "RANGE_SIZE",
    "READ",
    "REFUSED",
    "Limits",
    "MiB",
    "Policy",
    "Sink",
    "fetch",
    "retriable",
]

MiB = 1 << 20
RANGE_SIZE = 16 * MiB
CONNECTIONS = 8
BUFFER_MEMORY = 128 * MiB


def _size(text: str | None, default: int) -> int:
    if not text:
        return default
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise PreheatError(
            f"invalid PREHEAT_RANGE_SIZE {text!r}: use a byte count such as 16777216 or 16M"
        ) from None
    return min(max(value, 64 << 10), 64 * MiB)


def connections_from_env() -> int:
    """`PREHEAT_CONNECTIONS`: requests in flight at once per process (default 8)."""
    raw = os.environ.get("PREHEAT_CONNECTIONS", "")
    try:
        return max(1, int(raw)) if raw.strip() else CONNECTIONS
    except ValueError:
        raise PreheatError(
            f"invalid PREHEAT_CONNECTIONS {raw!r}: use a whole number such as 8"
        ) from None


class Limits:
    """The connection slots, range buffers and helper threads one fetcher shares across files."""

    def __init__(self, connections: int = CONNECTIONS, range_size: int = RANGE_SIZE) -> None:
        self.connections = max(1, connections)
        self.range_size = range_size
        self.slots = Slots(self.connections)
        self.buffers = max(1, min(self.connections, BUFFER_MEMORY // range_size))
        self.pool = BufferPool(self.buffers, range_size)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Limits:
        """`PREHEAT_CONNECTIONS` and `PREHEAT_RANGE_SIZE` (bytes, or with K/M/G; 64 KiB to 64 MiB)."""
        return cls(connections_from_env(), _size(os.environ.get("PREHEAT_RANGE_SIZE"), RANGE_SIZE))

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if len(self._threads) < self.connections:
                t = threading.Thread(
                    target=self._work, name=f"preheat-range-{len(self._threads)}", daemon=True
                )
                t.start()
                self._threads.append(t)
        self._queue.put(fn)

    def _work(self) -> None:
        from preheat.transfer import close_connections

        while (fn := self._queue.get()) is not None:
            fn()
        close_connections()

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)


def fetch(
    remote: Remote,
    size: int,
    offset: int,
    sink: Sink,
    *,
    path: str,
    limits: Limits,
    policy: Policy,
    on_bytes: Callable[[int], None],
) -> None:
    """Write bytes `offset`..`size` of `remote` into `sink`, in order.

    `on_bytes(n)` follows every write (and is called with 0 while waiting, so it may raise
    to cancel). Raises the policy's errors, IntegrityError for a body longer than `size`.
    """
    job = FileDownload(remote, size, path, sink, limits, policy, on_bytes)
    if offset >= size:
        return
    if size - offset > limits.range_size:
        try:
            RangedDownload(job).run(offset)
            return
        except NoRanges as exc:
            offset = exc.written
    try:
        job.single(offset)
    except Refused:
        try:
            RangedDownload(job).run(offset)
        except NoRanges:
            raise PreheatError(
                f"download of {path} failed: the server refuses to send it whole and ignores "
                "byte ranges"
            ) from None
