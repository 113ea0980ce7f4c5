"""vLLM `sharded_state` artifacts, checked without an engine.

Every case of `preheat_testing.models.CASES` is pre-sharded through the real
pipeline (loopback hub -> store -> CPU slicer) at tp 1, 2 and 4, then:

- every rank file is compared bit for bit with a reference sliced here, with
  plain numpy, from the original stored weights (FORMATS.md, "Tensor-parallel
  slicing");
- a simulated tensor-parallel forward pass from the rank files must match the
  unsharded numpy forward pass;
- the artifact must hold the rank files and the copied config/tokenizer
  files, never the original weights or their index, and its manifest must
  describe the shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from vllm_support import (
    DEFAULT_PATTERN,
    HEADER_PROBE,
    Sharded,
    assert_only_header_reads,
    weight_bytes,
    weight_requests,
)

from preheat_testing import models
from preheat_tp import simulate_tp_forward

TPS = (1, 2, 4)
CASES = sorted(models.CASES)
VOCAB_MULTIPLE = 64
SCALES = ("k", "v", "q", "prob")
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
RAW = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def prompt(config: dict) -> list[int]:
    """Token ids touching the first and the last vocab shard."""
    return [1, 7, 42, 3, 99, 12, 5, 64, 8, 127, config["vocab_size"] - 1, 2]


# --------------------------------------------------------------------------- the reference


def source_tensors(model) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (safetensors dtype, stored array; bf16 as uint16 bits) of the original files."""
    out = {}
    for path, data in model.files.items():
        if not path.endswith(".safetensors"):
            continue
        for name, info in models.parse_safetensors_header(data).items():
            raw = np.frombuffer(data[info.start : info.end], dtype=RAW[info.dtype])
            assert name not in out
            out[name] = (info.dtype, raw.reshape(info.shape))
    return out


def convert(dtype: str, raw: np.ndarray, target: str) -> np.ndarray:
    """A stored array in another dtype, rounding to nearest even (bf16 via its bit pattern)."""
    if dtype == target:
        return raw
    values = models.decode(raw.tobytes(), dtype, raw.shape)
    if target == "F32":
        return values
    if target == "F16":
        return values.astype(np.float16)
    return models.bf16_bits(values)


def tp_fits(config: dict, tp: int) -> bool:
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    padded = -(-config["vocab_size"] // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return (
        heads % tp == 0
        and (kv % tp == 0 or tp % kv == 0)
        and config["intermediate_size"] % tp == 0
        and padded % tp == 0
    )


def reference_rank(
    config: dict, src: dict[str, tuple[str, np.ndarray]], tp: int, r: int, dtype: str = "auto"
) -> dict[str, tuple[str, np.ndarray]]:
    """What vLLM's rank r of tp holds: name -> (safetensors dtype, stored array)."""
    h, hq = config["hidden_size"], config["num_attention_heads"]
    hkv = config.get("num_key_value_heads") or hq
    d = config.get("head_dim") or h // hq
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    tied = config.get("tie_word_embeddings", False)
    nq = hq // tp
    if tp >= hkv:  # each kv head replicated tp/hkv times
        nkv, s = 1, r // (tp // hkv)
    else:
        nkv, s = hkv // tp, r
    q = slice(r * nq * d, (r + 1) * nq * d)
    kv = slice(s * nkv * d, (s + 1) * nkv * d)
    mlp = slice(r * inter // tp, (r + 1) * inter // tp)
    padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    rows = slice(r * padded // tp, (r + 1) * padded // tp)

    def get(name: str) -> tuple[str, np.ndarray]:
        st, raw = src[name]
        target = st if dtype == "auto" else ST_DTYPE[dtype]
        return target, convert(st, raw, target)

    def vocab_shard(name: str) -> tuple[str, np.ndarray]:
        st, raw = get(name)
        full = np.zeros((padded, h), dtype=raw.dtype)
        full[:vocab] = raw
        return st, full[rows]

    out: dict[str, tuple[str, np.ndarray]] = {}
    if tied:
        # vLLM keeps the lexicographically smallest name of a shared tensor
        out["lm_head.weight"] = vocab_shard("model.embed_tokens.weight")
    else:
        out["model.embed_tokens.weight"] = vocab_shard("model.embed_tokens.weight")
        out["lm_head.weight"] = vocab_shard("lm_head.weight")
    out["model.norm.weight"] = get("model.norm.weight")
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        for kind in ("weight", "bias"):
            if a + "q_proj." + kind in src:
                parts = [get(a + f"{x}_proj." + kind) for x in "qkv"]
                st = parts[0][0]
                out[a + "qkv_proj." + kind] = (
                    st,
                    np.concatenate([parts[0][1][q], parts[1][1][kv], parts[2][1][kv]]),
                )
        st, o = get(a + "o_proj.weight")
        out[a + "o_proj.weight"] = (st, o[:, q])
        for name in ("o_proj.bias", "q_norm.weight", "k_norm.weight"):
            if a + name in src:
                out[a + name] = get(a + name)
        (st, gate), (_, up) = get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")
        out[p + "mlp.gate_up_proj.weight"] = (st, np.concatenate([gate[mlp], up[mlp]]))
        st, down = get(p + "mlp.down_proj.weight")
        out[p + "mlp.down_proj.weight"] = (st, down[:, mlp])
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = get(p + name)
        for scale in SCALES:
            out[f"{a}attn._{scale}_scale"] = ("F32", np.array(1.0, dtype=np.float32))
    return out


# --------------------------------------------------------------------------- reading rank files


def read_strict(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A safetensors file, validated as the safetensors library does: name -> (dtype, shape, bytes)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert 8 + n <= len(data), f"{path.name}: header runs past the end"
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n :]
    spans = sorted((tuple(v["data_offsets"]), k) for k, v in header.items())
    pos = 0
    for (start, end), name in spans:
        assert start == pos, f"{path.name}: {name} does not start where the previous tensor ended"
        pos = end
    assert pos == len(body), f"{path.name}: data section has trailing or missing bytes"
    out = {}
    for name, v in header.items():
        start, end = v["data_offsets"]
        assert end - start == math.prod(v["shape"]) * ITEMSIZE[v["dtype"]], name
        out[name] = (v["dtype"], tuple(v["shape"]), bytes(body[start:end]))
    try:
        import safetensors
    except ImportError:
        return out
    parsed = {name: t for name, t in safetensors.deserialize(data)}
    assert set(parsed) == set(out)
    for name, t in parsed.items():
        assert (tuple(t["shape"]), bytes(t["data"])) == out[name][1:], name
    return out


def rank_file_regex(pattern: str, rank: int) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{rank}"), str(rank))
    return re.compile(text.replace(re.escape("{part}"), r"(\d+)"))


def rank_files(directory: Path, pattern: str, rank: int) -> list[Path]:
    """The rank's part files, in part order; parts must be numbered 0..n-1."""
    regex = rank_file_regex(pattern, rank)
    found = {}
    for p in directory.iterdir():
        m = regex.fullmatch(p.name)
        if m:
            found[int(m[1])] = p
    assert sorted(found) == list(range(len(found))) and found, f"rank {rank} parts: {sorted(found)}"
    return [found[k] for k in sorted(found)]


def rank_tensors(directory: Path, pattern: str, rank: int) -> dict:
    out: dict = {}
    for path in rank_files(directory, pattern, rank):
        for name, t in read_strict(path).items():
            assert name not in out, f"{name} is in two files of rank {rank}"
            out[name] = t
    return out


def rank_float32(directory: Path, pattern: str, rank: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in rank_files(directory, pattern, rank):
        out.update(models.load_safetensors(path, as_float32=True))
    return out


MATRIX = [pytest.param(case, tp, id=f"{case}-tp{tp}") for case in CASES for tp in TPS] + [
    # one rank per query head; at tp 8 each of the 4 kv heads is replicated on two ranks
    pytest.param(case, 8, id=f"{case}-tp8")
    for case in ("llama_gqa", "qwen3_qk_norm")
]


def check_rank_files(s: Sharded, dtype: str = "auto") -> None:
    src = source_tensors(s.model)
    for r in range(s.tp):
        got = rank_tensors(s.directory, s.pattern, r)
        ref = reference_rank(s.model.config, src, s.tp, r, dtype)
        assert sorted(got) == sorted(ref), f"rank {r}: key set differs"
        for name, (st, arr) in ref.items():
            g_dtype, g_shape, g_bytes = got[name]
            assert (g_dtype, g_shape) == (st, arr.shape), f"rank {r} {name}"
            assert g_bytes == np.ascontiguousarray(arr).tobytes(), f"rank {r} {name}: bytes differ"


# --------------------------------------------------------------------------- (a) exact tensors


@pytest.mark.parametrize("case, tp", MATRIX)
def test_rank_files_match_an_independent_numpy_reference_bit_for_bit(shard, case, tp):
    s = shard(case, tp)
    assert tp_fits(s.model.config, tp)
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


def copied_files(model) -> dict[str, bytes]:
    """The repo's top-level files that are neither weights nor a weight index."""
    return {
        p: b
        for p, b in model.files.items()
        if "/" not in p and not p.endswith(WEIGHT_SUFFIXES) and p not in INDEXES
    }


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
    base_dir = Path(world.catalog().location(s.base.ref))
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
