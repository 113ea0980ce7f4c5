"""Runs: submitting a prefetch to an executor and following it through its record in the store."""

from __future__ import annotations

import contextlib
import time

import attrs

from preheat import serde
from preheat.catalog import Catalog, now_iso
from preheat.config import default_store_url, open_store
from preheat.errors import PreconditionFailed, PreheatError
from preheat.models import ArtifactRef, PrefetchRequest, RunRecord
from preheat.names import new_run_name
from preheat.pipeline import prepare
from preheat.plugins import lookup
from preheat.resolve import location


@attrs.frozen
class RunOutputValue:
    """One output of a finished run: the artifact directory (local path, or store URI)."""

    path: str
    uri: str
    artifact: ArtifactRef
    type: str = "directory"


class Run:
    """A handle on a run whose record lives in a store."""

    def __init__(self, name: str, store: str | None = None, *, catalog: Catalog | None = None):
        self.name = name
        self.store_url = store or default_store_url()
        self._catalog = catalog

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, store={self.store_url!r})"

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(open_store(self.store_url))
        return self._catalog

    @property
    def record(self) -> RunRecord:
        """The current record; a run whose local worker died is reported (and saved) as failed."""
        record = self.catalog.run(self.name)
        if not record.done:
            executor = lookup("executors", record.executor).value()
            if executor.alive(record) is False:
                fresh = self.catalog.run(self.name)
                if fresh.done:
                    return fresh
                record = attrs.evolve(
                    fresh,
                    status="failed",
                    updated=now_iso(),
                    error="the worker process exited before finishing (killed?); "
                    "rerun the same prefetch to resume from what was verified",
                )
                self.catalog.save_run(record)
        return record

    @property
    def status(self) -> str:
        return self.record.status

    def wait(self, timeout: float | None = None, poll: float = 0.25, on_update=None) -> Run:
        """Block until the run ends (or `timeout` seconds pass, raising PreheatError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.record
            if on_update is not None:
                on_update(record)
            if record.done:
                return self
            if deadline is not None and time.monotonic() > deadline:
                raise PreheatError(f"run {self.name} still {record.status} after {timeout:.0f}s")
            time.sleep(poll)

    def outputs(self) -> list[RunOutputValue]:
        """The run's artifact; raises PreheatError unless the run succeeded."""
        record = self.record
        if record.status != "succeeded" or record.artifact is None:
            detail = f": {record.error}" if record.error else ""
            raise PreheatError(f"run {self.name} has no outputs: it is {record.status}{detail}")
        manifest = self.catalog.resolve(str(record.artifact))
        where = location(self.catalog, manifest)
        return [
            RunOutputValue(path=where.path or where.uri, uri=where.uri, artifact=record.artifact)
        ]

    def logs(self) -> str:
        """The run's log so far (NotFound for an unknown run)."""
        found = self.catalog.log(self.name)
        if found is None:
            self.catalog.run(self.name)
        return found or ""

    def cancel(self) -> bool:
        """Ask the run to stop; True when a live worker was signalled."""
        record = self.record
        if record.done:
            return False
        return lookup("executors", record.executor).value().cancel(record)


def new_run(
    request: PrefetchRequest,
    store: str | None = None,
    executor: str = "local",
    executor_options: dict[str, str] | None = None,
) -> tuple[Run, RunRecord]:
    """Validate `request` and save a queued run record; the run (bound to its catalog) and that record.

    `executor_options` are saved in the record for the executor (never secrets).
    """
    prepare(request)
    url = store or default_store_url()
    catalog = Catalog(open_store(url))
    record = RunRecord(
        name=new_run_name(),
        status="queued",
        request=request,
        created=now_iso(),
        store=url,
        executor=executor,
        executor_options=dict(executor_options or {}),
    )
    catalog.save_run(record)
    return Run(record.name, url, catalog=catalog), record


def create_run(
    request: PrefetchRequest,
    store: str | None = None,
    executor: str = "local",
    executor_options: dict[str, str] | None = None,
) -> Run:
    """Validate `request`, save a queued run record for it and return the run, bound to its catalog."""
    return new_run(request, store, executor, executor_options)[0]


def submit(
    request: PrefetchRequest,
    store: str | None = None,
    executor: str = "local",
    executor_options: dict[str, str] | None = None,
) -> Run:
    """Validate `request`, save a queued run record and start it on `executor`.

    When the executor cannot start it, the record is saved as failed with the
    executor's message, and that PreheatError is raised.
    """
    executor_factory = lookup("executors", executor).value
    run, record = new_run(request, store, executor, executor_options)
    catalog = run.catalog
    try:
        started = executor_factory().submit(record)
    except PreheatError as exc:
        with contextlib.suppress(Exception):
            catalog.save_run(
                attrs.evolve(record, status="failed", updated=now_iso(), error=str(exc))
            )
        raise
    key = catalog.run_key(record.name)
    found = catalog.store.read(key)
    if found is not None:
        current = serde.loads(found[0], RunRecord)
        if current.status == "queued" and current.pid is None:
            with contextlib.suppress(PreconditionFailed):
                updated = attrs.evolve(current, pid=started.pid, host=started.host)
                catalog.store.put(key, serde.dumps(updated), if_match=found[1])
    return run
