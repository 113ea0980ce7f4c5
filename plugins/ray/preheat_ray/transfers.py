"""`RayTransfers`: the files of one artifact streamed by Ray tasks spread over the nodes.

The driver (the run's job) keeps the lease, the journal, the manifest and the
publish; tasks only move bytes:

1. a preflight task on every alive node checks that the secret the request names
   is set there (it answers yes or no, never the value) and that the node's disk
   offers the run's `ephemeral_storage`;
2. the files are split into one batch per task slot (largest first, balanced by
   bytes); each batch is one task (`scheduling_strategy="SPREAD"`, the run's `cpu`
   and `mem` as `num_cpus` and `memory`, `max_retries`) that builds its own fetcher
   from the request (`preheat.api.run_transfers`), streams its files one after the
   other into the draft's keys, each verified by the fetcher;
3. each verified file is reported at once to a ledger actor; the driver drains it
   several times a second and journals every file (a rerun after the driver died
   keeps them), and a retried task skips the files the ledger already holds.

A task that dies (its worker killed, its node lost) is retried by Ray and resumes
after the verified files; a failure of a task's own stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence

import attrs

from preheat.api import (
    Cancelled,
    PreheatError,
    Transfer,
    TransferJob,
    TransferPool,
    Transferred,
    human_bytes,
    parse_quantity,
    run_transfers,
)
from preheat_ray.cluster import requests

log = logging.getLogger("preheat")

MAX_RETRIES = 3
POLL = 0.25
PROGRESS_EVERY = 0.5


@attrs.frozen
class Report:
    """What one transfer task did, for the run's log."""

    node: str
    pid: int
    files: int
    skipped: int
    bytes: int
    seconds: float
    lines: tuple[str, ...] = ()


@attrs.frozen
class Probe:
    """What the preflight found on one node (never a secret's value)."""

    node: str
    secret_set: bool
    disk_free: int


def batches(transfers: Sequence[Transfer], n: int) -> list[list[Transfer]]:
    """`transfers` in `n` batches of about equal bytes (largest first onto the lightest)."""
    n = max(1, min(n, len(transfers)))
    bins: list[list[Transfer]] = [[] for _ in range(n)]
    loads = [0] * n
    for t in sorted(transfers, key=lambda t: (-t.file.size, t.file.path)):
        i = loads.index(min(loads))
        bins[i].append(t)
        loads[i] += t.file.size
    return [b for b in bins if b]


class _Capture(logging.Handler):
    """Keeps a task's log lines so the driver can put them in the run's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _node_ip() -> str:
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        return socket.gethostname()


def fetch_batch(job: TransferJob, batch: list[Transfer], ledger) -> Report:
    """Body of a transfer task: stream `batch` into the store, reporting each file to `ledger`."""
    import ray

    started = time.monotonic()
    capture = _Capture()
    logger = logging.getLogger("preheat")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        known = ray.get(ledger.known.remote([t.file.path for t in batch]))
        todo = [t for t in batch if t.file.path not in known]
        if known:
            log.info("resuming after %d files already verified", len(known))
        moved = 0
        pending = {"path": None, "bytes": 0, "at": time.monotonic()}

        def flush() -> None:
            if pending["bytes"]:
                ledger.moved.remote(pending["path"], pending["bytes"])
            pending.update(bytes=0, at=time.monotonic())

        def on_bytes(path: str, n: int) -> None:  # live progress, about twice a second
            if path != pending["path"]:
                flush()
                pending["path"] = path
            pending["bytes"] += n
            if time.monotonic() - pending["at"] > PROGRESS_EVERY:
                flush()

        for result in run_transfers(job, todo, on_bytes=on_bytes):
            flush()
            ray.get(ledger.add.remote(result))
            moved += result.entry.size
            log.info("verified %s (%d bytes)", result.entry.path, result.entry.size)
        return Report(
            node=_node_ip(),
            pid=os.getpid(),
            files=len(todo),
            skipped=len(batch) - len(todo),
            bytes=moved,
            seconds=time.monotonic() - started,
            lines=tuple(capture.lines),
        )
    finally:
        logger.removeHandler(capture)


def probe_node(token_key: str) -> Probe:
    """Body of the preflight task: is the secret set here, how much disk is free."""
    value = os.environ.get(token_key, "")
    return Probe(
        node=_node_ip(),
        secret_set=bool(value.strip()),
        disk_free=shutil.disk_usage(tempfile.gettempdir()).free,
    )


class Ledger:
    """The verified files of one artifact's transfers, shared by the driver and its tasks."""

    def __init__(self) -> None:
        self.results: dict[str, Transferred] = {}
        self.fresh: list[Transferred] = []
        self.bytes: list[tuple[str, int]] = []

    def moved(self, path: str, n: int) -> None:
        self.bytes.append((path, n))

    def add(self, result: Transferred) -> None:
        if result.entry.path not in self.results:
            self.results[result.entry.path] = result
            self.fresh.append(result)

    def known(self, paths: list[str]) -> dict[str, Transferred]:
        return {p: self.results[p] for p in paths if p in self.results}

    def take(self) -> tuple[list[tuple[str, int]], list[Transferred]]:
        """What landed since the last call: bytes moved per file, then files verified."""
        moved, self.bytes = self.bytes, []
        fresh, self.fresh = self.fresh, []
        return moved, fresh


def _cause(exc: BaseException) -> BaseException:
    """The exception a task raised, without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayTransfers(TransferPool):
    """Transfers spread over the alive nodes of the Ray cluster this process is connected to."""

    def __init__(self, *, max_retries: int = MAX_RETRIES, poll: float = POLL) -> None:
        self.max_retries = max_retries
        self.poll = poll

    def preflight(self, job: TransferJob) -> list[Probe]:
        """Check every alive node: the secret `job.token_key` set, `ephemeral_storage` free."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0, max_retries=1)(probe_node)
        probes: list[Probe] = ray.get(
            [
                task.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(job.token_key)
                for n in nodes
            ]
        )
        missing = sorted(p.node for p in probes if not p.secret_set)
        if missing and (job.token_key != "HF_TOKEN" or len(missing) < len(probes)):
            raise PreheatError(
                f"the secret {job.token_key} is not set on Ray node(s) {', '.join(missing)}: "
                "set it in the environment of every node (e.g. a Kubernetes Secret as an env "
                "var of the head and worker pods), never in the job"
            )
        if missing:
            log.info("%s is set on no node: fetching without a token", job.token_key)
        if job.resources.ephemeral_storage:
            need = parse_quantity(job.resources.ephemeral_storage, "ephemeral_storage")
            short = sorted((p for p in probes if p.disk_free < need), key=lambda p: p.node)
            if short:
                offered = "; ".join(f"{p.node}: {human_bytes(p.disk_free)} free" for p in short)
                raise PreheatError(
                    f"ephemeral_storage {job.resources.ephemeral_storage} is more than Ray "
                    f"node(s) offer ({offered}): lower --ephemeral-storage or free the disk"
                )
        return probes

    def transfer(self, job, transfers, *, fetch, done, progress=None, cancelled=None):
        """Run `transfers` as SPREAD Ray tasks; journal each file (`done`) as it lands."""
        import ray

        need = requests(job.resources)
        probes = self.preflight(job)
        total = ray.cluster_resources().get("CPU", 0.0)
        slots = max(1, int(total // need.num_cpus)) if need.num_cpus else len(transfers)
        parts = batches(transfers, slots)
        log.info(
            "fanning %d files (%s) out to %d Ray tasks over %d nodes",
            len(transfers),
            human_bytes(sum(t.file.size for t in transfers)),
            len(parts),
            len(probes),
        )
        ledger = ray.remote(num_cpus=0)(Ledger).remote()
        task = ray.remote(fetch_batch).options(
            **need.task_options(),
            scheduling_strategy="SPREAD",
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        refs = [task.remote(job, part, ledger) for part in parts]
        seen: set[str] = set()

        cancelled = cancelled or (lambda: False)

        def drain() -> None:
            moved, results = ray.get(ledger.take.remote())
            if progress is not None:
                for path, n in moved:
                    progress(path, n)
            for result in results:
                if result.entry.path not in seen:
                    seen.add(result.entry.path)
                    done(result)

        pending = list(refs)
        try:
            while pending:
                if cancelled():
                    raise Cancelled(f"run {job.run} was cancelled")
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=self.poll)
                drain()
                for ref in ready:
                    try:
                        report: Report = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - re-raised as the task's own
                        raise self._error(job, exc) from None
                    for line in report.lines:
                        log.info("[ray %s pid %d] %s", report.node, report.pid, line)
                    log.info(
                        "[ray %s pid %d] task done: %d files, %s in %.1fs%s",
                        report.node,
                        report.pid,
                        report.files,
                        human_bytes(report.bytes),
                        report.seconds,
                        f" ({report.skipped} verified before a retry)" if report.skipped else "",
                    )
            drain()
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(ledger)

    def _error(self, job: TransferJob, exc: BaseException) -> BaseException:
        from ray.exceptions import RayTaskError

        cause = _cause(exc)
        if isinstance(cause, PreheatError | Cancelled):
            return cause
        if isinstance(exc, RayTaskError):
            return PreheatError(
                f"a transfer task of run {job.run} failed: {type(cause).__name__}: {cause}"
            )
        return PreheatError(
            f"a transfer task of run {job.run} died {self.max_retries + 1} times "
            f"({type(exc).__name__}); rerun the same prefetch to resume from the verified files"
        )
