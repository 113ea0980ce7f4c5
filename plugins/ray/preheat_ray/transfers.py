"""`RayTransfers`: the files of one artifact streamed by Ray tasks spread over the nodes.

The driver (the run's job) keeps the lease, the journal, the manifest and the
publish; tasks only move bytes:

1. a preflight task on every alive node checks that the secret the request names
   is set there (it answers yes or no, never the value) and that the node's disk
   offers the run's `ephemeral_storage`;
2. a file larger than a few spans, where the store takes ranged writes, is split
   across tasks by byte range (`preheat_ray.spans`); the other files are split into
   one batch per task slot (largest first, balanced by bytes). Each batch is one
   task (`scheduling_strategy="SPREAD"`, the run's `cpu` and `mem` as `num_cpus`
   and `memory`, `max_retries`) that builds its own fetcher from the request
   (`preheat.api.run_transfers`), streams its files one after the other into the
   draft's keys, each verified by the fetcher;
3. each verified file is reported at once to a ledger actor; the driver drains it
   several times a second and journals every file (a rerun after the driver died
   keeps them), and a retried task skips the files the ledger already holds.

A task that dies (its worker killed, its node lost) is retried by Ray and resumes
after the verified files (or spans); a failure of a task's own stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

import attrs

from preheat.api import (
    PreheatError,
    Transfer,
    TransferJob,
    TransferPool,
    human_bytes,
    open_store,
    parse_quantity,
    run_transfers,
    splittable,
)
from preheat_ray.cluster import requests
from preheat_ray.spans import SplitFile
from preheat_ray.tasks import MAX_RETRIES, POLL, Ledger, Meter, Report, captured, drive, node_ip

log = logging.getLogger("preheat")


@attrs.frozen
class Probe:
    """What the preflight found on one node (never a secret's value)."""

    node: str
    secret_set: bool
    disk_free: int


@attrs.frozen(eq=False)
class Batch:
    """A task of whole files (they report to the ledger as they land)."""

    kind = "transfer"

    def finished(self, report: Report) -> dict:
        return {}


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


def fetch_batch(job: TransferJob, batch: list[Transfer], ledger) -> Report:
    """Body of a transfer task: stream `batch` into the store, reporting each file to `ledger`."""
    import ray

    with captured() as report:
        known = ray.get(ledger.known.remote([t.file.path for t in batch]))
        todo = [t for t in batch if t.file.path not in known]
        if known:
            log.info("resuming after %d files already verified", len(known))
        meter, moved = Meter(ledger), 0
        for result in run_transfers(job, todo, on_bytes=meter.add):
            meter.flush()
            ray.get(ledger.add.remote(result))
            moved += result.entry.size
            log.info("verified %s (%d bytes)", result.entry.path, result.entry.size)
        skipped = len(batch) - len(todo)
        what = f"{len(todo)} files" + (f" ({skipped} verified before a retry)" if skipped else "")
        return report(what, moved)


def probe_node(token_key: str) -> Probe:
    """Body of the preflight task: is the secret set here, how much disk is free."""
    value = os.environ.get(token_key, "")
    return Probe(
        node=node_ip(),
        secret_set=bool(value.strip()),
        disk_free=shutil.disk_usage(tempfile.gettempdir()).free,
    )


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
        ledger = ray.remote(num_cpus=0)(Ledger).remote()
        options = dict(
            **need.task_options(),
            scheduling_strategy="SPREAD",
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        store = open_store(job.store)
        split: list[SplitFile] = []
        try:
            if slots > 1:
                self._split(store, transfers, slots, into=split)
            split_keys = {f.transfer.key for f in split}
            whole = [t for t in transfers if t.key not in split_keys]
            parts = batches(whole, slots) if whole else []
            log.info(
                "fanning %d files (%s) out to %d Ray tasks over %d nodes%s",
                len(transfers),
                human_bytes(sum(t.file.size for t in transfers)),
                len(parts) + sum(len(f.shares) for f in split),
                len(probes),
                f", {len(split)} of them split by byte range" if split else "",
            )
            seen: set[str] = set()

            def drain() -> None:
                moved, results = ray.get(ledger.take.remote())
                if progress is not None:
                    for path, n in moved:
                        progress(path, n)
                for result in results:
                    if result.entry.path not in seen:
                        seen.add(result.entry.path)
                        done(result)

            task = ray.remote(fetch_batch).options(**options)
            refs = {task.remote(job, part, ledger): Batch() for part in parts}
            for f in split:
                refs.update(f.start(job, ledger, options, done))
            drive(
                refs,
                run=job.run,
                drain=drain,
                cancelled=cancelled,
                retries=self.max_retries,
                poll=self.poll,
            )
        except BaseException:
            for f in split:
                f.abort(store)
            raise
        finally:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(ledger)
            store.close()

    def _split(
        self, store, transfers: Sequence[Transfer], slots: int, *, into: list[SplitFile]
    ) -> None:
        """Add to `into` the files to split by byte range, each with its upload begun (none where
        the store cannot); what was begun is in `into` even when a later begin fails."""
        for t in sorted(transfers, key=lambda t: -t.file.size):
            if not splittable(t):
                continue
            upload = store.begin_ranges(t.key, t.file.size)
            if upload is None:
                return
            into.append(SplitFile.plan(t, upload, slots))
