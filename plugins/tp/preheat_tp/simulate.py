"""A numpy forward pass computed from per-rank tensors, the way tensor parallelism runs it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .plan import EMBED, LM_HEAD
from .shape import ModelShape


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding of x [tokens, heads, head_dim] at positions 0..tokens-1."""
    t, _, d = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float32) / d)
    angles = np.arange(t, dtype=np.float32)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    half = d // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention; q [t, nq, d], k and v [t, nkv, d] with nq a multiple of nkv."""
    t, nq, d = q.shape
    group = nq // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    scores = scores + np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", weights, v).reshape(t, nq * d)


def _get(sd: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(sd[name], dtype=np.float32)


def _fused(sd: Mapping[str, np.ndarray], prefix: str, fused: str, parts: Sequence[str], kind: str):
    """A fused tensor, or the concatenation of its unfused parts."""
    name = f"{prefix}{fused}.{kind}"
    if name in sd:
        return _get(sd, name)
    names = [f"{prefix}{p}.{kind}" for p in parts]
    if not all(n in sd for n in names):
        return None
    return np.concatenate([_get(sd, n) for n in names], axis=0)


def _vocab_shard(sd: Mapping[str, np.ndarray]) -> np.ndarray:
    return _get(sd, LM_HEAD if LM_HEAD in sd else EMBED)


def simulate_tp_forward(
    config: Mapping, rank_state_dicts: Sequence[Mapping[str, np.ndarray]], token_ids: Sequence[int]
) -> np.ndarray:
    """Logits [tokens, vocab] from per-rank state dicts (float arrays, one dict per rank).

    Column-parallel outputs (qkv, gate/up) stay on their rank, row-parallel
    outputs (o_proj, down_proj) are summed over ranks, embeddings are looked
    up in the rank holding each id and summed, and vocab-parallel logits are
    concatenated with the padding cut off. Decode bf16 arrays to float first.
    """
    shape = ModelShape.from_config(config)
    tp = len(rank_state_dicts)
    eps = config["rms_norm_eps"]
    theta = config.get("rope_theta", 10000.0)
    d = shape.head_dim
    nq = shape.heads // tp
    nkv = max(1, shape.kv_heads // tp)
    ids = np.asarray(token_ids, dtype=np.int64)
    t = len(ids)

    x = np.zeros((t, shape.hidden), dtype=np.float32)
    first = 0
    for sd in rank_state_dicts:
        table = _get(sd, EMBED) if EMBED in sd else _vocab_shard(sd)
        local = ids - first
        hit = (local >= 0) & (local < table.shape[0])
        x[hit] += table[local[hit]]
        first += table.shape[0]

    for i in range(shape.layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        attn_sum = np.zeros_like(x)
        mlp_sum = np.zeros_like(x)
        for sd in rank_state_dicts:
            h = _rms_norm(x, _get(sd, p + "input_layernorm.weight"), eps)
            qkv = h @ _fused(sd, a, "qkv_proj", ("q_proj", "k_proj", "v_proj"), "weight").T
            bias = _fused(sd, a, "qkv_proj", ("q_proj", "k_proj", "v_proj"), "bias")
            if bias is not None:
                qkv = qkv + bias
            q = qkv[:, : nq * d].reshape(t, nq, d)
            k = qkv[:, nq * d : (nq + nkv) * d].reshape(t, nkv, d)
            v = qkv[:, (nq + nkv) * d :].reshape(t, nkv, d)
            if a + "q_norm.weight" in sd:
                q = _rms_norm(q, _get(sd, a + "q_norm.weight"), eps)
                k = _rms_norm(k, _get(sd, a + "k_norm.weight"), eps)
            attn_sum += (
                _attention(_rope(q, theta), _rope(k, theta), v) @ _get(sd, a + "o_proj.weight").T
            )
        if a + "o_proj.bias" in rank_state_dicts[0]:
            attn_sum += _get(rank_state_dicts[0], a + "o_proj.bias")
        x = x + attn_sum

        for sd in rank_state_dicts:
            h = _rms_norm(x, _get(sd, p + "post_attention_layernorm.weight"), eps)
            gate_up = (
                h @ _fused(sd, p + "mlp.", "gate_up_proj", ("gate_proj", "up_proj"), "weight").T
            )
            gate, up = np.split(gate_up, 2, axis=1)
            act = gate / (1.0 + np.exp(-gate)) * up
            mlp_sum += act @ _get(sd, p + "mlp.down_proj.weight").T
        x = x + mlp_sum

    logits = []
    for sd in rank_state_dicts:
        h = _rms_norm(x, _get(sd, "model.norm.weight"), eps)
        logits.append(h @ _vocab_shard(sd).T)
    return np.concatenate(logits, axis=1)[:, : shape.vocab].astype(np.float32)
