"""Engine-neutral helpers of the sharded-state tests: a hub + store world, a shard runner, and a
reference of every rank tensor built independently of preheat with plain numpy.

What differs between engines is data (`EngineFacts`): the shard-args key naming the
tensor-parallel size, the persistent per-layer buffers the engine's state dict holds,
and the vocabulary padding rule. Everything else (fused q;k;v and gate;up, kv-head
replication, row and column slices, zero padding rows, the tied name kept) is the same
for vLLM and SGLang on the Llama, Mistral, Qwen2 and Qwen3 families
(`/FORMATS.md`, "Tensor-parallel slicing"; `plugins/sglang/STATE_DICT.md`).

Pipelines run in-process (`World.prefetch`, the same `create_run` + `execute` that
`preheat prefetch --wait` uses) unless a test is about the process boundary, which goes
through `World.cli` (a real `preheat` subprocess). Nothing here imports an engine plugin:
the reference must not share code with what it checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preheat.resolve import location
from preheat_testing import models
from preheat_testing.engine_facts import ENGINES, SGLANG, VLLM, EngineFacts, prompt
from preheat_testing.rank_readers import (
    ITEMSIZE,
    file_order,
    rank_file_regex,
    rank_files,
    rank_float32,
    rank_tensors,
    read_strict,
)
from preheat_testing.rank_reference import RAW, ST_DTYPE, convert, reference_rank, source_tensors
from preheat_testing.shard_world import (
    ALL_CASES,
    HEADER_PROBE,
    ODD_TP_CASES,
    Outcome,
    World,
    assert_only_header_reads,
    n_weight_files,
    weight_bytes,
    weight_requests,
)

__all__ = [
    "ALL_CASES",
    "DEFAULT_PATTERN",
    "ENGINES",
    "HEADER_PROBE",
    "INDEXES",
    "ITEMSIZE",
    "ODD_TP_CASES",
    "RAW",
    "SGLANG",
    "ST_DTYPE",
    "VLLM",
    "WEIGHT_SUFFIXES",
    "EngineFacts",
    "Outcome",
    "Sharded",
    "World",
    "assert_only_header_reads",
    "check_rank_files",
    "convert",
    "copied_files",
    "file_order",
    "n_weight_files",
    "prompt",
    "rank_file_regex",
    "rank_files",
    "rank_float32",
    "rank_tensors",
    "read_strict",
    "reference_rank",
    "shard_getter",
    "source_tensors",
    "weight_bytes",
    "weight_requests",
]

DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Sharded:
    engine: EngineFacts
    case: str
    tp: int
    args: dict
    model: models.TinyModel
    manifest: object
    base: object
    directory: Path
    requests: list
    reused: bool

    @property
    def pattern(self) -> str:
        return self.args.get("file_pattern", DEFAULT_PATTERN)


def shard_getter(world: World, engine: EngineFacts, via_cli: Iterable[tuple[str, int]] = ()):
    """`shard(case, tp, repo_prefix="tiny", seed=0, **args)`: the case pre-sharded for `engine`.

    Results are cached per request. Requests in `via_cli` (without extra args) go through
    `preheat prefetch ... --shard-config FILE --wait --json` as a subprocess.
    """
    cache: dict = {}
    via_cli = set(via_cli)

    def get(case: str, tp: int, repo_prefix: str = "tiny", seed: int = 0, **args) -> Sharded:
        key = (case, tp, repo_prefix, seed, tuple(sorted(args.items())))
        if key in cache:
            return cache[key]
        repo = world.case_repo(case, repo_prefix, seed=seed)
        name = f"{repo_prefix}-{case}"
        catalog = world.catalog()
        if (case, tp) in via_cli and not args:
            path = world.write_yaml(f"{engine.name}-{case}-{tp}.yaml", engine.yaml(tp))
            mark = world.mark()
            summary = world.cli(
                "prefetch",
                "hf-model",
                repo,
                "--artifact-name",
                name,
                "--shard-config",
                str(path),
                "--wait",
                "--json",
            ).ok()
            summary = summary.json
            assert summary["status"] == "succeeded"
            requests = world.requests_since(mark, repo)
            manifest = catalog.resolve(
                f"{summary['artifact']['name']}:{summary['artifact']['version']}"
            )
            assert Path(summary["artifact"]["path"]) == Path(location(catalog, manifest).path)
            reused = summary["reused"]
        else:
            outcome = world.prefetch(repo, engine.config(tp, **args), artifact_name=name)
            manifest = world.manifest(outcome)
            requests, reused = outcome.requests, outcome.record.reused
        base = catalog.manifest(manifest.lineage.name, manifest.lineage.version)
        cache[key] = Sharded(
            engine,
            case,
            tp,
            args,
            world.model(case, seed=seed),
            manifest,
            base,
            Path(location(catalog, manifest).path),
            requests,
            reused,
        )
        return cache[key]

    return get


def check_rank_files(s: Sharded, dtype: str = "auto") -> None:
    """Every rank of `s` holds exactly the reference: same names, dtypes, shapes and bytes."""
    src = source_tensors(s.model)
    for r in range(s.tp):
        got = rank_tensors(s.directory, s.pattern, r)
        ref = reference_rank(s.model.config, src, s.tp, r, dtype, s.engine)
        assert sorted(got) == sorted(ref), f"rank {r}: key set differs"
        for name, (st, arr) in ref.items():
            g_dtype, g_shape, g_bytes = got[name]
            assert (g_dtype, g_shape) == (st, arr.shape), f"rank {r} {name}"
            assert g_bytes == np.ascontiguousarray(arr).tobytes(), f"rank {r} {name}: bytes differ"


def copied_files(model) -> dict[str, bytes]:
    """The repo's top-level files that are neither weights nor a weight index."""
    return {
        p: b
        for p, b in model.files.items()
        if "/" not in p and not p.endswith(WEIGHT_SUFFIXES) and p not in INDEXES
    }
