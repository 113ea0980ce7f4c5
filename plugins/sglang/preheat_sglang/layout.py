"""What SGLang's ``sharded_state`` loader expects in each tensor-parallel rank's files.

Pure data and arithmetic, no torch and no sglang import. Every fact here was
read from SGLang's own source (see ``plugins/sglang/STATE_DICT.md`` for the
file and line of each) and cross-checked against the ``state_dict()`` of the
real SGLang model classes built on CPU.

Scope: dense, unquantized ``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM`` and ``Qwen3ForCausalLM`` with tensor parallelism only
(``--attn-dp-size 1``, ``--attn-cp-size 1``, ``--pp-size 1``, native model
implementation). Anything else changes names, shapes or the rank mapping and
must be refused by the slicer; :func:`unsupported_reasons` and
:data:`LAYOUT_CHANGING_SERVER_ARGS` say what.

Shapes are per rank. Notation used in comments: H hidden size, D head dim,
Hq query heads, Hkv key/value heads, I intermediate size, V vocab size,
Vp padded vocab size, tp tensor-parallel size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# --- target engine ---------------------------------------------------------

#: The SGLang release this layout was derived from.
TARGET_SGLANG_VERSION = "0.5.23"
#: Releases whose layout-relevant source was checked to be identical.
VERIFIED_SGLANG_VERSIONS = ("0.5.22", "0.5.23")
#: Version specifier for the files this layout describes.
SGLANG_VERSION_SPEC = ">=0.5.22,<0.5.24"

# --- files -----------------------------------------------------------------

#: ``ShardedStateLoader.DEFAULT_PATTERN``; ``rank`` is the global TP rank.
FILE_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
#: What a rank globs at load time (``pattern.format(rank=rank, part="*")``).
LOAD_GLOB = "model-rank-{rank}-part-*.safetensors"
#: ``ShardedStateLoader.save_model(max_size=None)`` writes one part per rank.
SAVE_MODEL_DEFAULT_MAX_SIZE = None
#: ``examples/runtime/engine/save_sharded_state.py --max-file-size`` default.
EXAMPLE_SCRIPT_MAX_SIZE = 5 * 1024**3
#: The only key accepted in ``--model-loader-extra-config`` for this format.
LOADER_EXTRA_CONFIG_KEYS = ("pattern",)

#: How the loader reacts to a mismatch between the files and the model.
LOADER_BEHAVIOUR = {
    "missing_key": "ValueError: Missing keys (...) in loaded state!",
    "unexpected_key": "KeyError (state_dict[key] lookup, not caught)",
    "key_in_two_files": "KeyError (the key was popped by the first file)",
    "file_tensor_smaller": "narrowed into the parameter, warning only",
    "file_tensor_larger": "RuntimeError from Tensor.copy_",
    "dtype_mismatch": "silently cast by Tensor.copy_",
    "no_files_for_rank": "ValueError: Could not find checkpoint files ...",
    "tp_mismatch": "not detected: keys match, shapes narrow or fail",
}

# --- model families --------------------------------------------------------

#: HF ``architectures[0]`` -> SGLang module family.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    # sglang/srt/models/mistral.py: ``class MistralForCausalLM(LlamaForCausalLM): pass``
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

#: Default vocabulary padding (``DEFAULT_VOCAB_PADDING_SIZE``).
VOCAB_PADDING = 64

#: With ``tie_word_embeddings`` ``lm_head`` *is* ``model.embed_tokens``; the
#: save and the load both drop all but the lexicographically smallest key of
#: tensors sharing storage, so only this key is written and expected.
TIED_SURVIVING_KEY = "lm_head.weight"
TIED_DROPPED_KEY = "model.embed_tokens.weight"

#: Persistent buffers per decoder layer, as (name under ``model.layers.{i}.``,
#: safetensors dtype, shape, value). None for these families in SGLang: the
#: rotary cache is non-persistent and RadixAttention only gains ``k_scale`` /
#: ``v_scale`` parameters when a quantization config is present.
PER_LAYER_BUFFERS: tuple[tuple[str, str, tuple[int, ...], float], ...] = ()

#: For comparison: what vLLM writes per layer and SGLang rejects (KeyError).
VLLM_ONLY_PER_LAYER_BUFFERS: tuple[tuple[str, str, tuple[int, ...], float], ...] = (
    ("self_attn.attn._k_scale", "F32", (), 1.0),
    ("self_attn.attn._v_scale", "F32", (), 1.0),
    ("self_attn.attn._q_scale", "F32", (), 1.0),
    ("self_attn.attn._prob_scale", "F32", (), 1.0),
)

#: Buffers that exist in the module tree but never reach the files.
NON_PERSISTENT_BUFFERS = ("model.layers.{i}.self_attn.rotary_emb.cos_sin_cache",)

#: Server arguments that change the per-rank layout away from this module's
#: description. A slicer for this layout must refuse them.
LAYOUT_CHANGING_SERVER_ARGS = {
    "attn_dp_size": "--attn-dp-size N>1 (or deprecated --dp-size N --enable-dp-attention): "
    "Qwen3 attention and Qwen2/Qwen3 embeddings shard over attn_tp = tp/N instead of tp",
    "attn_cp_size": "--attn-cp-size N>1: Qwen3 attention shards over tp/(attn_dp*N)",
    "enable_dp_lm_head": "--enable-dp-lm-head with attention DP: untied Llama/Qwen3 "
    "lm_head shards over attn_tp",
    "pp_size": "--pp-size N>1: each stage holds a subset of layers but files are "
    "named by TP rank only, so stages collide",
    "quantization": "--quantization (online or pre-quantized): extra scale tensors, "
    "other dtypes and shapes",
    "model_impl": "--model-impl transformers: a different module tree",
    "rl_on_policy_target": "--rl-on-policy-target: Qwen2/Qwen3 embeddings and norms become float32",
    "enable_lora": "--enable-lora: parameters may be padded (loader narrows)",
}

#: Top-level config keys that mark a mixture-of-experts checkpoint.
MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
#: Config keys or files that make SGLang build a quantized model.
QUANT_CONFIG_KEYS = ("quantization_config", "compression_config")
QUANT_SIDE_FILES = ("hf_quant_config.json", "quant_model_description.json")

#: Defaults of the transformers config classes (transformers 5.19.0, the
#: version SGLang 0.5.23 pins) for keys a config.json may omit. ``None``
#: means "derived": Hkv = Hq, D = H / Hq.
HF_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"num_key_value_heads": None, "head_dim": None},
    "MistralForCausalLM": {"num_key_value_heads": 8, "head_dim": None},
    "Qwen2ForCausalLM": {"num_key_value_heads": 32, "head_dim": None},
    "Qwen3ForCausalLM": {"num_key_value_heads": 32, "head_dim": 128},
}
#: Shared by all four classes: tie_word_embeddings False, attention_bias
#: False, mlp_bias False, hidden_act "silu", no dtype (read as float32).

#: ``_STR_DTYPE_TO_TORCH_DTYPE`` of sglang/srt/configs/model_config.py, as
#: safetensors dtype strings.
_DTYPES = {
    "half": "F16",
    "float16": "F16",
    "float": "F32",
    "float32": "F32",
    "bfloat16": "BF16",
}

# --- helpers ---------------------------------------------------------------


def _family(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architectures {archs!r}")
    return SUPPORTED_ARCHITECTURES[archs[0]]


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """Vp: ``vocab_size`` padded to 64, or to 64*tp when 64-padding is not divisible by tp.

    SGLang (VocabParallelEmbedding.__init__) widens the padding itself, so
    every tp is valid; vLLM instead requires the 64-padded size to divide.
    """
    padding = VOCAB_PADDING
    if _pad(vocab_size, padding) % tp != 0:
        padding *= tp
    return _pad(vocab_size, padding)


def vocab_rows(vocab_size: int, tp: int, rank: int) -> tuple[int, int, int]:
    """(first row, end row, end of real rows) of the padded vocab held by ``rank``.

    The rank's tensor has ``end - first`` rows; rows from ``real_end - first``
    on are zeros (padding past the real vocabulary).
    """
    per_rank = padded_vocab_size(vocab_size, tp) // tp
    first = rank * per_rank
    end = first + per_rank
    return first, end, max(first, min(end, vocab_size))


def _hf_default(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]`` if present (even null), else the transformers class default."""
    if key in config:
        return config[key]
    return HF_CONFIG_DEFAULTS[config["architectures"][0]].get(key)


def head_dim(config: Mapping[str, Any]) -> int:
    """D as SGLang computes it for the family."""
    hidden = config["hidden_size"]
    if _family(config) == "qwen2" and config.get("original_num_attention_heads"):
        return hidden // config["original_num_attention_heads"]
    return _hf_default(config, "head_dim") or hidden // config["num_attention_heads"]


def num_kv_heads(config: Mapping[str, Any]) -> int:
    """Hkv, with the transformers default when ``num_key_value_heads`` is unset."""
    return _hf_default(config, "num_key_value_heads") or config["num_attention_heads"]


def kv_layout(config: Mapping[str, Any], tp: int, rank: int) -> tuple[int, int, int]:
    """(KV heads per rank, replicas of each KV head, index of the rank's KV shard).

    QKVParallelLinear: when tp >= Hkv each rank holds one KV head, replicated
    tp/Hkv times, and rank r holds KV head r // (tp/Hkv); otherwise rank r
    holds KV heads [r*Hkv/tp, (r+1)*Hkv/tp).
    """
    hkv = num_kv_heads(config)
    if tp >= hkv:
        replicas = tp // hkv
        return 1, replicas, rank // replicas
    return hkv // tp, 1, rank


def attention_biases(config: Mapping[str, Any]) -> tuple[bool, bool]:
    """(qkv_proj has bias, o_proj has bias) for the family."""
    family = _family(config)
    if family == "qwen2":
        return True, False
    if family == "qwen3":
        bias = bool(config.get("attention_bias", False))
    else:
        bias = bool(config.get("attention_bias", False) or config.get("bias", False))
    return bias, bias


def model_dtype(config: Mapping[str, Any], dtype: str | None = None) -> str:
    """Safetensors dtype of every tensor, following SGLang's ``--dtype`` rule.

    ``auto`` (the default) takes the config's ``dtype`` / ``torch_dtype``; a
    missing one counts as float32, and float32 becomes float16.
    """
    choice = (dtype or "auto").lower()
    if choice != "auto":
        if choice not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        return _DTYPES[choice]
    found = config.get("dtype") or config.get("torch_dtype")
    resolved = _DTYPES.get(str(found).lower(), "F32") if found else "F32"
    return "F16" if resolved == "F32" else resolved


def _rope_dicts(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        d
        for d in (config.get("rope_scaling"), config.get("rope_parameters"))
        if isinstance(d, Mapping)
    ]


def unsupported_reasons(
    config: Mapping[str, Any], tp: int = 1, repo_files: Iterable[str] = ()
) -> list[str]:
    """Why this config cannot use the layout described here (empty when it can).

    ``repo_files`` are the checkpoint's file names, checked for the side files
    that make SGLang quantize (ModelOpt, ModelSlim).
    """
    reasons: list[str] = []
    for name in repo_files:
        if name in QUANT_SIDE_FILES:
            reasons.append(f"quantized checkpoint ({name})")
    archs = config.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        return [f"architecture {archs!r} is not one of {sorted(SUPPORTED_ARCHITECTURES)}"]
    for key in QUANT_CONFIG_KEYS:
        if config.get(key):
            reasons.append(f"quantized checkpoint ({key} in config.json)")
    for key in MOE_CONFIG_KEYS:
        if config.get(key):
            reasons.append(f"mixture-of-experts config ({key}={config[key]!r})")
    for key in ("vision_config", "audio_config", "text_config"):
        if key in config:
            reasons.append(f"multimodal or nested config ({key})")
    if config.get("hidden_act", "silu") != "silu":
        reasons.append(f"hidden_act {config['hidden_act']!r}: SGLang supports only silu")
    if _family(config) == "llama" and config.get("mlp_bias"):
        reasons.append("mlp_bias: SGLang's LlamaMLP has no MLP biases and would drop them")
    if any(d.get("use_fope") for d in _rope_dicts(config)):
        reasons.append("rope use_fope: FourierRotaryEmbedding adds cos_coef/sin_coef parameters")
    if tp < 1:
        reasons.append(f"tp must be >= 1, got {tp}")
        return reasons
    hq, hkv, inter = (
        config["num_attention_heads"],
        num_kv_heads(config),
        config["intermediate_size"],
    )
    if hq % tp:
        reasons.append(f"num_attention_heads {hq} not divisible by tp {tp}")
    if (hkv >= tp and hkv % tp) or (hkv < tp and tp % hkv):
        reasons.append(f"num_key_value_heads {hkv} and tp {tp}: neither divides the other")
    if inter % tp:
        reasons.append(f"intermediate_size {inter} not divisible by tp {tp}")
    return reasons


def expected_keys(
    config: Mapping[str, Any], tp: int, rank: int, *, dtype: str | None = None
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every key SGLang's ShardedStateLoader expects in rank ``rank``'s files.

    Maps key -> (safetensors dtype, per-rank shape), in the order
    ``ShardedStateLoader.save_model`` writes them (it matters only for how
    parts split at ``max_size``). ``config`` is the HF config.json as a dict;
    ``dtype`` is SGLang's ``--dtype`` (default ``auto``). Raises ValueError
    for configs or tp that SGLang would reject or lay out differently.
    """
    reasons = unsupported_reasons(config, tp)
    if reasons:
        raise ValueError("; ".join(reasons))
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} out of range for tp {tp}")
    family = _family(config)
    dt = model_dtype(config, dtype)
    h = config["hidden_size"]
    d = head_dim(config)
    nq = config["num_attention_heads"] // tp
    nkv, _, _ = kv_layout(config, tp, rank)
    inter = config["intermediate_size"] // tp
    vocab_rows_per_rank = padded_vocab_size(config["vocab_size"], tp) // tp
    qkv_bias, o_bias = attention_biases(config)
    tied = bool(config.get("tie_word_embeddings", False))
    qkv_rows = (nq + 2 * nkv) * d

    keys: dict[str, tuple[str, tuple[int, ...]]] = {}
    embed = (dt, (vocab_rows_per_rank, h))
    keys[TIED_SURVIVING_KEY if tied else "model.embed_tokens.weight"] = embed
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if family == "qwen3":
            keys[p + "self_attn.q_norm.weight"] = (dt, (d,))
            keys[p + "self_attn.k_norm.weight"] = (dt, (d,))
        keys[p + "self_attn.qkv_proj.weight"] = (dt, (qkv_rows, h))
        if qkv_bias:
            keys[p + "self_attn.qkv_proj.bias"] = (dt, (qkv_rows,))
        keys[p + "self_attn.o_proj.weight"] = (dt, (h, nq * d))
        if o_bias:
            keys[p + "self_attn.o_proj.bias"] = (dt, (h,))
        for name, buf_dtype, shape, _value in PER_LAYER_BUFFERS:
            keys[p + name] = (buf_dtype, shape)
        keys[p + "mlp.gate_up_proj.weight"] = (dt, (2 * inter, h))
        keys[p + "mlp.down_proj.weight"] = (dt, (h, inter))
        keys[p + "input_layernorm.weight"] = (dt, (h,))
        keys[p + "post_attention_layernorm.weight"] = (dt, (h,))
    keys["model.norm.weight"] = (dt, (h,))
    if not tied:
        keys["lm_head.weight"] = embed
    return keys
