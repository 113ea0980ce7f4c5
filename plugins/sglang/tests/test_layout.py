"""Pins the SGLang sharded_state key list for tiny configs.

The expected lists are literal on purpose: retargeting another SGLang release
must show up as a diff here. They are the filtered ``state_dict()`` of SGLang
0.5.23's own model classes for these configs (H 128, Hq 4, Hkv 2, D 32,
I 256, V 1000 -> Vp 1024, 2 layers, bfloat16), in save order.
"""

from __future__ import annotations

import pytest

from preheat_sglang import layout

TINY = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "vocab_size": 1000,
    "num_hidden_layers": 2,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def tiny(arch: str, tied: bool, **extra) -> dict:
    return {**TINY, "architectures": [arch], "tie_word_embeddings": tied, **extra}


def as_list(keys: dict) -> list:
    return [(name, dtype, shape) for name, (dtype, shape) in keys.items()]


LLAMA_TP1_UNTIED = [
    ("model.embed_tokens.weight", "BF16", (1024, 128)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (512, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 256)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (512, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 256)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
    ("lm_head.weight", "BF16", (1024, 128)),
]

LLAMA_TP1_TIED = [
    ("lm_head.weight", "BF16", (1024, 128)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (512, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 256)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (512, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 256)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
]

LLAMA_TP2_UNTIED = [
    ("model.embed_tokens.weight", "BF16", (512, 128)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
    ("lm_head.weight", "BF16", (512, 128)),
]

LLAMA_TP2_TIED = [
    ("lm_head.weight", "BF16", (512, 128)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
]

QWEN3_TP2_UNTIED = [
    ("model.embed_tokens.weight", "BF16", (512, 128)),
    ("model.layers.0.self_attn.q_norm.weight", "BF16", (32,)),
    ("model.layers.0.self_attn.k_norm.weight", "BF16", (32,)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.q_norm.weight", "BF16", (32,)),
    ("model.layers.1.self_attn.k_norm.weight", "BF16", (32,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
    ("lm_head.weight", "BF16", (512, 128)),
]

QWEN2_TP2_TIED = [
    ("lm_head.weight", "BF16", (512, 128)),
    ("model.layers.0.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.self_attn.qkv_proj.bias", "BF16", (128,)),
    ("model.layers.0.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.0.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.0.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.0.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.0.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.self_attn.qkv_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.self_attn.qkv_proj.bias", "BF16", (128,)),
    ("model.layers.1.self_attn.o_proj.weight", "BF16", (128, 64)),
    ("model.layers.1.mlp.gate_up_proj.weight", "BF16", (256, 128)),
    ("model.layers.1.mlp.down_proj.weight", "BF16", (128, 128)),
    ("model.layers.1.input_layernorm.weight", "BF16", (128,)),
    ("model.layers.1.post_attention_layernorm.weight", "BF16", (128,)),
    ("model.norm.weight", "BF16", (128,)),
]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "MistralForCausalLM"])
@pytest.mark.parametrize(
    ("tp", "tied", "expected"),
    [
        (1, False, LLAMA_TP1_UNTIED),
        (1, True, LLAMA_TP1_TIED),
        (2, False, LLAMA_TP2_UNTIED),
        (2, True, LLAMA_TP2_TIED),
    ],
)
def test_llama_family_keys(arch, tp, tied, expected):
    for rank in range(tp):
        assert as_list(layout.expected_keys(tiny(arch, tied), tp, rank)) == expected


def test_qwen3_keys():
    for rank in range(2):
        got = layout.expected_keys(tiny("Qwen3ForCausalLM", False), 2, rank)
        assert as_list(got) == QWEN3_TP2_UNTIED


def test_qwen2_keys():
    for rank in range(2):
        got = layout.expected_keys(tiny("Qwen2ForCausalLM", True), 2, rank)
        assert as_list(got) == QWEN2_TP2_TIED


def test_attention_bias():
    llama = layout.expected_keys(tiny("LlamaForCausalLM", False, attention_bias=True), 2, 1)
    qwen3 = layout.expected_keys(tiny("Qwen3ForCausalLM", False, attention_bias=True), 2, 1)
    for keys in (llama, qwen3):
        assert keys["model.layers.0.self_attn.qkv_proj.bias"] == ("BF16", (128,))
        assert keys["model.layers.0.self_attn.o_proj.bias"] == ("BF16", (128,))
    qwen2 = layout.expected_keys(tiny("Qwen2ForCausalLM", False), 1, 0)
    assert "model.layers.0.self_attn.o_proj.bias" not in qwen2


def test_kv_head_replication():
    # tp 4 > Hkv 2: one KV head per rank, each replicated twice.
    cfg = tiny("LlamaForCausalLM", False)
    assert [layout.kv_layout(cfg, 4, r) for r in range(4)] == [
        (1, 2, 0),
        (1, 2, 0),
        (1, 2, 1),
        (1, 2, 1),
    ]
    keys = layout.expected_keys(cfg, 4, 3)
    assert keys["model.layers.0.self_attn.qkv_proj.weight"] == ("BF16", (96, 128))
    assert keys["model.layers.0.self_attn.o_proj.weight"] == ("BF16", (128, 32))
    assert keys["model.embed_tokens.weight"] == ("BF16", (256, 128))


def test_vocab_padding_widens_for_tp():
    assert layout.VOCAB_PADDING == 64
    assert layout.padded_vocab_size(1000, 1) == 1024
    assert layout.padded_vocab_size(1000, 2) == 1024
    # 1024 % 3 != 0: SGLang pads to a multiple of 64 * 3 instead.
    assert layout.padded_vocab_size(1000, 3) == 1152
    assert layout.vocab_rows(1000, 3, 2) == (768, 1152, 1000)
    assert layout.vocab_rows(1000, 2, 1) == (512, 1024, 1000)
    cfg = tiny(
        "LlamaForCausalLM",
        False,
        hidden_size=192,
        num_attention_heads=6,
        num_key_value_heads=3,
        intermediate_size=384,
    )
    keys = layout.expected_keys(cfg, 3, 2)
    assert keys["model.embed_tokens.weight"] == ("BF16", (384, 192))
    assert keys["model.layers.0.self_attn.qkv_proj.weight"] == ("BF16", (128, 192))


def test_transformers_defaults_for_missing_keys():
    # Qwen3Config defaults head_dim to 128 and num_key_value_heads to 32;
    # MistralConfig defaults num_key_value_heads to 8; Llama derives both.
    base = {"hidden_size": 256, "intermediate_size": 256, "vocab_size": 1000}
    base["num_hidden_layers"] = 1
    qwen3 = {**base, "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32}
    mistral = {**base, "architectures": ["MistralForCausalLM"], "num_attention_heads": 8}
    llama = {**base, "architectures": ["LlamaForCausalLM"], "num_attention_heads": 8}
    assert (layout.head_dim(qwen3), layout.num_kv_heads(qwen3)) == (128, 32)
    assert (layout.head_dim(mistral), layout.num_kv_heads(mistral)) == (32, 8)
    assert (layout.head_dim(llama), layout.num_kv_heads(llama)) == (32, 8)
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert layout.expected_keys(qwen3, 2, 1)[qkv] == ("F16", (6144, 256))
    assert layout.expected_keys(mistral, 4, 1)[qkv] == ("F16", (192, 256))


def test_no_buffers():
    assert layout.PER_LAYER_BUFFERS == ()
    keys = layout.expected_keys(tiny("LlamaForCausalLM", False), 2, 0)
    assert not [k for k in keys if "attn.attn." in k or "rotary_emb" in k]


@pytest.mark.parametrize(
    ("config", "dtype", "expected"),
    [
        ({"torch_dtype": "bfloat16"}, None, "BF16"),
        ({"dtype": "float16", "torch_dtype": "bfloat16"}, None, "F16"),
        ({"torch_dtype": "float32"}, None, "F16"),
        ({}, None, "F16"),
        ({"torch_dtype": "bfloat16"}, "float32", "F32"),
        ({"torch_dtype": "float32"}, "bfloat16", "BF16"),
    ],
)
def test_model_dtype(config, dtype, expected):
    assert layout.model_dtype(config, dtype) == expected


@pytest.mark.parametrize(
    ("extra", "tp", "needle"),
    [
        ({"architectures": ["Qwen2MoeForCausalLM"]}, 1, "architecture"),
        ({"quantization_config": {"quant_method": "fp8"}}, 1, "quantized"),
        ({"num_experts": 8}, 1, "mixture-of-experts"),
        ({"mlp_bias": True}, 1, "mlp_bias"),
        ({"hidden_act": "gelu"}, 1, "silu"),
        ({"rope_scaling": {"rope_type": "default", "use_fope": True}}, 1, "use_fope"),
        ({}, 8, "num_attention_heads"),
        ({"num_attention_heads": 6, "num_key_value_heads": 3}, 2, "num_key_value_heads"),
        ({"intermediate_size": 255}, 2, "intermediate_size"),
    ],
)
def test_refusals(extra, tp, needle):
    cfg = {**tiny("LlamaForCausalLM", False), **extra}
    assert any(needle in r for r in layout.unsupported_reasons(cfg, tp))
    with pytest.raises(ValueError):
        layout.expected_keys(cfg, tp, 0)


def test_quant_side_files():
    cfg = tiny("LlamaForCausalLM", False)
    assert layout.unsupported_reasons(cfg, 1, ["config.json", "model.safetensors"]) == []
    assert layout.unsupported_reasons(cfg, 1, ["hf_quant_config.json"])


def test_rank_out_of_range():
    with pytest.raises(ValueError):
        layout.expected_keys(tiny("LlamaForCausalLM", False), 2, 2)


def test_constants():
    assert layout.FILE_PATTERN == "model-rank-{rank}-part-{part}.safetensors"
    assert layout.TIED_SURVIVING_KEY == "lm_head.weight"
    assert set(layout.SUPPORTED_ARCHITECTURES) == {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    }
    assert layout.TARGET_SGLANG_VERSION == "0.5.23"
