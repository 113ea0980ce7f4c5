"""vLLM `sharded_state` artifacts, checked without an engine.

Every case of `preheat_testing.models.CASES` is pre-sharded through the real
pipeline (loopback hub -> store -> CPU slicer) at tp 1, 2 and 4, then:

- every rank file is compared bit for bit with a reference sliced with plain
  numpy from the original stored weights (`preheat_testing.sharding`, built
  from FORMATS.md, "Tensor-parallel slicing", with vLLM's four attention
  scale buffers per layer);
- a simulated tensor-parallel forward pass from the rank files must match the
  unsharded numpy forward pass;
- the artifact must hold the rank files and the copied config/tokenizer
  files, never the original weights or their index, and its manifest must
  describe the shard.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from preheat.resolve import location
from preheat_testing import models
from preheat_testing.sharding import (
    DEFAULT_PATTERN,
    HEADER_PROBE,
    INDEXES,
    ST_DTYPE,
    VLLM,
    WEIGHT_SUFFIXES,
    assert_only_header_reads,
    check_rank_files,
    convert,
    copied_files,
    prompt,
    rank_files,
    rank_float32,
    rank_tensors,
    read_strict,
    source_tensors,
    weight_bytes,
    weight_requests,
)
from preheat_tp import simulate_tp_forward

TPS = (1, 2, 4)
CASES = sorted(models.CASES)
SCALES = ("k", "v", "q", "prob")


MATRIX = [pytest.param(case, tp, id=f"{case}-tp{tp}") for case in CASES for tp in TPS] + [
    # one rank per query head; at tp 8 each of the 4 kv heads is replicated on two ranks
    pytest.param(case, 8, id=f"{case}-tp8")
    for case in ("llama_gqa", "qwen3_qk_norm")
]


# --------------------------------------------------------------------------- (a) exact tensors


@pytest.mark.parametrize("case, tp", MATRIX)
def test_rank_files_match_an_independent_numpy_reference_bit_for_bit(shard, case, tp):
    s = shard(case, tp)
    assert VLLM.tp_fits(s.model.config, tp)
    check_rank_files(s)


def test_the_reference_covers_every_layout_feature(shard):
    """The matrix above exercises what FORMATS.md lists, checked on a few files directly."""
    # tied: lm_head.weight kept, model.embed_tokens.weight dropped, on every rank
    s = shard("llama_tied_mqa", 4)
    for r in range(4):
        names = set(rank_tensors(s.directory, s.pattern, r))
        assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    # MQA at tp 4: every rank holds the single kv head
    k = source_tensors(s.model)["model.layers.0.self_attn.k_proj.weight"][1]
    d = s.model.config["head_dim"]
    for r in range(4):
        _, shape, raw = rank_tensors(s.directory, s.pattern, r)[
            "model.layers.0.self_attn.qkv_proj.weight"
        ]
        qkv = np.frombuffer(raw, np.uint16).reshape(shape)
        assert shape == (3 * d, 256)
        np.testing.assert_array_equal(qkv[d : 2 * d], k)
    # vocab 130 padded to 192: the last rank at tp 4 holds only zero rows
    s = shard("qwen2_small_vocab_tied", 4)
    _, shape, raw = rank_tensors(s.directory, s.pattern, 3)["lm_head.weight"]
    assert shape == (48, 256) and not any(raw)
    _, shape, raw = rank_tensors(s.directory, s.pattern, 2)["lm_head.weight"]
    rows = np.frombuffer(raw, np.uint16).reshape(shape)
    assert not rows[34:].any() and rows[:34].any()
    # the four attention scales: 0-dim float32 1.0 in every layer
    s = shard("qwen3_tied_kv2", 2)
    got = rank_tensors(s.directory, s.pattern, 1)
    for i in range(3):
        for scale in SCALES:
            dtype, shape, raw = got[f"model.layers.{i}.self_attn.attn._{scale}_scale"]
            assert (dtype, shape) == ("F32", ())
            assert np.frombuffer(raw, np.float32).tolist() == [1.0]
        assert got[f"model.layers.{i}.self_attn.q_norm.weight"][1] == (64,)
    # qwen2 q/k/v biases fused like the weights, no o_proj bias
    s = shard("qwen2_bias", 2)
    names = set(rank_tensors(s.directory, s.pattern, 0))
    assert "model.layers.0.self_attn.qkv_proj.bias" in names
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    assert not any(re.search(r"\.(q|k|v|gate|up)_proj\.", n) for n in names)


# --------------------------------------------------------------------------- (b) semantics


@pytest.mark.parametrize("case, tp", MATRIX)
def test_simulated_tp_forward_from_rank_files_matches_the_unsharded_model(shard, case, tp):
    s = shard(case, tp)
    ranks = [rank_float32(s.directory, s.pattern, r) for r in range(tp)]
    ids = prompt(s.model.config)
    expected = models.forward(s.model.config, s.model.weights, ids)
    got = simulate_tp_forward(s.model.config, ranks, ids)
    assert got.shape == (len(ids), s.model.config["vocab_size"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- (c) artifact contents


@pytest.mark.parametrize("case, tp", MATRIX)
def test_artifact_holds_rank_files_and_copies_never_the_original_weights(shard, case, tp):
    s = shard(case, tp)
    on_disk = {
        p.relative_to(s.directory).as_posix(): p for p in s.directory.rglob("*") if p.is_file()
    }
    rank_names = {p.name for r in range(tp) for p in rank_files(s.directory, s.pattern, r)}
    originals = {p for p in s.model.files if p.endswith(WEIGHT_SUFFIXES)}
    assert not originals & set(on_disk), "original weights were copied"
    assert not set(INDEXES) & set(on_disk), "a stale weight index was copied"
    assert not [p for p in on_disk if p.endswith(".safetensors") and p not in rank_names]
    expected_copies = copied_files(s.model)
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(expected_copies)
    for path, data in expected_copies.items():
        assert path in on_disk, f"{path} was not copied"
        assert on_disk[path].read_bytes() == data, f"{path} differs from the original"
    for path in set(on_disk) - rank_names - set(expected_copies):
        assert s.model.files.get(path) == on_disk[path].read_bytes(), f"unexpected file {path}"
    # the manifest lists exactly what is on disk, with sizes and digests
    listed = {f.path: (f.size, f.sha256) for f in s.manifest.files}
    assert listed == {
        p: (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
        for p, f in on_disk.items()
    }


# --------------------------------------------------------------------------- (f) manifest


@pytest.mark.parametrize("case, tp", MATRIX)
def test_manifest_records_the_shard_and_its_lineage(shard, world, case, tp):
    from packaging.specifiers import SpecifierSet

    s = shard(case, tp)
    spec = s.manifest.shard
    assert spec.engine == "vllm"
    assert spec.tensor_parallel_size == tp
    assert spec.dtype == "auto"
    assert spec.method == "cpu"
    assert spec.file_pattern == DEFAULT_PATTERN
    # the vLLM release whose loader was checked against these files (TESTING.md)
    assert "0.32.0" in SpecifierSet(spec.engine_versions)
    assert re.fullmatch(r"[0-9a-f]{64}", spec.signature or "")
    # lineage: the unsharded artifact, published in the same store, with the original files
    assert s.manifest.lineage is not None and s.base is not None
    assert s.base.shard is None and s.base.lineage is None
    assert s.manifest.name == s.base.name and s.manifest.version != s.base.version
    assert s.manifest.source == s.base.source
    base_dir = Path(location(world.catalog(), s.base).path)
    for path, data in s.model.files.items():
        assert (base_dir / path).read_bytes() == data, path
    # weight bytes per rank: the largest rank's tensor bytes
    per_rank = [
        sum(len(t[2]) for t in rank_tensors(s.directory, s.pattern, r).values()) for r in range(tp)
    ]
    assert s.manifest.serving.weight_bytes_per_rank == max(per_rank)
    assert s.manifest.serving.weight_bytes == s.base.serving.weight_bytes


def test_signature_is_structural(shard):
    """Same names, shapes and dtypes give the same signature; anything else changes it."""
    a = shard("llama_gqa", 2)
    other = shard("llama_gqa", 2, repo_prefix="sig", seed=7)  # same structure, other weights
    assert other.manifest.files != a.manifest.files
    assert a.manifest.shard.signature == other.manifest.shard.signature
    assert shard("llama_gqa", 1).manifest.shard.signature != a.manifest.shard.signature
    assert shard("llama_gqa", 4).manifest.shard.signature != a.manifest.shard.signature
    fp16 = shard("llama_gqa", 2, dtype="float16")
    assert fp16.manifest.shard.signature != a.manifest.shard.signature
    assert shard("qwen3_qk_norm", 2).manifest.shard.signature != a.manifest.shard.signature


# --------------------------------------------------------------------------- (d) parts


@pytest.mark.parametrize("case", ["llama_gqa", "qwen2_bias", "qwen3_tied_kv2"])
def test_max_file_size_splits_each_rank_into_loadable_parts(shard, case):
    limit = 100 << 10
    s = shard(case, 2, max_file_size="100KiB")
    assert s.manifest.shard.file_pattern == DEFAULT_PATTERN
    check_rank_files(s)  # every part parses and together they hold exactly the reference
    for r in range(2):
        files = rank_files(s.directory, s.pattern, r)
        assert len(files) > 1
        parts = [list(read_strict(p).values()) for p in files]
        for i, part in enumerate(parts):
            size = sum(len(t[2]) for t in part)
            assert size <= limit or len(part) == 1, f"rank {r} part {i}: {size} bytes"
            if i + 1 < len(parts):
                # a new part starts only when the next tensor would not fit
                first_next = len(parts[i + 1][0][2]) if parts[i + 1] else 0
                assert size + first_next > limit or not parts[i + 1]
    ranks = [rank_float32(s.directory, s.pattern, r) for r in range(2)]
    ids = prompt(s.model.config)
    np.testing.assert_allclose(
        simulate_tp_forward(s.model.config, ranks, ids),
        models.forward(s.model.config, s.model.weights, ids),
        rtol=0,
        atol=1e-4,
    )


def test_custom_file_pattern_names_every_part(shard):
    pattern = "weights-r{rank}-p{part}.safetensors"
    s = shard("mistral_kv2", 4, file_pattern=pattern, max_file_size=200_000)
    assert s.manifest.shard.file_pattern == pattern
    check_rank_files(s)
    names = {p.name for p in s.directory.iterdir() if p.name.endswith(".safetensors")}
    assert names and all(re.fullmatch(r"weights-r[0-3]-p\d+\.safetensors", n) for n in names)


# --------------------------------------------------------------------------- (e) dtype conversion


@pytest.mark.parametrize(
    "case, dtype",
    [
        ("llama_gqa", "float16"),
        ("llama_gqa", "float32"),
        ("mistral_subfolders_fp32", "bfloat16"),
        ("llama_odd_vocab_fp16", "bfloat16"),
    ],
)
def test_dtype_converts_weights_and_config(shard, case, dtype):
    s = shard(case, 2, dtype=dtype)
    assert s.manifest.shard.dtype == dtype
    check_rank_files(s, dtype)  # rounded to nearest even, scales stay float32
    config = json.loads((s.directory / "config.json").read_text())
    original = s.model.config
    assert config["torch_dtype"] == dtype
    assert config.get("dtype", dtype) == dtype
    assert {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")} == {
        k: v for k, v in original.items() if k not in ("torch_dtype", "dtype")
    }
    # the converted model still computes the same function, up to the new rounding
    src = source_tensors(s.model)
    target = ST_DTYPE[dtype]
    weights = {
        n: models.decode(convert(st, raw, target).tobytes(), target, raw.shape)
        for n, (st, raw) in src.items()
    }
    ranks = [rank_float32(s.directory, s.pattern, r) for r in range(2)]
    ids = prompt(original)
    np.testing.assert_allclose(
        simulate_tp_forward(original, ranks, ids),
        models.forward(original, weights, ids),
        rtol=0,
        atol=1e-4,
    )


# --------------------------------------------------------------------------- (g) reuse


def test_reuse_same_request_fetches_nothing_and_another_tp_reuses_the_unsharded_artifact(world):
    case = "llama_multipart"
    repo = world.case_repo(case, "reuse", seed=3)
    name = "reuse-llama"
    model = world.model(case, seed=3)
    n_weights = sum(1 for p in model.files if p.endswith(".safetensors"))
    total = sum(len(b) for p, b in model.files.items() if p.endswith(".safetensors"))
    tp2 = {"engine": "vllm", "args": {"tensor_parallel_size": 2}}

    first = world.prefetch(repo, tp2, artifact_name=name)
    assert first.ok and not first.record.reused, first.record.error
    # fetched once, in full (plus the header reads of planning)
    assert total <= weight_bytes(first.requests) <= total + n_weights * HEADER_PROBE
    m1 = world.manifest(first)

    again = world.prefetch(repo, tp2, artifact_name=name)
    assert again.ok and again.record.reused
    assert world.manifest(again).ref == m1.ref
    assert [r for r in again.requests if r.file] == [], "the reused run read repo files"

    tp4 = world.prefetch(
        repo, {"engine": "vllm", "args": {"tensor_parallel_size": 4}}, artifact_name=name
    )
    assert tp4.ok and not tp4.record.reused
    m4 = world.manifest(tp4)
    assert m4.version not in (m1.version, m1.lineage.version)
    assert m4.lineage == m1.lineage, "the unsharded artifact was not reused"
    assert_only_header_reads(tp4.requests, n_weights)
    assert len(world.catalog().versions(m1.name)) == 3  # unsharded, tp 2, tp 4
    assert world.catalog().alias(m1.name, "latest") == m4.version

    # the unsharded request after both: reused as is, nothing fetched
    plain = world.prefetch(repo, artifact_name=name)
    assert plain.ok and plain.record.reused
    assert str(plain.record.artifact) == str(m1.lineage)
    assert weight_requests(plain.requests) == []
