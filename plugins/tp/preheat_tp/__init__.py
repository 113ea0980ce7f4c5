"""Tensor-parallel slicing of Llama, Mistral, Qwen2 and Qwen3 checkpoints, with numpy.

An engine plugin built on it is a declaration (`TensorParallelEngine`: an
`EngineLayout`, an args class, a resolver). Names are imported lazily so that
plugins registering with preheat stay cheap to import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Buffer": "layout",
    "EngineLayout": "layout",
    "EngineProcess": "engine",
    "FAMILIES": "shape",
    "ModelShape": "shape",
    "OutputTensor": "plan",
    "PlanError": "plan",
    "Slice": "plan",
    "TPJob": "layout",
    "TensorParallelEngine": "engine_plugin",
    "TensorParallelSharder": "sharder",
    "UnsupportedModel": "shape",
    "Zeros": "plan",
    "bf16_to_float32": "dtypes",
    "byte_ranges": "tensors",
    "check_sources": "plan",
    "check_tp": "shape",
    "convert": "dtypes",
    "expected_sources": "plan",
    "float32_to_bf16": "dtypes",
    "kv_shard": "plan",
    "materialize": "tensors",
    "normalize_dtype": "dtypes",
    "plan_rank": "plan",
    "plan_ranks": "plan",
    "simulate_tp_forward": "simulate",
    "to_float32": "dtypes",
    "valid_tps": "shape",
    "vocab_rows": "plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
