"""A numpy reference forward pass of the generated models, and greedy decoding with it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotary(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    freqs = positions[:, None].astype(np.float32) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def forward(
    config: Mapping, weights: Mapping[str, np.ndarray], token_ids: Sequence[int]
) -> np.ndarray:
    """Logits [len(token_ids), vocab] of the unsharded HF model, in float32."""
    if config.get("rope_scaling"):
        raise NotImplementedError("rope_scaling is not supported by the reference forward")
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    h = config["hidden_size"]
    nq = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nq
    d = config.get("head_dim") or h // nq
    eps = config["rms_norm_eps"]
    ids = np.asarray(token_ids, dtype=np.int64)
    t = len(ids)
    cos, sin = _rotary(np.arange(t), d, config.get("rope_theta", 10000.0))
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)

    x = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name: str, inp: np.ndarray, p: str = p) -> np.ndarray:
            out = inp @ w[p + name + ".weight"].T
            bias = w.get(p + name + ".bias")
            return out if bias is None else out + bias

        a = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", a).reshape(t, nq, d)
        k = lin("self_attn.k_proj", a).reshape(t, nkv, d)
        v = lin("self_attn.v_proj", a).reshape(t, nkv, d)
        if p + "self_attn.q_norm.weight" in w:
            q = _rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = nq // nkv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(t, nq * d)
        x = x + lin("self_attn.o_proj", attn)

        m = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = lin("mlp.gate_proj", m)
        up = lin("mlp.up_proj", m)
        x = x + lin("mlp.down_proj", _silu(gate) * up)

    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None or config.get("tie_word_embeddings"):
        head = w["model.embed_tokens.weight"]
    return (x @ head.T).astype(np.float32)


def greedy(
    config: Mapping, weights: Mapping[str, np.ndarray], prompt: Sequence[int], n: int
) -> list[int]:
    """The `n` tokens greedy decoding appends to `prompt` (no stopping at EOS)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(forward(config, weights, ids)[-1])))
    return ids[len(prompt) :]
