"""config.json of the Llama, Mistral, Qwen2 and Qwen3 families, and their parameter shapes."""

from __future__ import annotations

from collections.abc import Mapping

from preheat_testing.safetensors_files import DTYPES
from preheat_testing.tokenizer_files import BOS, EOS

KINDS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

TRANSFORMERS_VERSION = "4.57.1"


def make_config(
    kind: str,
    *,
    dtype: str = "bfloat16",
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    intermediate: int = 512,
    layers: int = 2,
    vocab: int = 512,
    tied: bool = False,
    attention_bias: bool = False,
    max_position_embeddings: int = 512,
    rms_norm_eps: float = 1e-6,
    rope_theta: float = 10000.0,
) -> dict:
    """config.json of a model family with the field names transformers writes."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {sorted(KINDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")
    kv_heads = heads if kv_heads is None else kv_heads
    head_dim = hidden // heads if head_dim is None else head_dim
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
    if head_dim % 2:
        raise ValueError("head_dim must be even for rotary embeddings")
    if kind == "qwen2" and head_dim * heads != hidden:
        raise ValueError("qwen2 has no head_dim field: hidden must equal heads * head_dim")
    if kind in ("mistral", "qwen2") and attention_bias:
        raise ValueError(f"{kind} has no attention_bias option")
    cfg: dict = {
        "architectures": [KINDS[kind]],
        "model_type": kind,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
    }
    if kind != "qwen2":
        cfg["head_dim"] = head_dim
    if kind == "llama":
        cfg.update(attention_bias=attention_bias, mlp_bias=False, pretraining_tp=1)
    elif kind == "mistral":
        cfg.update(sliding_window=None)
    elif kind == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=layers)
    else:
        cfg.update(
            attention_bias=attention_bias,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=layers,
        )
    cfg.update(torch_dtype=dtype, dtype=dtype, transformers_version=TRANSFORMERS_VERSION)
    return cfg


def parameter_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of a config, in module order (tied lm_head omitted)."""
    h = config["hidden_size"]
    nq = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nq
    d = config.get("head_dim") or h // nq
    inter = config["intermediate_size"]
    kind = config["model_type"]
    qkv_bias = kind == "qwen2" or bool(config.get("attention_bias"))
    o_bias = kind != "qwen2" and bool(config.get("attention_bias"))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, rows in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (rows, h)
            if qkv_bias:
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (rows,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, nq * d)
        if o_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        if kind == "qwen3":
            shapes[f"{p}self_attn.q_norm.weight"] = (d,)
            shapes[f"{p}self_attn.k_norm.weight"] = (d,)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, inter)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes
