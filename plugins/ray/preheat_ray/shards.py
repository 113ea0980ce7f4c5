"""`RayShards`: the parts of a shard (side files, one per rank) written by parallel Ray tasks.

Each part is one task asking for the run's `cpu` and `mem` (CPU sharding
needs no GPU; the engine's own save routine, `method: engine`, gets the run's
`accelerator` as `accelerator_type` and `num_gpus`), placed round-robin on the nodes that can run it (a soft node
affinity: Ray would otherwise pack short tasks onto the worker it already
leased), that opens the store, builds the engine's sharder from
its own registry and writes the part's files into the draft
(`preheat.api.run_shard_part`). The driver journals each part's files as its
task returns, then writes the manifest and publishes, as for a local shard; a
task that dies is retried by Ray and writes its part again.
"""

from __future__ import annotations

import contextlib
import logging

import attrs

from preheat.api import FileEntry, ShardJob, ShardPool, run_shard_part
from preheat_ray.cluster import requests
from preheat_ray.tasks import (
    MAX_RETRIES,
    POLL,
    Ledger,
    Meter,
    Report,
    able_nodes,
    captured,
    drive,
    placed,
)

log = logging.getLogger("preheat")


def write_part(job: ShardJob, part: str, ledger) -> Report:
    """Body of a shard task: write the files of `part`."""
    with captured() as report:
        meter = Meter(ledger)
        entries = run_shard_part(job, part, on_bytes=lambda n: meter.add(part, n))
        meter.flush()
        log.info("wrote %s: %s", part, ", ".join(e.path for e in entries))
        return report(f"shard {part}", sum(e.size for e in entries), entries)


@attrs.frozen(eq=False)
class _Part:
    name: str
    done: object
    kind = "shard"

    def finished(self, report: Report) -> dict:
        entries: list[FileEntry] = report.value
        self.done(self.name, entries)
        return {}


class RayShards(ShardPool):
    """Shard parts spread over the alive nodes of the Ray cluster this process is connected to."""

    def __init__(self, *, max_retries: int = MAX_RETRIES, poll: float = POLL) -> None:
        self.max_retries = max_retries
        self.poll = poll

    def shard(self, job, parts, *, done, progress=None, cancelled=None):
        """One task per part, round-robin over the nodes; `done(part, entries)` as each returns."""
        import ray

        need = requests(job.resources, gpu=job.plan.spec.method == "engine")
        able = able_nodes(need)
        ledger = ray.remote(num_cpus=0)(Ledger).remote()
        task = ray.remote(write_part)
        options = dict(**need.task_options(), max_retries=self.max_retries, retry_exceptions=False)

        log.info(
            "writing %d shard parts as Ray tasks over %d nodes: %s",
            len(parts),
            max(1, len(able)),
            ", ".join(parts),
        )

        def drain() -> None:
            moved, _ = ray.get(ledger.take.remote())
            if progress is not None:
                for _part, n in moved:
                    progress(n)

        # the ranks first, one per node, then the small side files
        order = sorted(range(len(parts)), key=lambda i: not parts[i].startswith("rank-"))
        refs = {
            task.options(**options, scheduling_strategy=placed(able, k)).remote(
                job, parts[i], ledger
            ): _Part(parts[i], done)
            for k, i in enumerate(order)
        }
        try:
            drive(
                refs,
                run=job.run,
                drain=drain,
                cancelled=cancelled,
                retries=self.max_retries,
                poll=self.poll,
            )
        finally:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(ledger)
