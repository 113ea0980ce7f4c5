"""One large file split by byte range across Ray tasks, verified whole before it counts.

Where the store takes ranged writes (`Store.begin_ranges`: an S3 multipart
upload, a shared filesystem), the driver begins one upload per large file and
deals its spans (`preheat.api.plan_spans`) round-robin into one share per task
slot. Each share is a task, placed round-robin over the nodes that fit, that fetches its spans over a few connections
straight into the upload (`preheat.api.fetch_spans`), telling the ledger each
span written; a retried task skips those. Once every share is done, one more
task assembles the object and checks its sha256 against the source's
(`preheat.api.finish_spans`), and only then is the file journaled.
"""

from __future__ import annotations

import logging

import attrs

from preheat.api import Span, Transfer, TransferJob, fetch_spans, finish_spans, plan_spans
from preheat_ray.cluster import requests
from preheat_ray.tasks import Meter, Report, able_nodes, captured, placed

log = logging.getLogger("preheat")


def fetch_share(job: TransferJob, t: Transfer, upload: str, share: list[Span], ledger) -> Report:
    """Body of a span task: write the spans of `share` the ledger does not hold yet."""
    import ray

    path = t.file.path
    with captured() as report:
        written = ray.get(ledger.spans_done.remote(path))
        todo = [s for s in share if s.index not in written]
        if len(todo) < len(share):
            log.info("resuming %s after %d spans already written", path, len(share) - len(todo))
        meter = Meter(ledger)
        fetch_spans(
            job,
            t,
            upload,
            todo,
            on_span=lambda s: ledger.span_done.remote(path, s.index),
            on_bytes=lambda n: meter.add(path, n),
        )
        meter.flush()
        return report(f"{len(todo)} spans of {path}", sum(s.size for s in todo))


def finish_file(job: TransferJob, t: Transfer, upload: str, spans: list[Span]) -> Report:
    """Body of the last task of a split file: assemble it and verify its sha256."""
    with captured() as report:
        result = finish_spans(job, t, upload, spans)
        log.info("verified %s (%d bytes in %d spans)", t.file.path, t.file.size, len(spans))
        return report(f"verified {t.file.path}", 0, result)


@attrs.define(eq=False)
class SplitFile:
    """The spans of one file, their shares (one per task) and what is left to do."""

    transfer: Transfer
    upload: str
    spans: list[Span]
    shares: list[list[Span]]
    left: int = 0
    verified: bool = False
    _start: dict = attrs.field(factory=dict)

    @classmethod
    def plan(cls, t: Transfer, upload: str, slots: int) -> SplitFile:
        """Spans of `t` dealt round-robin into at most `slots` shares."""
        spans = plan_spans(t.file.size)
        n = max(1, min(slots, len(spans)))
        return cls(t, upload, spans, [spans[i::n] for i in range(n)])

    def start(self, job: TransferJob, ledger, options: dict, done) -> dict:
        """Submit one task per share; the refs to wait for."""
        import ray

        self._start = {"job": job, "options": options, "done": done}
        task = ray.remote(fetch_share)
        self.left = len(self.shares)
        share = _Share(self)
        nodes = able_nodes(requests(job.resources))
        return {
            task.options(**{**options, "scheduling_strategy": placed(nodes, i)}).remote(
                job, self.transfer, self.upload, s, ledger
            ): share
            for i, s in enumerate(self.shares)
        }

    def share_done(self) -> dict:
        """A share finished: once all are, submit the task that assembles and verifies."""
        import ray

        self.left -= 1
        if self.left:
            return {}
        task = ray.remote(finish_file).options(**self._start["options"])
        ref = task.remote(self._start["job"], self.transfer, self.upload, self.spans)
        return {ref: _Finish(self)}

    def verified_as(self, report: Report) -> dict:
        self.verified = True
        self._start["done"](report.value)
        return {}

    def abort(self, store) -> None:
        """Drop the upload unless the file was assembled."""
        if not self.verified:
            store.abort_ranges(self.transfer.key, self.upload)


@attrs.frozen(eq=False)
class _Share:
    file: SplitFile
    kind = "span transfer"

    def finished(self, report: Report) -> dict:
        return self.file.share_done()


@attrs.frozen(eq=False)
class _Finish:
    file: SplitFile
    kind = "verify"

    def finished(self, report: Report) -> dict:
        return self.file.verified_as(report)
