"""Running one run record in this process: status, log, progress, cancellation, final state."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
from pathlib import Path

import attrs

from preheat.catalog import Catalog, now_iso
from preheat.config import open_store, preheat_home
from preheat.errors import Cancelled, PreheatError
from preheat.models import RunRecord
from preheat.pipeline import Pipeline, Progress
from preheat.redact import RedactingFilter, redact
from preheat.resources import human_bytes
from preheat.shard_pool import ShardPool
from preheat.transfers import TransferPool

log = logging.getLogger("preheat")
SAVE_EVERY = 1.0


class RunState(Progress):
    """Keeps a run record up to date in the store (throttled) and watches for a cancel request."""

    def __init__(
        self, catalog: Catalog, record: RunRecord, cancel: threading.Event, forward: Progress | None
    ) -> None:
        self.catalog = catalog
        self.record = record
        self.cancel = cancel
        self.forward = forward or Progress()
        self._lock = threading.Lock()  # the record in memory; held only for moments
        self._saving = threading.Lock()  # one write of the record at a time, in order
        self._dirty = False
        self._done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="preheat-record", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def update(self, **changes) -> None:
        with self._saving:
            self.catalog.save_run(self._next_record(**changes))

    def _next_record(self, **changes) -> RunRecord:
        """The record with `changes` and the bytes done so far, as it is to be saved now
        (the caller holds `_saving`, and saves it outside `_lock`)."""
        with self._lock:
            self.record = attrs.evolve(
                self.record, updated=now_iso(), bytes_done=self._done, **changes
            )
            self._dirty = False
            return self.record

    def stage(self, name: str, total: int) -> None:
        with self._lock:
            self._done = 0
            self.record = attrs.evolve(self.record, stage=name, bytes_total=total, bytes_done=0)
            self._dirty = True
        self.forward.stage(name, total)

    def advance(self, n: int) -> None:
        with self._lock:
            self._done += n
            self._dirty = True
        self.forward.advance(n)

    def _loop(self) -> None:
        while not self._stop.wait(SAVE_EVERY):
            if self.catalog.store.head(self.catalog.cancel_key(self.record.name)) is not None:
                self.cancel.set()
            # the store write happens outside `_lock`: under heavy writeback an fsync can
            # take a second, and every `advance` of the writing threads would wait on it
            with self._saving:
                if not self._dirty:
                    continue
                record = self._next_record()
                with contextlib.suppress(Exception):
                    self.catalog.save_run(record)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _log_path(catalog: Catalog, run: str) -> tuple[Path, bool]:
    local = catalog.store.local_path(catalog.log_key(run))
    if local is not None:
        return local, False
    return preheat_home() / "logs" / f"{run}.log", True


@contextlib.contextmanager
def _run_log(catalog: Catalog, run: str, echo: bool):
    path, upload = _log_path(catalog, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        if upload:
            with contextlib.suppress(Exception):
                catalog.store.put(
                    catalog.log_key(run), redact(path.read_text(errors="replace")).encode()
                )


def execute(
    store_url: str,
    run: str,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    record: RunRecord | None = None,
    catalog: Catalog | None = None,
    transfers: TransferPool | None = None,
    shards: ShardPool | None = None,
) -> RunRecord:
    """Run the pipeline of run record `run` here and return its final record.

    A caller that just created the run passes its `record` and `catalog`;
    otherwise (a worker process) both are read from the store. `transfers`
    moves the files to fetch (default: threads of this process), `shards`
    writes a shard's parts (default: the sharder, here).
    """
    catalog = catalog or Catalog(open_store(store_url))
    record = record or catalog.run(run)
    cancel = cancel or threading.Event()
    state = RunState(catalog, record, cancel, progress)
    with _run_log(catalog, run, echo=False):
        state.update(status="running", pid=os.getpid(), host=socket.gethostname(), error=None)
        state.start()
        log.info("run %s started (pid %d)", run, os.getpid())
        started = time.monotonic()
        pipeline = Pipeline(
            catalog, run, progress=state, cancel=cancel, transfers=transfers, shards=shards
        )

        def tally() -> dict[str, int]:
            ctx = pipeline.ctx
            return {"bytes_fetched": ctx.bytes_fetched, "bytes_reused": ctx.bytes_reused}

        try:
            outcome = pipeline.prefetch(record.request)
            state.stop()
            state.update(
                status="succeeded",
                artifact=outcome.manifest.ref,
                reused=outcome.reused,
                stage="done",
                bytes_fetched=outcome.bytes_fetched,
                bytes_reused=outcome.bytes_reused,
            )
            log.info(
                "run %s succeeded in %.1fs: %s%s",
                run, time.monotonic() - started, outcome.manifest.ref, " (reused)" if outcome.reused else "",
            )  # fmt: skip
            log.info(
                "fetched %s from the source, reused %s already in the store",
                human_bytes(outcome.bytes_fetched),
                human_bytes(outcome.bytes_reused),
            )
        except (Cancelled, KeyboardInterrupt):
            state.stop()
            state.update(status="cancelled", error="cancelled", **tally())
            log.info("run %s cancelled", run)
        except PreheatError as exc:
            state.stop()
            state.update(status="failed", error=redact(str(exc)), **tally())
            log.error("run %s failed: %s", run, exc)
        except Exception as exc:
            state.stop()
            state.update(
                status="failed",
                error=redact(f"internal error: {type(exc).__name__}: {exc}"),
                **tally(),
            )
            log.error("run %s failed with an internal error:\n%s", run, traceback.format_exc())
        finally:
            catalog.store.delete(catalog.cancel_key(run))
    return state.record


def install_cancel_signals(cancel: threading.Event) -> None:
    """Turn SIGTERM (and SIGINT) into a clean cancel."""

    def handler(signum, frame):
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
