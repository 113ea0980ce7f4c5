"""Tiny Hugging Face causal LMs made with numpy, and a numpy reference forward pass.

Models are generated without torch: config.json, generation_config.json, a
byte-level BPE tokenizer, a model card and safetensors weights with the exact
parameter names of the Llama, Mistral, Qwen2 and Qwen3 families.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preheat_testing.big_models import make_big_model
from preheat_testing.model_config import KINDS, TRANSFORMERS_VERSION, make_config, parameter_shapes
from preheat_testing.model_files import json_bytes, weight_files, write_files
from preheat_testing.reference_forward import forward, greedy
from preheat_testing.safetensors_files import (
    DTYPES,
    TensorInfo,
    bf16_bits,
    bf16_to_float32,
    decode,
    encode,
    load_safetensors,
    load_safetensors_dir,
    parse_safetensors_header,
    read_safetensors_header,
    safetensors_bytes,
    safetensors_header,
)
from preheat_testing.tokenizer_files import BOS, EOS, UNK, tokenizer_files

__all__ = [
    "BOS",
    "CASES",
    "DTYPES",
    "EOS",
    "KINDS",
    "TRANSFORMERS_VERSION",
    "UNK",
    "TensorInfo",
    "TinyModel",
    "bf16_bits",
    "bf16_to_float32",
    "build_case",
    "build_model",
    "decode",
    "encode",
    "forward",
    "greedy",
    "load_safetensors",
    "load_safetensors_dir",
    "make_big_model",
    "make_config",
    "make_model",
    "parameter_shapes",
    "parse_safetensors_header",
    "read_safetensors_header",
    "safetensors_bytes",
    "safetensors_header",
    "tokenizer_files",
    "write_case",
    "write_files",
    "write_model",
]


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return 0.1 * rng.standard_normal(shape, dtype=np.float32)
    # embeddings and lm_head: unit-ish logits after the final norm; linears: fan-in scaled
    std = (
        4.0 / math.sqrt(shape[1])
        if "embed" in name or "lm_head" in name
        else 1.0 / math.sqrt(shape[1])
    )
    return std * rng.standard_normal(shape, dtype=np.float32)


@dataclass
class TinyModel:
    """A generated model: its config, weights (float32 copies of the stored values) and files."""

    config: dict
    weights: dict[str, np.ndarray]
    files: dict[str, bytes] = field(repr=False)

    def write(self, directory: str | os.PathLike) -> Path:
        """Write every file under `directory` (created if missing) and return it."""
        return write_files(directory, self.files)


def build_model(
    kind: str,
    *,
    parts: int = 1,
    subfolders: bool = False,
    seed: int = 0,
    **options,
) -> TinyModel:
    """Generate a tiny model of `kind` (llama, mistral, qwen2, qwen3).

    `options` are those of `make_config` (dtype, hidden, heads, kv_heads,
    head_dim, intermediate, layers, vocab, tied, attention_bias, ...).
    `parts` > 1 splits the weights into several files with an index;
    `subfolders` adds `original/params.json` and `extra/notes.txt`.
    """
    config = make_config(kind, **options)
    st_dtype = DTYPES[config["torch_dtype"]]
    rng = np.random.default_rng(seed)
    stored: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(config).items():
        stored[name] = encode(_init(rng, name, shape), st_dtype)
        weights[name] = decode(stored[name].tobytes(), st_dtype, shape)

    files = {
        "config.json": json_bytes(config),
        "generation_config.json": json_bytes(
            {
                "bos_token_id": BOS,
                "eos_token_id": EOS,
                "do_sample": False,
                "transformers_version": TRANSFORMERS_VERSION,
            }
        ),
        "README.md": _model_card(kind, config).encode(),
        **tokenizer_files(config["vocab_size"], config["max_position_embeddings"]),
        **weight_files({n: (st_dtype, a) for n, a in stored.items()}, parts),
    }
    if subfolders:
        files["original/params.json"] = json_bytes(
            {
                "dim": config["hidden_size"],
                "n_layers": config["num_hidden_layers"],
                "n_heads": config["num_attention_heads"],
                "n_kv_heads": config["num_key_value_heads"],
                "vocab_size": config["vocab_size"],
                "norm_eps": config["rms_norm_eps"],
                "rope_theta": config["rope_theta"],
            }
        )
        files["extra/notes.txt"] = b"Generated test model; weights are random.\n"
    return TinyModel(config, weights, files)


def make_model(kind: str, **options) -> dict[str, bytes]:
    """Files of a tiny model (repo path -> bytes); options as in `build_model`."""
    return build_model(kind, **options).files


def write_model(directory: str | os.PathLike, kind: str, **options) -> TinyModel:
    """Generate a tiny model and write its files under `directory`."""
    model = build_model(kind, **options)
    model.write(directory)
    return model


def _model_card(kind: str, config: Mapping) -> str:
    return (
        "---\n"
        "license: apache-2.0\n"
        "library_name: transformers\n"
        "pipeline_tag: text-generation\n"
        "tags:\n"
        f"- {kind}\n"
        "- tiny\n"
        "- test-model\n"
        "---\n\n"
        f"# Tiny {config['architectures'][0]}\n\n"
        f"A randomly initialised {kind} model with {config['num_hidden_layers']} layers and "
        f"hidden size {config['hidden_size']}, for tests. Its outputs mean nothing.\n"
    )


# ---------------------------------------------------------------------- cases

# Named models covering the tensor-parallel layouts; each is valid at tp 1, 2 and 4.
CASES: dict[str, dict] = {
    # GQA with head_dim given explicitly (heads * head_dim != hidden)
    "llama_gqa": dict(kind="llama", hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=512, vocab=512),
    # kv heads replicated at tp 4
    "mistral_kv2": dict(kind="mistral", hidden=256, heads=4, kv_heads=2, intermediate=640, vocab=384),
    "qwen2_bias": dict(kind="qwen2", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=448),
    "qwen3_qk_norm": dict(kind="qwen3", hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=384, vocab=512),
    # tied embeddings with a single kv head (MQA)
    "llama_tied_mqa": dict(kind="llama", hidden=256, heads=4, kv_heads=1, intermediate=512, vocab=320, tied=True),
    # vocab 130 pads to 192: at tp 4 the last rank holds only padding rows
    "qwen2_small_vocab_tied": dict(kind="qwen2", hidden=256, heads=4, kv_heads=2, intermediate=256, vocab=130, tied=True),
    "llama_odd_vocab_fp16": dict(kind="llama", dtype="float16", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=1000),
    "llama_attention_bias": dict(kind="llama", hidden=256, heads=4, kv_heads=4, intermediate=512, vocab=256, attention_bias=True),
    "qwen3_tied_kv2": dict(kind="qwen3", hidden=128, heads=4, kv_heads=2, head_dim=64, intermediate=256, vocab=300, tied=True, layers=3),
    "llama_multipart": dict(kind="llama", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=512, parts=3),
    "mistral_subfolders_fp32": dict(kind="mistral", dtype="float32", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=576, parts=2, subfolders=True),
}  # fmt: skip


def build_case(name: str, **overrides) -> TinyModel:
    """The named model of `CASES`, with optional option overrides."""
    opts = {**CASES[name], **overrides}
    return build_model(opts.pop("kind"), **opts)


def write_case(directory: str | os.PathLike, name: str, **overrides) -> TinyModel:
    """Write the named model of `CASES` under `directory`."""
    model = build_case(name, **overrides)
    model.write(directory)
    return model
