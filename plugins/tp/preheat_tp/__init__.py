"""Tensor-parallel slicing of Llama, Mistral, Qwen2 and Qwen3 checkpoints, with numpy."""

from .dtypes import bf16_to_float32, convert, float32_to_bf16, normalize_dtype, to_float32
from .plan import (
    OutputTensor,
    PlanError,
    Slice,
    Zeros,
    check_sources,
    expected_sources,
    kv_shard,
    plan_rank,
    plan_ranks,
    vocab_rows,
)
from .shape import FAMILIES, ModelShape, UnsupportedModel, check_tp, valid_tps
from .simulate import simulate_tp_forward
from .tensors import byte_ranges, materialize

__all__ = [
    "FAMILIES",
    "ModelShape",
    "OutputTensor",
    "PlanError",
    "Slice",
    "UnsupportedModel",
    "Zeros",
    "bf16_to_float32",
    "byte_ranges",
    "check_sources",
    "check_tp",
    "convert",
    "expected_sources",
    "float32_to_bf16",
    "kv_shard",
    "materialize",
    "normalize_dtype",
    "plan_rank",
    "plan_ranks",
    "simulate_tp_forward",
    "to_float32",
    "valid_tps",
    "vocab_rows",
]
