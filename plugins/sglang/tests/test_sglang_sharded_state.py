"""SGLang `sharded_state` artifacts, checked without an engine.

Every case of `preheat_testing.models.CASES` is pre-sharded for SGLang through
the real pipeline (loopback hub -> store -> CPU slicer) at tp 1, 2 and 4, and
the models of `ODD_TP_CASES` at tp 3 (and 6), where SGLang widens the vocabulary
padding to 64 * tp. Then:

- every rank file equals, bit for bit, a reference sliced with plain numpy
  from the original stored weights (`preheat_testing.sharding`);
- each rank's key set and shapes are exactly what
  `preheat_sglang.layout.expected_keys` derives from SGLang's own source
  (STATE_DICT.md): no attention scale buffers, `lm_head.weight` alone for
  tied embeddings;
- a simulated tensor-parallel forward pass from the rank files matches the
  unsharded numpy forward pass;
- the artifact holds the rank files and the copied config/tokenizer files,
  never the original weights or their index, and its manifest describes the
  shard (engine, tp, SGLang versions, structural signature, lineage).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from packaging.specifiers import SpecifierSet

from preheat.resolve import location
from preheat_sglang import layout
from preheat_testing import models
from preheat_testing.sharding import (
    DEFAULT_PATTERN,
    INDEXES,
    ODD_TP_CASES,
    SGLANG,
    ST_DTYPE,
    WEIGHT_SUFFIXES,
    check_rank_files,
    convert,
    copied_files,
    file_order,
    prompt,
    rank_files,
    rank_float32,
    rank_tensors,
    read_strict,
    source_tensors,
)
from preheat_tp import simulate_tp_forward

MATRIX = [
    pytest.param(case, tp, id=f"{case}-tp{tp}") for case in sorted(models.CASES) for tp in (1, 2, 4)
] + [
    pytest.param("llama_tp3_vocab1000", 3, id="llama_tp3_vocab1000-tp3"),
    # kv heads replicated twice, 192 vocab rows per rank (1000 padded to a multiple of 384)
    pytest.param("llama_tp3_vocab1000", 6, id="llama_tp3_vocab1000-tp6"),
    pytest.param("qwen3_tp3_mqa_tied", 3, id="qwen3_tp3_mqa_tied-tp3"),
    pytest.param("qwen2_tp3_vocab130", 3, id="qwen2_tp3_vocab130-tp3"),
]


def forward_matches(s, ranks=None, weights=None, config=None) -> None:
    config = config or s.model.config
    ranks = ranks or [rank_float32(s.directory, s.pattern, r) for r in range(s.tp)]
    ids = prompt(config)
    expected = models.forward(config, weights or s.model.weights, ids)
    got = simulate_tp_forward(config, ranks, ids)
    assert got.shape == (len(ids), config["vocab_size"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- exact tensors


@pytest.mark.parametrize("case, tp", MATRIX)
def test_rank_files_match_an_independent_numpy_reference_bit_for_bit(shard, case, tp):
    s = shard(case, tp)
    assert SGLANG.tp_fits(s.model.config, tp)
    check_rank_files(s)


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


def test_the_reference_covers_the_shared_layout_features(shard):
    """Spot checks of the fused q;k;v rows, kv replication, biases and padding rows on a few files."""
    s = shard("llama_tied_mqa", 4)
    d = s.model.config["head_dim"]
    k = source_tensors(s.model)["model.layers.1.self_attn.k_proj.weight"][1]
    for r in range(4):
        names = set(rank_tensors(s.directory, s.pattern, r))
        assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
        _, shape, raw = rank_tensors(s.directory, s.pattern, r)[
            "model.layers.1.self_attn.qkv_proj.weight"
        ]
        assert shape == (3 * d, 256)
        np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(shape)[d : 2 * d], k)
    s = shard("qwen2_small_vocab_tied", 4)  # 130 -> 192 at tp 4: rank 3 is all padding
    _, shape, raw = rank_tensors(s.directory, s.pattern, 3)["lm_head.weight"]
    assert shape == (48, 256) and not any(raw)
    s = shard("qwen2_bias", 2)
    names = set(rank_tensors(s.directory, s.pattern, 1))
    assert "model.layers.0.self_attn.qkv_proj.bias" in names
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    s = shard("llama_attention_bias", 4)
    src = source_tensors(s.model)
    for r in range(4):
        got = rank_tensors(s.directory, s.pattern, r)
        # RowParallelLinear keeps the full o_proj bias on every rank
        assert got["model.layers.0.self_attn.o_proj.bias"][2] == (
            src["model.layers.0.self_attn.o_proj.bias"][1].tobytes()
        )
    s = shard("qwen3_qk_norm", 4)
    got = rank_tensors(s.directory, s.pattern, 3)
    assert got["model.layers.1.self_attn.q_norm.weight"][1] == (64,)
    assert not any(re.search(r"\.(q|k|v|gate|up)_proj\.", n) for n in got)


# --------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("case, tp", MATRIX)
def test_simulated_tp_forward_from_rank_files_matches_the_unsharded_model(shard, case, tp):
    forward_matches(shard(case, tp))


# --------------------------------------------------------------------------- artifact contents


@pytest.mark.parametrize("case, tp", MATRIX)
def test_artifact_holds_rank_files_and_copies_never_the_original_weights(shard, case, tp):
    s = shard(case, tp)
    on_disk = {
        p.relative_to(s.directory).as_posix(): p for p in s.directory.rglob("*") if p.is_file()
    }
    rank_names = {p.name for r in range(tp) for p in rank_files(s.directory, s.pattern, r)}
    assert len(rank_names) == tp  # default max_file_size: one part per rank
    assert not {p for p in s.model.files if p.endswith(WEIGHT_SUFFIXES)} & set(on_disk)
    assert not set(INDEXES) & set(on_disk)
    copies = copied_files(s.model)
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(copies)
    assert set(on_disk) - rank_names == set(copies), "missing or unexpected files"
    for path, data in copies.items():
        assert on_disk[path].read_bytes() == data, f"{path} differs from the original"
    listed = {f.path: (f.size, f.sha256) for f in s.manifest.files}
    assert listed == {
        p: (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
        for p, f in on_disk.items()
    }


# --------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("case, tp", MATRIX)
def test_manifest_records_the_sglang_shard_and_its_lineage(shard, world, case, tp):
    s = shard(case, tp)
    spec = s.manifest.shard
    assert (spec.engine, spec.tensor_parallel_size) == ("sglang", tp)
    assert (spec.dtype, spec.method, spec.file_pattern) == ("auto", "cpu", DEFAULT_PATTERN)
    assert spec.engine_versions == ">=0.5.22,<0.5.24"
    versions = SpecifierSet(spec.engine_versions)
    assert "0.5.22" in versions and "0.5.23" in versions
    assert "0.5.21" not in versions and "0.5.24" not in versions
    assert re.fullmatch(r"[0-9a-f]{64}", spec.signature or "")
    assert spec.args == {}
    assert s.manifest.lineage is not None and s.base.shard is None and s.base.lineage is None
    assert (s.manifest.name, s.manifest.source) == (s.base.name, s.base.source)
    assert s.manifest.version != s.base.version
    base_dir = Path(location(world.catalog(), s.base).path)
    for path, data in s.model.files.items():
        assert (base_dir / path).read_bytes() == data, path
    per_rank = [
        sum(len(t[2]) for t in rank_tensors(s.directory, s.pattern, r).values()) for r in range(tp)
    ]
    assert s.manifest.serving.weight_bytes_per_rank == max(per_rank)
    assert s.manifest.serving.weight_bytes == s.base.serving.weight_bytes


def test_signature_is_structural(shard):
    a = shard("qwen2_bias", 2)
    other = shard("qwen2_bias", 2, repo_prefix="sig", seed=5)  # same structure, other weights
    assert other.manifest.files != a.manifest.files
    assert other.manifest.shard.signature == a.manifest.shard.signature
    for different in (
        shard("qwen2_bias", 4),
        shard("qwen2_bias", 2, dtype="float32"),
        shard("mistral_kv2", 2),
    ):
        assert different.manifest.shard.signature != a.manifest.shard.signature


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize("case", ["llama_gqa", "qwen3_tied_kv2", "llama_tp3_vocab1000"])
def test_max_file_size_splits_each_rank_into_parts(shard, case):
    """A new part begins when the next tensor would pass the limit (SGLang's save_model rule)."""
    tp = 3 if case in ODD_TP_CASES else 2
    limit = 96 << 10
    s = shard(case, tp, max_file_size="96KiB")
    check_rank_files(s)
    for r in range(tp):
        files = rank_files(s.directory, s.pattern, r)
        assert len(files) > 1
        sizes = []
        for path in files:
            tensors = read_strict(path)
            assert tensors, f"{path.name} is empty"
            order = file_order(path)
            sizes.append([len(tensors[name][2]) for name in order])
        for i, part in enumerate(sizes):
            assert sum(part) <= limit or len(part) == 1, f"rank {r} part {i}: {part}"
            if i + 1 < len(sizes):
                assert sum(part) + sizes[i + 1][0] > limit, f"rank {r}: part {i} split early"
    forward_matches(s)


def test_custom_file_pattern_names_every_part(shard):
    pattern = "sg-{rank}-of-tp-{part}.safetensors"
    s = shard("mistral_kv2", 4, file_pattern=pattern, max_file_size=150_000)
    assert s.manifest.shard.file_pattern == pattern
    check_rank_files(s)
    names = {p.name for p in s.directory.iterdir() if p.name.endswith(".safetensors")}
    assert names and all(re.fullmatch(r"sg-[0-3]-of-tp-\d+\.safetensors", n) for n in names)
    assert len(names) > 4


# --------------------------------------------------------------------------- dtype conversion


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
def test_dtype_converts_weights_and_config(shard, case, tp, dtype):
    s = shard(case, tp, dtype=dtype)
    assert s.manifest.shard.dtype == dtype
    check_rank_files(s, dtype)
    for r in range(tp):
        got = rank_tensors(s.directory, s.pattern, r)
        expected = layout.expected_keys(s.model.config, tp, r, dtype=dtype)
        assert {k: (t[0], t[1]) for k, t in got.items()} == expected
    config = json.loads((s.directory / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == dtype
    drop = ("torch_dtype", "dtype")
    assert {k: v for k, v in config.items() if k not in drop} == {
        k: v for k, v in s.model.config.items() if k not in drop
    }
    target = ST_DTYPE[dtype]
    weights = {
        n: models.decode(convert(st, raw, target).tobytes(), target, raw.shape)
        for n, (st, raw) in source_tensors(s.model).items()
    }
    forward_matches(s, weights=weights)


def test_context_length_is_recorded_for_the_launch(shard):
    s = shard("qwen2_bias", 2, context_length=256)
    assert s.manifest.shard.args == {"context_length": 256}
    assert s.manifest.shard.signature == shard("qwen2_bias", 2).manifest.shard.signature
    check_rank_files(s)
