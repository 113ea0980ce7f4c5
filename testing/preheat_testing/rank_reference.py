"""What each rank of a tensor-parallel shard must hold, built from the source with plain numpy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from preheat_testing import models
from preheat_testing.engine_facts import VLLM, EngineFacts

RAW = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def source_tensors(model) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (safetensors dtype, stored array; bf16 as uint16 bits) of the original files."""
    out = {}
    for path, data in model.files.items():
        if not path.endswith(".safetensors"):
            continue
        for name, info in models.parse_safetensors_header(data).items():
            raw = np.frombuffer(data[info.start : info.end], dtype=RAW[info.dtype])
            assert name not in out
            out[name] = (info.dtype, raw.reshape(info.shape))
    return out


def convert(dtype: str, raw: np.ndarray, target: str) -> np.ndarray:
    """A stored array in another dtype, rounding to nearest even (bf16 via its bit pattern)."""
    if dtype == target:
        return raw
    values = models.decode(raw.tobytes(), dtype, raw.shape)
    if target == "F32":
        return values
    if target == "F16":
        return values.astype(np.float16)
    return models.bf16_bits(values)


def reference_rank(
    config: Mapping,
    src: Mapping[str, tuple[str, np.ndarray]],
    tp: int,
    r: int,
    dtype: str = "auto",
    engine: EngineFacts = VLLM,
) -> dict[str, tuple[str, np.ndarray]]:
    """What `engine`'s rank r of tp holds: name -> (safetensors dtype, stored array)."""
    h, hq = config["hidden_size"], config["num_attention_heads"]
    hkv = config.get("num_key_value_heads") or hq
    d = config.get("head_dim") or h // hq
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    tied = config.get("tie_word_embeddings", False)
    nq = hq // tp
    if tp >= hkv:  # each kv head replicated tp/hkv times
        nkv, s = 1, r // (tp // hkv)
    else:
        nkv, s = hkv // tp, r
    q = slice(r * nq * d, (r + 1) * nq * d)
    kv = slice(s * nkv * d, (s + 1) * nkv * d)
    mlp = slice(r * inter // tp, (r + 1) * inter // tp)
    padded = engine.padded_vocab(vocab, tp)
    rows = slice(r * padded // tp, (r + 1) * padded // tp)

    def get(name: str) -> tuple[str, np.ndarray]:
        st, raw = src[name]
        target = st if dtype == "auto" else ST_DTYPE[dtype]
        return target, convert(st, raw, target)

    def vocab_shard(name: str) -> tuple[str, np.ndarray]:
        st, raw = get(name)
        full = np.zeros((padded, h), dtype=raw.dtype)
        full[:vocab] = raw
        return st, full[rows]

    out: dict[str, tuple[str, np.ndarray]] = {}
    if tied:
        # of tensors sharing storage the engines keep the lexicographically smallest name
        out["lm_head.weight"] = vocab_shard("model.embed_tokens.weight")
    else:
        out["model.embed_tokens.weight"] = vocab_shard("model.embed_tokens.weight")
        out["lm_head.weight"] = vocab_shard("lm_head.weight")
    out["model.norm.weight"] = get("model.norm.weight")
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        for kind in ("weight", "bias"):
            if a + "q_proj." + kind in src:
                parts = [get(a + f"{x}_proj." + kind) for x in "qkv"]
                st = parts[0][0]
                out[a + "qkv_proj." + kind] = (
                    st,
                    np.concatenate([parts[0][1][q], parts[1][1][kv], parts[2][1][kv]]),
                )
        st, o = get(a + "o_proj.weight")
        out[a + "o_proj.weight"] = (st, o[:, q])
        for name in ("o_proj.bias", "q_norm.weight", "k_norm.weight"):
            if a + name in src:
                out[a + name] = get(a + name)
        (st, gate), (_, up) = get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")
        out[p + "mlp.gate_up_proj.weight"] = (st, np.concatenate([gate[mlp], up[mlp]]))
        st, down = get(p + "mlp.down_proj.weight")
        out[p + "mlp.down_proj.weight"] = (st, down[:, mlp])
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = get(p + name)
        for name, buf_dtype, shape, value in engine.layer_buffers:
            out[p + name] = (buf_dtype, np.full(shape, value, dtype=RAW[buf_dtype]))
    return out
