"""An engine-neutral tensor-parallel sharder on preheat's `Sharder` interface.

An engine plugin describes its loader's layout (`EngineLayout`: vocabulary
padding, which tied name survives, extra per-layer buffers, version range)
and turns its own argument class into a `TPJob`; this module validates the
job before download and writes every rank's files by streaming from the
stored unsharded artifact, one tensor at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from preheat.errors import PreheatError
from preheat.models import Resources, ShardSpec
from preheat.resources import accelerator_info, parse_accelerator
from preheat.shard import ModelView, Sharder, ShardPlan, SourceArtifact

from . import writer
from .dtypes import NUMPY, normalize_dtype
from .plan import EMBED, LM_HEAD, PlanError, plan_rank
from .shape import ModelShape, UnsupportedModel, check_tp
from .stream import TensorSource, tensor_chunks

log = logging.getLogger("preheat")

GiB = 1 << 30
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".ckpt",
)
STALE = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
DTYPE_CONFIG = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
QUANT_FILES = ("hf_quant_config.json", "quant_config.json", "quant_model_description.json")
MULTIMODAL_KEYS = (
    "vision_config",
    "audio_config",
    "image_token_index",
    "image_token_id",
    "vision_tower",
)


@dataclass(frozen=True)
class Buffer:
    """A persistent buffer the engine's state dict holds in every layer (e.g. an attention scale)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    value: float


@dataclass(frozen=True)
class EngineLayout:
    """What an engine's sharded-state loader expects beyond the shared tensor-parallel slicing."""

    engine: str
    engine_versions: str
    vocab_multiple: int = 64
    tied_keep: str = LM_HEAD
    layer_buffers: tuple[Buffer, ...] = ()
    fuse: bool = True
    widen_vocab_for_tp: bool = False
    extra_problems: Callable[[Mapping[str, Any], list[str]], list[str]] | None = None

    def vocab_multiple_for(self, shape: ModelShape, tp: int) -> int:
        """Vocabulary padding at `tp`: the base multiple, or base * tp when the engine widens it to divide."""
        if self.widen_vocab_for_tp and shape.padded_vocab(self.vocab_multiple) % tp:
            return self.vocab_multiple * tp
        return self.vocab_multiple


@dataclass(frozen=True)
class TPJob:
    """An engine's shard arguments in engine-neutral terms."""

    tp: int
    dtype: str = "auto"
    file_pattern: str = "model-rank-{rank}-part-{part}.safetensors"
    max_file_size: int = 5 * GiB
    method: str = "auto"
    trust_remote_code: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: Any, *, tp: int, extra: tuple[str, ...] = ()) -> TPJob:
        """A job from an engine's args object (shared field names) plus its engine-only `extra` fields."""
        return cls(
            tp=tp,
            dtype=args.dtype,
            file_pattern=args.file_pattern,
            max_file_size=args.max_file_size,
            method=args.method,
            trust_remote_code=args.trust_remote_code,
            args={name: getattr(args, name) for name in extra if getattr(args, name) is not None},
        )


EngineRunner = Callable[[str, str, TPJob], None]


def _refuse(engine: str, reason: str, *, engine_path: bool = True) -> PreheatError:
    hint = (
        "; to shard it with the engine itself on GPUs, use `method: engine`" if engine_path else ""
    )
    return PreheatError(f"cannot pre-shard for {engine} on CPU: {reason}{hint}")


def _source_index(view: ModelView) -> dict[str, tuple[str, tuple[int, ...], str, int]]:
    """name -> (dtype, shape, file, absolute data start) over every safetensors file."""
    index: dict[str, tuple[str, tuple[int, ...], str, int]] = {}
    for path, head in view.headers.items():
        for t in head.tensors.values():
            index[t.name] = (t.dtype, t.shape, path, t.start)
    return index


class TensorParallelSharder(Sharder):
    """CPU slicing into per-rank safetensors files for one engine layout; optional engine fallback."""

    def __init__(
        self,
        layout: EngineLayout,
        to_job: Callable[[Any], TPJob],
        *,
        engine_runner: EngineRunner | None = None,
        engine_problem: Callable[[int], str | None] | None = None,
    ) -> None:
        self.layout = layout
        self.to_job = to_job
        self.engine_runner = engine_runner
        self.engine_problem = engine_problem or (
            lambda tp: f"{layout.engine} is not installed here"
        )

    # planning

    def _cpu_problem(self, view: ModelView, job: TPJob) -> str | None:
        config = view.config
        if not view.headers:
            return "the checkpoint has no safetensors files"
        quant_files = sorted({f.path for f in view.files} & set(QUANT_FILES))
        if (
            view.serving.quantization
            or config.get("quantization_config")
            or config.get("compression_config")
            or quant_files
        ):
            what = view.serving.quantization or (
                quant_files[0] if quant_files else "quantization_config"
            )
            return f"the checkpoint is quantized ({what}), which the CPU slicer does not support"
        if view.serving.experts:
            return f"mixture-of-experts checkpoints ({view.serving.experts} experts) are not supported by the CPU slicer"
        if any(k in config for k in MULTIMODAL_KEYS):
            return "multimodal checkpoints are not supported by the CPU slicer"
        if self.layout.extra_problems is not None:
            problems = self.layout.extra_problems(config, [f.path for f in view.files])
            if problems:
                return "; ".join(problems)
        try:
            shape = ModelShape.from_config(config)
        except UnsupportedModel as exc:
            return str(exc)
        index = _source_index(view)
        if shape.tied and LM_HEAD in index and EMBED in index:
            return (
                "config.json ties the embeddings but the checkpoint also ships a separate lm_head.weight "
                "(the engine would serve it untied); fix tie_word_embeddings in the repository"
            )
        try:
            plan_rank(
                shape,
                job.tp,
                0,
                {k: (v[0], v[1]) for k, v in index.items()},
                vocab_multiple=self.layout.vocab_multiple_for(shape, job.tp),
            )
        except PlanError as exc:
            if self._tp_problems(shape, job.tp):
                return None  # reported as a tensor-parallel size problem by `plan`
            return f"the checkpoint's tensors do not match its config: {exc}"
        return None

    def _tp_problems(self, shape: ModelShape, tp: int) -> list[str]:
        return check_tp(
            shape, tp, self.layout.vocab_multiple, widen_vocab=self.layout.widen_vocab_for_tp
        )

    def plan(self, model: ModelView, args: Any, resources: Resources) -> ShardPlan:
        job = self.to_job(args)
        engine = self.layout.engine
        config = model.config
        if not config:
            raise _refuse(engine, "the repository has no config.json", engine_path=False)
        if config.get("auto_map") and not job.trust_remote_code:
            raise PreheatError(
                f"{config.get('architectures')} needs custom code from the repository: "
                "set trust_remote_code: true in the shard args if you trust it"
            )
        method = job.method
        cpu_problem = self._cpu_problem(model, job)
        if method == "auto":
            method = "cpu" if cpu_problem is None else "engine"
            if method == "engine" and self.engine_problem(job.tp) is not None:
                raise _refuse(engine, cpu_problem)
        if method == "cpu" and cpu_problem is not None:
            raise _refuse(engine, cpu_problem)
        if method == "engine":
            problem = self.engine_problem(job.tp)
            if problem is not None:
                raise PreheatError(f"method: engine cannot run here: {problem}")
        try:
            shape = ModelShape.from_config(config)
        except UnsupportedModel:
            shape = None
        if shape is not None:
            problems = self._tp_problems(shape, job.tp)
            if problems:
                raise PreheatError(
                    f"tensor-parallel size {job.tp} does not fit {shape.architecture}: "
                    + "; ".join(problems)
                )

        signature = hashlib.sha256()
        if method == "cpu":
            index = {k: (v[0], v[1]) for k, v in _source_index(model).items()}
            ranks = [self._rank_entries(shape, job, r, index, None) for r in range(job.tp)]
            sizes = [sum(e.nbytes for e in entries) for entries in ranks]
            per_rank, output = max(sizes), sum(sizes)
            for rank, entries in enumerate(ranks):
                for e in entries:
                    signature.update(f"{rank}:{e.name}:{e.dtype}:{list(e.shape)}\n".encode())
        else:
            weights = model.serving.weight_bytes or 0
            per_rank, output = math.ceil(weights / job.tp), weights
        output += sum(f.size for f in model.files if self._copied(f.path))
        self._check_accelerator(resources, job.tp, per_rank)
        spec = ShardSpec(
            engine=engine,
            tensor_parallel_size=job.tp,
            dtype=job.dtype,
            method=method,
            file_pattern=job.file_pattern,
            engine_versions=self.layout.engine_versions,
            signature=signature.hexdigest() if method == "cpu" else None,
            args=dict(job.args),
        )
        return ShardPlan(spec=spec, output_bytes=output, weight_bytes_per_rank=per_rank, data=job)

    def _check_accelerator(self, resources: Resources, tp: int, per_rank: int) -> None:
        if not resources.accelerator:
            return
        kind, count = parse_accelerator(resources.accelerator)
        if count != tp:
            raise PreheatError(
                f"--accelerator {resources.accelerator} has {count} device(s) but tensor-parallel size is {tp}: "
                "make them equal"
            )
        info = accelerator_info(kind)
        if info is None:
            log.warning("accelerator %s is not in the table; its memory was not checked", kind)
            return
        usable = int(info.memory * 0.9)
        kv_margin = max(GiB, info.memory // 10)
        if per_rank + kv_margin > usable:
            raise PreheatError(
                f"weights need {per_rank / GiB:.1f} GiB per GPU at tp={tp}, but a {info.name} leaves "
                f"{(usable - kv_margin) / GiB:.1f} GiB after the engine's 90% memory cap and a "
                f"{kv_margin / GiB:.1f} GiB margin for the KV cache: use a larger tp or accelerator"
            )

    # writing

    def _rank_entries(
        self,
        shape: ModelShape,
        job: TPJob,
        rank: int,
        index: Mapping[str, tuple[str, tuple[int, ...]]],
        source: TensorSource | None,
    ) -> list[writer.Entry]:
        """Rank `rank`'s tensors and buffers; with no `source`, entries describe shapes only."""
        dtype = None if job.dtype == "auto" else normalize_dtype(job.dtype)
        tensors = plan_rank(
            shape,
            job.tp,
            rank,
            index,
            vocab_multiple=self.layout.vocab_multiple_for(shape, job.tp),
            fuse=self.layout.fuse,
            tied_keep=self.layout.tied_keep,
            dtype=dtype,
        )
        entries = [
            writer.Entry(
                t.name,
                t.dtype,
                t.shape,
                (lambda t=t: tensor_chunks(t, source)) if source else tuple,
            )
            for t in tensors
        ]
        for i in range(shape.layers):
            for b in self.layout.layer_buffers:
                value = np.full(b.shape, b.value, dtype=NUMPY[b.dtype]).tobytes()
                entries.append(
                    writer.Entry(
                        f"model.layers.{i}.{b.name}", b.dtype, b.shape, lambda v=value: (v,)
                    )
                )
        return entries

    @staticmethod
    def _copied(path: str) -> bool:
        return "/" not in path and not path.endswith(WEIGHT_SUFFIXES) and path not in STALE

    def _config_bytes(self, source: SourceArtifact, job: TPJob) -> bytes:
        raw = source.read("config.json")
        if job.dtype == "auto":
            return raw
        config = json.loads(raw)
        name = DTYPE_CONFIG[normalize_dtype(job.dtype)]
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "torch_dtype":
                config[key] = name
        return (json.dumps(config, indent=2) + "\n").encode()

    def shard(self, plan: ShardPlan, source: SourceArtifact, write, progress) -> list:
        job: TPJob = plan.data
        files = []
        for entry in source.manifest.files:
            if self._copied(entry.path):
                data = (
                    self._config_bytes(source, job)
                    if entry.path == "config.json"
                    else source.read(entry.path)
                )
                files.append(write(entry.path, [data]))
                progress(len(data))
        if plan.spec.method == "engine":
            return files + self._engine(plan, source, write, progress)

        shape = ModelShape.from_config(json.loads(source.read("config.json")))
        located = {}
        for path, head in source.headers().items():
            for t in head.tensors.values():
                located[t.name] = (path, t.start)
        index = {
            name: (h.dtype, h.shape)
            for head in source.headers().values()
            for name, h in head.tensors.items()
        }

        tensors = TensorSource(located.__getitem__, source.local_path, source.read_range)

        def one_rank(rank: int) -> list:
            entries = self._rank_entries(shape, job, rank, index, tensors)
            out = []
            for part, group in enumerate(writer.split_parts(entries, job.max_file_size)):
                name = job.file_pattern.format(rank=rank, part=part)

                def counted(group=group):
                    for chunk in writer.chunks(group):
                        yield chunk
                        progress(len(chunk))

                out.append(write(name, counted()))
            return out

        workers = max(1, min(job.tp, 4))
        try:
            with ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="preheat-shard"
            ) as pool:
                for rank_files in pool.map(one_rank, range(job.tp)):
                    files.extend(rank_files)
        finally:
            tensors.close()
        return files

    def _engine(self, plan: ShardPlan, source: SourceArtifact, write, progress) -> list:
        import os
        import tempfile

        from preheat.resolve import materialize as copy_artifact

        if self.engine_runner is None:
            raise PreheatError(f"{self.layout.engine} has no engine-backed shard path")
        job: TPJob = plan.data
        with tempfile.TemporaryDirectory(prefix="preheat-engine-") as tmp:
            src = source.local_path("config.json")
            if src is None:
                from preheat.catalog import Catalog

                src_dir = copy_artifact(
                    Catalog(source.store), source.manifest, os.path.join(tmp, "src")
                )
            else:
                src_dir = src.parent
            out_dir = os.path.join(tmp, "out")
            os.makedirs(out_dir)
            self.engine_runner(str(src_dir), out_dir, job)
            files = []
            for name in sorted(os.listdir(out_dir)):
                if name.endswith(".safetensors"):
                    with open(os.path.join(out_dir, name), "rb") as f:
                        files.append(write(name, iter(lambda f=f: f.read(8 << 20), b"")))
                    progress(os.path.getsize(os.path.join(out_dir, name)))
            return files
