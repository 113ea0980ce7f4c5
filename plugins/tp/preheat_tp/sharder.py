"""An engine-neutral tensor-parallel sharder on preheat's `Sharder` interface.

`TensorParallelSharder` ties the pieces together for one engine layout:
`refusals` validates the request before download, `cpu_writer` writes every
rank's files by streaming from the stored unsharded artifact, and `engine`
runs the engine's own save routine where the CPU slicer cannot.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

from preheat.api import (
    FileEntry,
    ModelView,
    PreheatError,
    Resources,
    Sharder,
    ShardPlan,
    ShardSpec,
    SourceArtifact,
)

from . import cpu_writer, refusals
from .engine import shard_with_engine
from .layout import Buffer, EngineLayout, EngineProblem, EngineRunner, TPJob

__all__ = ["Buffer", "EngineLayout", "TPJob", "TensorParallelSharder"]


class TensorParallelSharder(Sharder):
    """CPU slicing into per-rank safetensors files for one engine layout; optional engine fallback.

    `to_job(args)` turns the engine's args instance into a `TPJob`;
    `engine_runner` and `engine_problem` are the engine's own save routine
    and why it cannot run here (see `preheat_tp.engine.EngineProcess`).
    """

    def __init__(
        self,
        layout: EngineLayout,
        to_job: Callable[[Any], TPJob],
        *,
        engine_runner: EngineRunner | None = None,
        engine_problem: EngineProblem | None = None,
    ) -> None:
        self.layout = layout
        self.to_job = to_job
        self.engine_runner = engine_runner
        self.engine_problem = engine_problem or (
            lambda tp: f"{layout.engine} is not installed here"
        )

    def plan(self, model: ModelView, args: Any, resources: Resources) -> ShardPlan:
        job = self.to_job(args)
        probe = self.engine_problem
        if self.parts_elsewhere and self.engine_runner is not None:
            probe = _probed_by_the_part  # on the machine that runs the engine's part
        method = refusals.choose_method(self.layout, model, job, probe)
        shape = refusals.check_tp_fits(self.layout, model.config, job.tp)
        signature = None
        if method == "cpu":
            assert shape is not None  # the CPU slicer knows the family
            per_rank, output, signature = cpu_writer.planned_sizes(self.layout, shape, model, job)
        else:
            weights = model.serving.weight_bytes or 0
            per_rank, output = math.ceil(weights / job.tp), weights
        output += sum(f.size for f in model.files if cpu_writer.copied(f.path))
        refusals.check_accelerator(resources, job.tp, per_rank)
        spec = ShardSpec(
            engine=self.layout.engine,
            tensor_parallel_size=job.tp,
            dtype=job.dtype,
            method=method,
            file_pattern=job.file_pattern,
            engine_versions=self.layout.engine_versions,
            signature=signature,
            args=dict(job.args),
        )
        return ShardPlan(spec=spec, output_bytes=output, weight_bytes_per_rank=per_rank, data=job)

    def shard(self, plan: ShardPlan, source: SourceArtifact, write, progress) -> list[FileEntry]:
        job: TPJob = plan.data
        files = cpu_writer.copy_side_files(source, job, write, progress)
        if plan.spec.method == "engine":
            if self.engine_runner is None:
                raise PreheatError(f"{self.layout.engine} has no engine-backed shard path")
            return files + shard_with_engine(self.engine_runner, source, job, write, progress)
        return files + cpu_writer.write_ranks(self.layout, source, job, write, progress)

    SIDE_FILES = "side-files"
    ENGINE = "engine"

    def parts(self, plan: ShardPlan) -> list[str]:
        """CPU path: the side files, then one part per rank; engine path: one part, everything.

        The engine's save routine loads the whole model at once (on the run's
        accelerators, `plan.spec.method == "engine"`), so it is a single part.
        """
        if plan.spec.method == "engine":
            return [self.ENGINE]
        return [self.SIDE_FILES] + [f"rank-{r}" for r in range(plan.spec.tensor_parallel_size)]

    def shard_part(self, plan, source, part, write, progress) -> list[FileEntry]:
        """Write the side files, every file of one rank (its column slices read by itself),
        or, on the engine path, everything."""
        job: TPJob = plan.data
        if part == self.ENGINE and plan.spec.method == "engine":
            self._check_engine_here(job)
            return self.shard(plan, source, write, progress)
        if part == self.SIDE_FILES and plan.spec.method == "cpu":
            return cpu_writer.copy_side_files(source, job, write, progress)
        rank = int(part.removeprefix("rank-")) if part.startswith("rank-") else -1
        if plan.spec.method != "cpu" or not 0 <= rank < job.tp:
            raise PreheatError(f"{self.layout.engine}: no shard part {part!r} in this plan")
        return cpu_writer.write_ranks(self.layout, source, job, write, progress, ranks=[rank])

    def _check_engine_here(self, job: TPJob) -> None:
        """Refuse, before any byte is read, when the engine cannot run on the machine that
        writes the `engine` part (with `parts_elsewhere`, the plan did not probe it)."""
        cannot = self.engine_problem(job.tp)
        if cannot is not None:
            raise PreheatError(f"method: engine cannot run on {socket.gethostname()}: {cannot}")


def _probed_by_the_part(tp: int) -> None:
    """No problem at plan time: the part's task probes the engine where it runs."""
    return None
