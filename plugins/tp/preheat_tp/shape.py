"""Model dimensions that decide tensor-parallel layouts, and tp validity checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


# transformers' config defaults for keys a config.json may omit
_HF_DEFAULT_KV_HEADS = {"mistral": 8}
_HF_DEFAULT_HEAD_DIM = {"qwen3": 128}


class UnsupportedModel(ValueError):
    """The checkpoint is not one whose tensor-parallel layout is known here."""


@dataclass(frozen=True)
class ModelShape:
    """Dimensions and optional tensors of a decoder-only model of a supported family."""

    architecture: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: Mapping) -> ModelShape:
        """Read a Hugging Face config.json dict; raise UnsupportedModel for other layouts."""
        archs = config.get("architectures") or []
        if len(archs) != 1 or archs[0] not in FAMILIES:
            raise UnsupportedModel(
                f"architectures {archs!r} are not supported; "
                f"supported: {', '.join(sorted(FAMILIES))}"
            )
        arch = archs[0]
        family = FAMILIES[arch]
        if config.get("quantization_config"):
            raise UnsupportedModel(
                "quantized checkpoints change tensor names and layouts; use an unquantized model"
            )
        moe = [k for k in _MOE_KEYS if config.get(k)]
        if moe:
            raise UnsupportedModel(f"mixture-of-experts models are not supported ({moe[0]} is set)")
        if config.get("mlp_bias"):
            raise UnsupportedModel("mlp_bias=true is not supported")
        if family == "qwen3" and config.get("attention_bias"):
            raise UnsupportedModel(
                "Qwen3 with attention_bias=true is not supported: its o_proj bias has no "
                "tensor-parallel counterpart"
            )
        missing = [
            k
            for k in (
                "hidden_size",
                "num_attention_heads",
                "intermediate_size",
                "num_hidden_layers",
                "vocab_size",
            )
            if not isinstance(config.get(k), int)
        ]
        if missing:
            raise UnsupportedModel(f"config.json lacks integer field(s) {', '.join(missing)}")
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or _HF_DEFAULT_KV_HEADS.get(family, heads)
        if heads % kv_heads:
            raise UnsupportedModel(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = config.get("head_dim") or _HF_DEFAULT_HEAD_DIM.get(family, hidden // heads)
        attention_bias = bool(config.get("attention_bias"))
        return cls(
            architecture=arch,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=family in ("llama", "mistral") and attention_bias,
            qk_norm=family == "qwen3",
        )

    @property
    def q_size(self) -> int:
        """Rows of q_proj: heads * head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Rows of k_proj and of v_proj: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    def padded_vocab(self, multiple: int = 64) -> int:
        """Vocab size rounded up to a multiple of `multiple`."""
        return -(-self.vocab // multiple) * multiple


def _problems(shape: ModelShape, tp: int, vocab_multiple: int) -> list[str]:
    problems = []
    if shape.heads % tp:
        problems.append(f"num_attention_heads={shape.heads} is not divisible by tp={tp}")
    if shape.kv_heads % tp and tp % shape.kv_heads:
        problems.append(
            f"num_key_value_heads={shape.kv_heads} and tp={tp} do not divide one another "
            "(kv heads are split when tp divides them, replicated when they divide tp)"
        )
    if shape.intermediate % tp:
        problems.append(f"intermediate_size={shape.intermediate} is not divisible by tp={tp}")
    padded = shape.padded_vocab(vocab_multiple)
    if padded % tp:
        problems.append(
            f"vocab_size={shape.vocab} padded to a multiple of {vocab_multiple} is {padded}, "
            f"which is not divisible by tp={tp}"
        )
    return problems


def _multiple(shape: ModelShape, tp: int, vocab_multiple: int, widen_vocab: bool) -> int:
    """The vocab padding at `tp`; with `widen_vocab`, `vocab_multiple * tp` when tp does not divide
    the padded size (SGLang's rule, which makes the vocab fit every tp)."""
    if widen_vocab and shape.padded_vocab(vocab_multiple) % tp:
        return vocab_multiple * tp
    return vocab_multiple


def valid_tps(
    shape: ModelShape, vocab_multiple: int = 64, *, widen_vocab: bool = False
) -> list[int]:
    """Every tensor-parallel size this model can be split into."""
    return [
        tp
        for tp in range(1, shape.heads + 1)
        if not _problems(shape, tp, _multiple(shape, tp, vocab_multiple, widen_vocab))
    ]


def check_tp(
    shape: ModelShape, tp: int, vocab_multiple: int = 64, *, widen_vocab: bool = False
) -> list[str]:
    """Why `tp` does not fit `shape` (empty when it does); each problem names the fix."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        return [f"tp must be a positive integer, got {tp!r}"]
    problems = _problems(shape, tp, _multiple(shape, tp, vocab_multiple, widen_vocab))
    if problems:
        fits = ", ".join(map(str, valid_tps(shape, vocab_multiple, widen_vocab=widen_vocab)))
        problems = [f"{p}; choose tp from: {fits}" for p in problems]
    return problems
