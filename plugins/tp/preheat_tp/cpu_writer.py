"""The CPU path: every rank's safetensors files, streamed from the stored unsharded artifact.

Side files (config, tokenizer, ...) are copied as they are, config.json with
the requested dtype; rank tensors are read by `pread` (local store) or range
reads (remote store) and written part by part, every rank on its own thread
(so the write callback hashes the ranks' files in parallel). Each source byte
is read once: a rank reads the rows only it holds, and what several ranks
need (column-sliced tensors, replicated rows) is read once for all of them
(`stream.SharedReads`). Memory stays bounded by a few blocks per rank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from preheat.api import FileEntry, ModelView, SourceArtifact

from . import writer
from .dtypes import NUMPY, normalize_dtype
from .layout import EngineLayout, TPJob
from .plan import OutputTensor, plan_rank
from .refusals import source_index
from .shape import ModelShape
from .stream import Aborted, SharedReads, TensorSource, tensor_chunks

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

Write = Callable[[str, Any], FileEntry]
Progress = Callable[[int], None]


def copied(path: str) -> bool:
    """Whether the artifact file `path` is copied into the sharded artifact (top-level, not weights)."""
    return "/" not in path and not path.endswith(WEIGHT_SUFFIXES) and path not in STALE


def rank_plan(
    layout: EngineLayout,
    shape: ModelShape,
    job: TPJob,
    rank: int,
    index: Mapping[str, tuple[str, tuple[int, ...]]],
) -> list[OutputTensor]:
    """Rank `rank`'s planned tensors under the engine's layout and the job's dtype."""
    dtype = None if job.dtype == "auto" else normalize_dtype(job.dtype)
    return plan_rank(
        shape,
        job.tp,
        rank,
        index,
        vocab_multiple=layout.vocab_multiple_for(shape, job.tp),
        fuse=layout.fuse,
        tied_keep=layout.tied_keep,
        dtype=dtype,
    )


def rank_entries(
    layout: EngineLayout,
    shape: ModelShape,
    job: TPJob,
    rank: int,
    index: Mapping[str, tuple[str, tuple[int, ...]]],
    source: TensorSource | None,
    *,
    tensors: list[OutputTensor] | None = None,
    shared: SharedReads | None = None,
) -> list[writer.Entry]:
    """Rank `rank`'s tensors and buffers; with no `source`, entries describe shapes only.

    `tensors` is the rank's plan when already made; `shared` reads the
    column-sliced sources once for every rank (then each rank's entries must
    be streamed on their own thread, all ranks at once).
    """
    if tensors is None:
        tensors = rank_plan(layout, shape, job, rank, index)
    entries = [
        writer.Entry(
            t.name,
            t.dtype,
            t.shape,
            (lambda t=t: tensor_chunks(t, source, shared=shared, rank=rank)) if source else tuple,
        )
        for t in tensors
    ]
    for i in range(shape.layers):
        for b in layout.layer_buffers:
            value = np.full(b.shape, b.value, dtype=NUMPY[b.dtype]).tobytes()
            entries.append(
                writer.Entry(f"model.layers.{i}.{b.name}", b.dtype, b.shape, lambda v=value: (v,))
            )
    return entries


def planned_sizes(
    layout: EngineLayout, shape: ModelShape, view: ModelView, job: TPJob
) -> tuple[int, int, str]:
    """(largest rank's tensor bytes, all ranks' tensor bytes, structural signature) before download.

    The signature hashes every rank's tensor names, dtypes and shapes: the same
    structure gives the same signature, whatever the weights.
    """
    index = {k: (v[0], v[1]) for k, v in source_index(view).items()}
    ranks = [rank_entries(layout, shape, job, r, index, None) for r in range(job.tp)]
    sizes = [sum(e.nbytes for e in entries) for entries in ranks]
    signature = hashlib.sha256()
    for rank, entries in enumerate(ranks):
        for e in entries:
            signature.update(f"{rank}:{e.name}:{e.dtype}:{list(e.shape)}\n".encode())
    return max(sizes), sum(sizes), signature.hexdigest()


def config_bytes(source: SourceArtifact, job: TPJob) -> bytes:
    """config.json for the sharded artifact: as stored, or with `torch_dtype`/`dtype` set to the job's dtype."""
    raw = source.read("config.json")
    if job.dtype == "auto":
        return raw
    config = json.loads(raw)
    name = DTYPE_CONFIG[normalize_dtype(job.dtype)]
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "torch_dtype":
            config[key] = name
    return (json.dumps(config, indent=2) + "\n").encode()


def copy_side_files(
    source: SourceArtifact, job: TPJob, write: Write, progress: Progress
) -> list[FileEntry]:
    """Copy the artifact's non-weight top-level files (config.json with the job's dtype)."""
    files = []
    for entry in source.manifest.files:
        if copied(entry.path):
            data = (
                config_bytes(source, job)
                if entry.path == "config.json"
                else source.read(entry.path)
            )
            files.append(write(entry.path, [data]))
            progress(len(data))
    return files


def write_ranks(
    layout: EngineLayout,
    source: SourceArtifact,
    job: TPJob,
    write: Write,
    progress: Progress,
    *,
    ranks: Sequence[int] | None = None,
) -> list[FileEntry]:
    """Write the part files of `ranks` (default: every rank), named by `job.file_pattern`.

    Files are split at `job.max_file_size`. One thread per rank writes that
    rank's parts in order, so `write` runs (and hashes) on that many threads
    at once, and what several of the ranks need (column-sliced tensors,
    replicated rows) is read once for all of them.
    The ranks advance together: `write` must consume its chunks as it gets
    them and never wait for another of its calls to finish.
    """
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
    reader = TensorSource(located.__getitem__, source.local_path, source.read_range)
    ranks = list(range(job.tp)) if ranks is None else list(ranks)
    plans = {rank: rank_plan(layout, shape, job, rank, index) for rank in ranks}
    shared = SharedReads(reader, plans)

    def one_rank(rank: int) -> list[FileEntry]:
        try:
            entries = rank_entries(
                layout, shape, job, rank, index, reader, tensors=plans[rank], shared=shared
            )
            out = []
            for part, group in enumerate(writer.split_parts(entries, job.max_file_size)):
                name = job.file_pattern.format(rank=rank, part=part)

                def counted(group=group):
                    for chunk in writer.chunks(group):
                        yield chunk
                        progress(len(chunk))

                out.append(write(name, counted()))
            shared.finished(rank)
            return out
        except BaseException:
            shared.abort()  # the other ranks stop instead of waiting on this one
            raise

    try:
        with ThreadPoolExecutor(max_workers=len(ranks), thread_name_prefix="preheat-shard") as pool:
            futures = [pool.submit(one_rank, rank) for rank in ranks]
            errors = [f.exception() for f in futures]
    finally:
        reader.close()
    # the first real failure, not another rank's `Aborted` that it caused
    for error in sorted((e for e in errors if e), key=lambda e: isinstance(e, Aborted)):
        raise error
    return [entry for f in futures for entry in f.result()]
