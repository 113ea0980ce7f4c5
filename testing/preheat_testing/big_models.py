"""Llama-shaped bf16 checkpoints of a chosen size, streamed to disk (benchmarks, big tests)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from preheat_testing.model_config import TRANSFORMERS_VERSION, make_config, parameter_shapes
from preheat_testing.model_files import json_bytes, split_sizes, write_files
from preheat_testing.safetensors_files import safetensors_header
from preheat_testing.tokenizer_files import BOS, EOS, tokenizer_files


def make_big_model(
    directory: str | os.PathLike, total_bytes: int, n_files: int, *, seed: int = 0
) -> dict:
    """Write a Llama-shaped bf16 checkpoint of about `total_bytes` over `n_files` files.

    Values are finite but meaningless (a random pool written at varying
    offsets), the largest tensor (each embedding) is about total_bytes/16, and
    data is streamed to disk without holding the model in memory. Returns the
    config.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    hidden = 128
    while 26 * (2 * hidden) ** 2 * 4 <= 0.875 * total_bytes:
        hidden *= 2
    head_dim = 128 if hidden >= 1024 else 64
    heads = hidden // head_dim
    kv_heads = max(1, heads // 4)
    intermediate = hidden * 7 // 2
    vocab = max(64, round(total_bytes / 32 / hidden / 64) * 64)
    per_layer = 2 * (
        2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    )
    layers = max(1, round((total_bytes - 4 * vocab * hidden) / per_layer))
    config = make_config(
        "llama",
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        layers=layers,
        vocab=vocab,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )
    shapes = list(parameter_shapes(config).items())
    sizes = [math.prod(s) * 2 for _, s in shapes]
    starts = split_sizes(sizes, n_files) + [len(shapes)]

    rng = np.random.default_rng(seed)
    pool_bits = rng.integers(0, 1 << 16, size=16 << 20, dtype=np.uint16)
    # keep sign and mantissa, force exponents of 2^-7: finite values of magnitude ~0.01
    pool = memoryview(((pool_bits & 0x807F) | 0x3C00).astype(np.uint16).tobytes())
    chunk = len(pool) // 2

    weight_map = {}
    for k in range(n_files):
        group = shapes[starts[k] : starts[k + 1]]
        fname = (
            "model.safetensors"
            if n_files == 1
            else f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        )
        header, _ = safetensors_header((n, "BF16", s) for n, s in group)
        with open(root / fname, "wb") as f:
            f.write(header)
            for _, shape in group:
                left = math.prod(shape) * 2
                while left:
                    off = int(rng.integers(0, chunk // 2)) * 2
                    n = min(left, chunk)
                    f.write(pool[off : off + n])
                    left -= n
        weight_map.update({n: fname for n, _ in group})
    if n_files > 1:
        (root / "model.safetensors.index.json").write_bytes(
            json_bytes({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map})
        )
    (root / "config.json").write_bytes(json_bytes(config))
    (root / "generation_config.json").write_bytes(
        json_bytes(
            {"bos_token_id": BOS, "eos_token_id": EOS, "transformers_version": TRANSFORMERS_VERSION}
        )
    )
    write_files(root, tokenizer_files(vocab, config["max_position_embeddings"]))
    return config
