"""Tensor-parallel plans checked against direct numpy slicing and an unsharded forward pass."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from preheat_testing import models
from preheat_tp import (
    ModelShape,
    OutputTensor,
    PlanError,
    Slice,
    UnsupportedModel,
    Zeros,
    bf16_to_float32,
    byte_ranges,
    check_tp,
    convert,
    float32_to_bf16,
    materialize,
    plan_rank,
    simulate_tp_forward,
    to_float32,
    valid_tps,
)

TPS = (1, 2, 4)
PROMPT = [1, 7, 42, 3, 99, 12, 5, 64, 8, 127]


class Source:
    """Safetensors files held in memory, read by tensor-relative byte ranges."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.tensors = {}
        for path, data in files.items():
            if path.endswith(".safetensors"):
                for name, info in models.parse_safetensors_header(data).items():
                    self.tensors[name] = (data, info)
        self.bytes_read = 0

    @property
    def index(self) -> dict:
        return {name: (info.dtype, info.shape) for name, (_, info) in self.tensors.items()}

    def read(self, name: str, start: int, length: int) -> bytes:
        data, info = self.tensors[name]
        assert start >= 0 and start + length <= info.end - info.start
        self.bytes_read += length
        return data[info.start + start : info.start + start + length]


@functools.cache
def case(name: str) -> tuple[models.TinyModel, Source]:
    model = models.build_case(name)
    return model, Source(model.files)


@functools.cache
def rank_tensors(name: str, tp: int, **options) -> list[dict[str, tuple[OutputTensor, np.ndarray]]]:
    model, source = case(name)
    shape = ModelShape.from_config(model.config)
    return [
        {
            t.name: (t, materialize(t, source.read))
            for t in plan_rank(shape, tp, r, source.index, **options)
        }
        for r in range(tp)
    ]


def reference_rank(
    config: dict, w: dict[str, np.ndarray], tp: int, r: int
) -> dict[str, np.ndarray]:
    """What rank r of tp holds, sliced directly from the full float32 weights."""
    h, hq, hkv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or h // hq
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    nq, nkv = hq // tp, max(1, hkv // tp)
    s = r // (tp // hkv) if tp >= hkv else r
    q_sl = slice(r * nq * d, (r + 1) * nq * d)
    kv_sl = slice(s * nkv * d, (s + 1) * nkv * d)
    i_sl = slice(r * inter // tp, (r + 1) * inter // tp)
    padded = -(-vocab // 64) * 64
    v_sl = slice(r * padded // tp, (r + 1) * padded // tp)

    def vocab_shard(a):
        full = np.zeros((padded, h), np.float32)
        full[:vocab] = a
        return full[v_sl]

    out = {}
    tied = config["tie_word_embeddings"]
    if not tied:
        out["model.embed_tokens.weight"] = vocab_shard(w["model.embed_tokens.weight"])
    out["lm_head.weight"] = vocab_shard(
        w["model.embed_tokens.weight" if tied else "lm_head.weight"]
    )
    out["model.norm.weight"] = w["model.norm.weight"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        for kind in ("weight", "bias"):
            if a + "q_proj." + kind in w:
                out[a + "qkv_proj." + kind] = np.concatenate(
                    [
                        w[a + "q_proj." + kind][q_sl],
                        w[a + "k_proj." + kind][kv_sl],
                        w[a + "v_proj." + kind][kv_sl],
                    ]
                )
        out[a + "o_proj.weight"] = w[a + "o_proj.weight"][:, q_sl]
        for name in ("o_proj.bias", "q_norm.weight", "k_norm.weight"):
            if a + name in w:
                out[a + name] = w[a + name]
        out[p + "mlp.gate_up_proj.weight"] = np.concatenate(
            [w[p + "mlp.gate_proj.weight"][i_sl], w[p + "mlp.up_proj.weight"][i_sl]]
        )
        out[p + "mlp.down_proj.weight"] = w[p + "mlp.down_proj.weight"][:, i_sl]
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = w[p + name]
    return out


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("name", sorted(models.CASES))
def test_rank_tensors_match_direct_slicing(name, tp):
    model, _ = case(name)
    for r, tensors in enumerate(rank_tensors(name, tp)):
        ref = reference_rank(model.config, model.weights, tp, r)
        assert sorted(tensors) == sorted(ref)
        for tname, (tensor, arr) in tensors.items():
            assert arr.shape == tensor.shape == ref[tname].shape, tname
            assert tensor.dtype == models.DTYPES[model.config["torch_dtype"]]
            np.testing.assert_array_equal(to_float32(arr, tensor.dtype), ref[tname], err_msg=tname)


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("name", sorted(models.CASES))
def test_simulated_tp_forward_matches_unsharded(name, tp):
    model, _ = case(name)
    ranks = [
        {n: to_float32(a, t.dtype) for n, (t, a) in sd.items()} for sd in rank_tensors(name, tp)
    ]
    expected = models.forward(model.config, model.weights, PROMPT)
    got = simulate_tp_forward(model.config, ranks, PROMPT)
    assert got.shape == (len(PROMPT), model.config["vocab_size"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_padding_rows_are_zero_and_last_rank_may_be_all_padding():
    tensors = rank_tensors("qwen2_small_vocab_tied", 4)
    assert [sd["lm_head.weight"][0].pieces[-1] for sd in tensors][2:] == [Zeros(14), Zeros(48)]
    last, arr = tensors[3]["lm_head.weight"]
    assert last.shape == (48, 256) and last.pieces == (Zeros(48),)
    assert not arr.any()


def test_kv_heads_replicated_when_tp_exceeds_them():
    model, _ = case("mistral_kv2")
    k = model.weights["model.layers.0.self_attn.k_proj.weight"]
    qkv = []
    for sd in rank_tensors("mistral_kv2", 4):
        tensor, arr = sd["model.layers.0.self_attn.qkv_proj.weight"]
        qkv.append(to_float32(arr, tensor.dtype))
    # 4 heads of 64 at tp 4: one q head per rank, then the rank's shared kv head
    np.testing.assert_array_equal(qkv[0][64:128], k[:64])
    np.testing.assert_array_equal(qkv[1][64:128], k[:64])
    np.testing.assert_array_equal(qkv[2][64:128], k[64:128])
    np.testing.assert_array_equal(qkv[3][64:128], k[64:128])


@pytest.mark.parametrize("keep", ["lm_head.weight", "model.embed_tokens.weight", "both"])
def test_tied_keep_chooses_the_surviving_names(keep):
    model, source = case("llama_tied_mqa")
    shape = ModelShape.from_config(model.config)
    names = {t.name for t in plan_rank(shape, 2, 1, source.index, tied_keep=keep)}
    vocab_names = {"lm_head.weight", "model.embed_tokens.weight"} & names
    assert vocab_names == (
        {"lm_head.weight", "model.embed_tokens.weight"} if keep == "both" else {keep}
    )
    ranks = [
        {n: to_float32(a, t.dtype) for n, (t, a) in sd.items()}
        for sd in rank_tensors("llama_tied_mqa", 2, tied_keep=keep)
    ]
    np.testing.assert_allclose(
        simulate_tp_forward(model.config, ranks, PROMPT),
        models.forward(model.config, model.weights, PROMPT),
        atol=1e-4,
    )


def test_unfused_names_keep_hf_projections():
    model, source = case("qwen2_bias")
    shape = ModelShape.from_config(model.config)
    names = {t.name for t in plan_rank(shape, 2, 0, source.index, fuse=False)}
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert "model.layers.0.mlp.up_proj.weight" in names
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
    ranks = [
        {n: to_float32(a, t.dtype) for n, (t, a) in sd.items()}
        for sd in rank_tensors("qwen2_bias", 2, fuse=False)
    ]
    np.testing.assert_allclose(
        simulate_tp_forward(model.config, ranks, PROMPT),
        models.forward(model.config, model.weights, PROMPT),
        atol=1e-4,
    )


def test_check_tp_explains_bad_sizes():
    def shape(**kw):
        return ModelShape.from_config(models.make_config("llama", **kw))

    gqa = shape(hidden=384, heads=6, kv_heads=3, intermediate=768, vocab=150)
    assert valid_tps(gqa) == [1, 3, 6]
    assert check_tp(gqa, 3) == [] and check_tp(gqa, 6) == []
    problems = check_tp(gqa, 4)
    assert len(problems) == 2
    assert problems[0].startswith("num_attention_heads=6 is not divisible by tp=4")
    assert problems[1].startswith("num_key_value_heads=3 and tp=4 do not divide one another")
    assert all(p.endswith("choose tp from: 1, 3, 6") for p in problems)
    assert len(check_tp(gqa, 2)) == 1 and "num_key_value_heads=3 and tp=2" in check_tp(gqa, 2)[0]

    # vocab 100 pads to 128, which 3 does not divide
    assert check_tp(shape(hidden=384, heads=6, intermediate=768, vocab=100), 3) == [
        "vocab_size=100 padded to a multiple of 64 is 128, which is not divisible by tp=3; "
        "choose tp from: 1, 2"
    ]
    odd = shape(heads=4, intermediate=510)
    assert check_tp(odd, 4) == [
        "intermediate_size=510 is not divisible by tp=4; choose tp from: 1, 2"
    ]
    assert check_tp(odd, 0) == ["tp must be a positive integer, got 0"]
    with pytest.raises(PlanError, match="num_attention_heads=6 is not divisible by tp=4"):
        plan_rank(gqa, 4, 0, {})


def test_plan_reports_missing_and_misshapen_sources():
    model, source = case("llama_gqa")
    shape = ModelShape.from_config(model.config)
    index = dict(source.index)
    del index["model.layers.1.mlp.up_proj.weight"]
    index["model.norm.weight"] = ("BF16", (7,))
    with pytest.raises(PlanError) as err:
        plan_rank(shape, 2, 0, index)
    assert "model.layers.1.mlp.up_proj.weight is missing" in str(err.value)
    assert "model.norm.weight has shape [7], expected [256]" in str(err.value)
    with pytest.raises(PlanError, match="rank 2 is outside 0..1"):
        plan_rank(shape, 2, 2, source.index)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "not supported"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantized"),
        ({"num_local_experts": 8}, "mixture-of-experts"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_unsupported_configs_are_refused(change, message):
    config = {**models.make_config("llama"), **change}
    with pytest.raises(UnsupportedModel, match=message):
        ModelShape.from_config(config)


def test_shape_flags_per_family():
    def shape(kind, **kw):
        return ModelShape.from_config(models.make_config(kind, **kw))

    assert shape("qwen2").qkv_bias and not shape("qwen2").o_bias
    assert shape("qwen3").qk_norm and not shape("qwen3").qkv_bias
    assert shape("llama", attention_bias=True).o_bias
    assert not shape("mistral").qkv_bias
    assert shape("qwen3", hidden=128, heads=4, head_dim=64).head_dim == 64
    with pytest.raises(UnsupportedModel, match="Qwen3 with attention_bias"):
        shape("qwen3", attention_bias=True)


def test_row_slices_read_only_their_bytes():
    model, _ = case("llama_multipart")
    source = Source(model.files)
    shape = ModelShape.from_config(model.config)
    tensors = plan_rank(shape, 4, 1, source.index)
    row_only = [t for t in tensors if all(p.axis == 0 for p in t.pieces if isinstance(p, Slice))]
    for t in row_only:
        before = source.bytes_read
        materialize(t, source.read)
        real_rows = sum(p.shape[0] for p in t.pieces if isinstance(p, Slice))
        assert source.bytes_read - before == real_rows * t.nbytes // t.shape[0]


def test_byte_ranges():
    row = Slice("w", 0, 2, 5, "BF16", (8, 4))
    assert byte_ranges(row) == [(16, 24)]
    assert byte_ranges(row, block_bytes=16) == [(16, 16), (32, 8)]
    col = Slice("w", 1, 1, 3, "F32", (3, 4))
    assert byte_ranges(col) == [(0, 48)]
    assert byte_ranges(col, block_bytes=20) == [(0, 16), (16, 16), (32, 16)]
    assert byte_ranges(col, exact=True) == [(4, 8), (20, 8), (36, 8)]
    with pytest.raises(ValueError):
        byte_ranges(Slice("w", 0, 0, 9, "F32", (8, 4)))


def test_materialize_in_small_blocks_matches_default():
    _, source = case("llama_gqa")
    for t, arr in rank_tensors("llama_gqa", 2)[1].values():
        np.testing.assert_array_equal(materialize(t, source.read, block_bytes=1000), arr)


def test_materialize_converts_dtypes():
    model, source = case("llama_gqa")
    shape = ModelShape.from_config(model.config)
    tensors = plan_rank(shape, 2, 0, source.index, dtype="float32")
    assert {t.dtype for t in tensors} == {"F32"}
    t = next(t for t in tensors if t.name.endswith("qkv_proj.weight"))
    as_f32 = materialize(t, source.read)
    as_bf16 = materialize(t, source.read, dtype="bfloat16")
    as_f16 = materialize(t, source.read, dtype="F16")
    assert as_f32.dtype == np.float32 and as_bf16.dtype == np.uint16 and as_f16.dtype == np.float16
    np.testing.assert_array_equal(bf16_to_float32(as_bf16), as_f32)
    np.testing.assert_array_equal(as_f16, as_f32.astype(np.float16))


def test_bf16_rounding_is_nearest_even():
    x = np.array(
        [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, np.inf, -np.inf, 3.4e38, 1e-40],
        np.float32,
    )
    got = bf16_to_float32(float32_to_bf16(x))
    # 1e-40 is subnormal; the nearest bf16 is the smallest positive one, 2**-133
    expected = [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5, np.inf, -np.inf, np.inf, 2.0**-133]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], np.float32))))[0]
    half = np.array([0.1, 65504.0, 1e-6], np.float16)
    np.testing.assert_array_equal(convert(convert(half, "F16", "F32"), "F32", "F16"), half)
    np.testing.assert_array_equal(
        convert(half, "F16", "BF16"), float32_to_bf16(half.astype(np.float32))
    )
