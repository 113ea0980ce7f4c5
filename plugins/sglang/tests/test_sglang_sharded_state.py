"""What only SGLang's `sharded_state` files hold, checked without an engine.

The checks every engine shares (bit-for-bit rank files against a numpy
reference, the simulated tensor-parallel forward pass, artifact contents,
manifest, parts, dtype conversion, reuse) run for vLLM and SGLang alike in
`tests/test_sharded_state_engines.py`. Here:

- each rank's key set and shapes are exactly what
  `preheat_sglang.layout.expected_keys` derives from SGLang's own source
  (STATE_DICT.md): no attention scale buffers, `lm_head.weight` alone for
  tied embeddings, dtypes as SGLang's `--dtype` reads them;
- SGLang widens the vocabulary padding to 64 * tp where tp does not divide
  the 64-padded size (tp 3 and 6 of `ODD_TP_CASES`);
- `context_length` is recorded for the launch.
"""

from __future__ import annotations

import numpy as np
import pytest

from preheat_sglang import layout
from preheat_testing import models
from preheat_testing.sharding import SGLANG, check_rank_files, rank_tensors, source_tensors

MATRIX = [
    pytest.param(case, tp, id=f"{case}-tp{tp}") for case in sorted(models.CASES) for tp in (1, 2, 4)
] + [
    pytest.param("llama_tp3_vocab1000", 3, id="llama_tp3_vocab1000-tp3"),
    # kv heads replicated twice, 192 vocab rows per rank (1000 padded to a multiple of 384)
    pytest.param("llama_tp3_vocab1000", 6, id="llama_tp3_vocab1000-tp6"),
    pytest.param("qwen3_tp3_mqa_tied", 3, id="qwen3_tp3_mqa_tied-tp3"),
    pytest.param("qwen2_tp3_vocab130", 3, id="qwen2_tp3_vocab130-tp3"),
]


@pytest.mark.parametrize("case, tp", MATRIX)
def test_keys_and_shapes_are_those_sglang_expects(shard, case, tp):
    """Per rank: exactly `layout.expected_keys` (derived from SGLang 0.5.23's model classes)."""
    s = shard(case, tp)
    config = s.model.config
    [source_dtype] = {st for st, _ in source_tensors(s.model).values()}
    for r in range(tp):
        got = rank_tensors(s.directory, s.pattern, r)
        expected = layout.expected_keys(config, tp, r)
        assert {k: t[1] for k, t in got.items()} == {k: v[1] for k, v in expected.items()}
        # the files keep the checkpoint's dtype; SGLang's `--dtype auto` reads the same dtype,
        # except float32, which it serves as float16 (the loader's copy_ casts)
        auto = "F16" if source_dtype == "F32" else source_dtype
        assert {v[0] for v in expected.values()} == {auto}
        assert {t[0] for t in got.values()} == {source_dtype}
        named = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[source_dtype]
        assert {k: (t[0], t[1]) for k, t in got.items()} == layout.expected_keys(
            config, tp, r, dtype=named
        )
        # no per-layer buffers: SGLang's RadixAttention has no k/v scales without quantization
        assert not [k for k in got if "scale" in k or ".attn." in k], sorted(got)
        assert not [k for k in got if "rotary" in k or "cos_sin" in k]
        if config.get("tie_word_embeddings"):
            assert "lm_head.weight" in got and "model.embed_tokens.weight" not in got
        else:
            assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(got)


def test_vocab_padding_is_widened_for_tp_that_does_not_divide_it(shard):
    """SGLang pads to 64, or to 64 * tp when tp does not divide the 64-padded size."""
    s = shard("llama_tp3_vocab1000", 3)  # 1000 -> 1024 (tp 3 does not divide) -> 1152
    embed = source_tensors(s.model)["model.embed_tokens.weight"][1]
    assert layout.padded_vocab_size(1000, 3) == SGLANG.padded_vocab(1000, 3) == 1152
    rows = []
    for r in range(3):
        dtype, shape, raw = rank_tensors(s.directory, s.pattern, r)["model.embed_tokens.weight"]
        assert (dtype, shape) == ("BF16", (384, 256))
        rows.append(np.frombuffer(raw, np.uint16).reshape(shape))
    full = np.concatenate(rows)
    np.testing.assert_array_equal(full[:1000], embed)
    assert not full[1000:].any()  # 152 zero rows, all on the last rank
    assert rows[2][:232].any(axis=1).all() and not rows[2][232:].any()

    s = shard("qwen3_tp3_mqa_tied", 3)  # 300 -> 320 -> 384, tied: lm_head.weight only
    d = s.model.config["head_dim"]
    k = source_tensors(s.model)["model.layers.0.self_attn.k_proj.weight"][1]
    for r in range(3):
        got = rank_tensors(s.directory, s.pattern, r)
        assert got["lm_head.weight"][1] == (128, 128)
        # the single kv head is on every rank
        _, shape, raw = got["model.layers.0.self_attn.qkv_proj.weight"]
        assert shape == ((2 + 2) * d, 128)
        qkv = np.frombuffer(raw, np.uint16).reshape(shape)
        np.testing.assert_array_equal(qkv[2 * d : 3 * d], k)

    s = shard("qwen2_tp3_vocab130", 3)  # 130 -> 192, which tp 3 divides: no widening
    assert SGLANG.padded_vocab(130, 3) == 192
    assert rank_tensors(s.directory, s.pattern, 0)["lm_head.weight"][1] == (64, 192)
    _, shape, raw = rank_tensors(s.directory, s.pattern, 2)["lm_head.weight"]
    last = np.frombuffer(raw, np.uint16).reshape(shape)  # rows 128..191: two real, 62 padding
    assert last[:2].any(axis=1).all() and not last[2:].any()


@pytest.mark.parametrize(
    "case, tp, dtype",
    [
        ("llama_gqa", 2, "float16"),
        ("qwen3_tied_kv2", 2, "float32"),
        ("mistral_subfolders_fp32", 2, "bfloat16"),
        ("llama_odd_vocab_fp16", 4, "bfloat16"),
        ("llama_tp3_vocab1000", 3, "float16"),
    ],
)
def test_converted_keys_and_dtypes_are_those_sglang_expects(shard, case, tp, dtype):
    """With `dtype` set, every rank's keys, dtypes and shapes are `expected_keys(..., dtype=dtype)`."""
    s = shard(case, tp, dtype=dtype)
    assert s.manifest.shard.dtype == dtype
    for r in range(tp):
        got = rank_tensors(s.directory, s.pattern, r)
        expected = layout.expected_keys(s.model.config, tp, r, dtype=dtype)
        assert {k: (t[0], t[1]) for k, t in got.items()} == expected


def test_context_length_is_recorded_for_the_launch(shard):
    s = shard("qwen2_bias", 2, context_length=256)
    assert s.manifest.shard.args == {"context_length": 256}
    assert s.manifest.shard.signature == shard("qwen2_bias", 2).manifest.shard.signature
    check_rank_files(s)
