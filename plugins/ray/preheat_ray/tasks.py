"""What the Ray pools share: task reports with their log lines, a ledger actor, the wait loop.

Every task body runs under `captured()`, which keeps its `preheat` log lines
for the driver to put into the run's log, and returns a `Report`. Tasks tell a
`Ledger` actor what they finished as they go (bytes moved, files verified,
spans written); the driver drains it several times a second, and a retried
task asks it what is already done. `drive` waits for a set of task refs,
draining the ledger and handing each finished task's result on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from preheat.api import Cancelled, PreheatError, Transferred

log = logging.getLogger("preheat")

MAX_RETRIES = 3
POLL = 0.25
PROGRESS_EVERY = 0.5


@attrs.frozen
class Report:
    """What one task did, for the run's log; `value` is the task's own result."""

    node: str
    pid: int
    what: str
    bytes: int
    seconds: float
    lines: tuple[str, ...] = ()
    value: Any = None

    def log(self) -> None:
        """Write the task's log lines and a summary line into the run's log."""
        for line in self.lines:
            log.info("[ray %s pid %d] %s", self.node, self.pid, line)
        log.info(
            "[ray %s pid %d] task done: %s, %s in %.1fs",
            self.node,
            self.pid,
            self.what,
            _human(self.bytes),
            self.seconds,
        )


def _human(n: int) -> str:
    from preheat.api import human_bytes

    return human_bytes(n)


class _Capture(logging.Handler):
    """Keeps a task's log lines so the driver can put them in the run's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def captured() -> Iterator[Callable[..., Report]]:
    """Run a task body; the yielded `report(what, bytes, value)` makes its `Report`."""
    started = time.monotonic()
    capture = _Capture()
    logger = logging.getLogger("preheat")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)

    def report(what: str, n: int, value: Any = None) -> Report:
        return Report(
            node=node_ip(),
            pid=os.getpid(),
            what=what,
            bytes=n,
            seconds=time.monotonic() - started,
            lines=tuple(capture.lines),
            value=value,
        )

    try:
        yield report
    finally:
        logger.removeHandler(capture)


def node_ip() -> str:
    """This node's address as Ray knows it."""
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        return socket.gethostname()


class Ledger:
    """What the tasks of one step finished, shared by the driver and its tasks (a Ray actor)."""

    def __init__(self) -> None:
        self.results: dict[str, Transferred] = {}
        self.fresh: list[Transferred] = []
        self.bytes: list[tuple[str, int]] = []
        self.spans: set[tuple[str, int]] = set()

    def moved(self, path: str, n: int) -> None:
        self.bytes.append((path, n))

    def add(self, result: Transferred) -> None:
        if result.entry.path not in self.results:
            self.results[result.entry.path] = result
            self.fresh.append(result)

    def known(self, paths: list[str]) -> dict[str, Transferred]:
        return {p: self.results[p] for p in paths if p in self.results}

    def span_done(self, path: str, index: int) -> None:
        self.spans.add((path, index))

    def spans_done(self, path: str) -> set[int]:
        return {i for p, i in self.spans if p == path}

    def take(self) -> tuple[list[tuple[str, int]], list[Transferred]]:
        """What landed since the last call: bytes moved per file, then files verified."""
        moved, self.bytes = self.bytes, []
        fresh, self.fresh = self.fresh, []
        return moved, fresh


class Meter:
    """Batches a task's byte counts into a ledger call about twice a second."""

    def __init__(self, ledger) -> None:
        self._lock = threading.Lock()
        self.ledger = ledger
        self.path: str | None = None
        self.pending = 0
        self.at = time.monotonic()

    def flush(self) -> None:
        if self.pending:
            self.ledger.moved.remote(self.path or "", self.pending)
        self.pending, self.at = 0, time.monotonic()

    def add(self, path: str, n: int) -> None:
        with self._lock:
            if path != self.path:
                self.flush()
                self.path = path
            self.pending += n
            if time.monotonic() - self.at > PROGRESS_EVERY:
                self.flush()


def able_nodes(need) -> list[str]:
    """IDs of the alive nodes that can run a task asking for `need`, in address order."""
    import ray

    from preheat_ray.cluster import Node, fits

    nodes = sorted(
        (n for n in ray.nodes() if n.get("Alive")),
        key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"]),
    )
    offered = [
        Node(n.get("NodeManagerAddress", ""), n["NodeID"], dict(n.get("Resources", {})))
        for n in nodes
    ]
    return [n.node_id for n in offered if fits(n, need)]


def placed(nodes: list[str], i: int):
    """The scheduling strategy of the `i`-th of several tasks: round-robin over `nodes` (a soft
    affinity: Ray would otherwise pack short tasks onto the worker it already leased)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not nodes:
        return "SPREAD"
    return NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True)


def cause(exc: BaseException) -> BaseException:
    """The exception a task raised, without Ray's wrapper."""
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, BaseException) else exc


def task_error(run: str, what: str, exc: BaseException, retries: int) -> BaseException:
    """The run's error for a failed task: its own error, or one line saying it died."""
    from ray.exceptions import RayTaskError

    inner = cause(exc)
    if isinstance(inner, PreheatError | Cancelled):
        return inner
    if isinstance(exc, RayTaskError):
        return PreheatError(f"a {what} task of run {run} failed: {type(inner).__name__}: {inner}")
    return PreheatError(
        f"a {what} task of run {run} died {retries + 1} times ({type(exc).__name__}); "
        "rerun the same prefetch to resume from the verified files"
    )


def drive(
    refs: dict,
    *,
    run: str,
    drain: Callable[[], None] = lambda: None,
    cancelled: Callable[[], bool] | None = None,
    retries: int = MAX_RETRIES,
    poll: float = POLL,
) -> None:
    """Wait for every task in `refs` (ref -> what it is), draining the ledger as they run.

    Each `what` has a `kind` (for messages) and `finished(report)`, which handles its
    task's report and returns more tasks to wait for (ref -> what). The first failure or
    a cancel stops every task still running.
    """
    import ray

    cancelled = cancelled or (lambda: False)
    pending = dict(refs)
    try:
        while pending:
            if cancelled():
                raise Cancelled(f"run {run} was cancelled")
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll)
            drain()
            for ref in ready:
                what = pending.pop(ref)
                try:
                    report: Report = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - re-raised as the task's own
                    raise task_error(run, getattr(what, "kind", "Ray"), exc, retries) from None
                report.log()
                pending.update(what.finished(report))
        drain()
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(ref, force=True)
        raise
