"""`sharded_state` artifacts of every engine plugin, checked without an engine.

Each test runs for vLLM and SGLang: what it checks is the same for both, up to
the engine's name, its shard-args key for the tensor-parallel size and the
per-engine facts of `preheat_testing.sharding.ENGINES` (vLLM's four attention
scale buffers per layer, SGLang's vocabulary padding widened to 64 * tp). What
only one engine has stays in that plugin's tests.

Every case of `preheat_testing.models.CASES` is pre-sharded through the real
pipeline (loopback hub -> store -> CPU slicer) at tp 1, 2 and 4, plus tp 8 and
the `ODD_TP_CASES` at tp 3 and 6 where the engine accepts them. Then:

- every rank file is compared bit for bit with a reference sliced with plain
  numpy from the original stored weights (`preheat_testing.sharding`, built
  from FORMATS.md, "Tensor-parallel slicing");
- a simulated tensor-parallel forward pass from the rank files must match the
  unsharded numpy forward pass;
- the artifact must hold the rank files and the copied config/tokenizer
  files, never the original weights or their index, and its manifest must
  describe the shard (engine, tp, engine versions, structural signature,
  lineage).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the matrices are tiny: BLAS threads only add contention

import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402

from preheat.resolve import location  # noqa: E402
from preheat_testing import models  # noqa: E402
from preheat_testing.sharding import (  # noqa: E402
    DEFAULT_PATTERN,
    ENGINES,
    HEADER_PROBE,
    INDEXES,
    ST_DTYPE,
    WEIGHT_SUFFIXES,
    assert_only_header_reads,
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
    weight_bytes,
    weight_requests,
)
from preheat_tp import simulate_tp_forward  # noqa: E402

ENGINE_NAMES = ("vllm", "sglang")
# requests that go through `preheat prefetch ... --shard-config FILE --wait --json` (a subprocess)
VIA_CLI = {
    "vllm": {("llama_tied_mqa", 2), ("mistral_subfolders_fp32", 4)},
    "sglang": {("qwen3_tied_kv2", 4), ("llama_multipart", 2), ("llama_tp3_vocab1000", 3)},
}
# tp 3 where the 64-padded vocab (1024, 320) does not divide: SGLang widens the padding, vLLM refuses
VLLM_REFUSES = {("llama_tp3_vocab1000", 3), ("llama_tp3_vocab1000", 6), ("qwen3_tp3_mqa_tied", 3)}

REQUESTS = [(case, tp) for case in sorted(models.CASES) for tp in (1, 2, 4)] + [
    # one rank per query head; at tp 8 each of the 4 kv heads is replicated on two ranks
    ("llama_gqa", 8),
    ("qwen3_qk_norm", 8),
    # vocab 1000 padded to 1152 at tp 3; at tp 6 kv heads replicated twice, 192 vocab rows per rank
    ("llama_tp3_vocab1000", 3),
    ("llama_tp3_vocab1000", 6),
    ("qwen3_tp3_mqa_tied", 3),
    ("qwen2_tp3_vocab130", 3),
]


def fits(engine: str, case: str, tp: int) -> bool:
    return engine != "vllm" or (case, tp) not in VLLM_REFUSES


def per_engine(cases, name=lambda *c: "-".join(map(str, c))):
    """`cases` (tuples starting with case and tp) for every engine that accepts them, as params."""
    return [
        pytest.param(engine, *c, id=f"{engine}-{name(*c)}")
        for engine in ENGINE_NAMES
        for c in cases
        if fits(engine, c[0], c[1])
    ]


MATRIX = per_engine(REQUESTS, lambda case, tp: f"{case}-tp{tp}")
ALL_ENGINES = pytest.mark.parametrize("engine", ENGINE_NAMES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One hub and one store for both engines (an unsharded artifact then serves both)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("engines-world"), hub)


@pytest.fixture(scope="module")
def shards(world):
    """Per engine: `shard(case, tp, repo_prefix="tiny", seed=0, **args)` (cached)."""
    from preheat_testing.sharding import shard_getter

    return {name: shard_getter(world, ENGINES[name], VIA_CLI[name]) for name in ENGINE_NAMES}


@pytest.fixture
def shard(shards, engine):
    """The test's engine's shard getter."""
    return shards[engine]


def forward_matches(s, weights=None) -> None:
    """The simulated tp forward from `s`'s rank files equals the unsharded forward (of `weights`)."""
    config = s.model.config
    ranks = [rank_float32(s.directory, s.pattern, r) for r in range(s.tp)]
    ids = prompt(config)
    expected = models.forward(config, weights or s.model.weights, ids)
    got = simulate_tp_forward(config, ranks, ids)
    assert got.shape == (len(ids), config["vocab_size"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- exact tensors


@pytest.mark.parametrize("engine, case, tp", MATRIX)
def test_rank_files_match_an_independent_numpy_reference_bit_for_bit(shard, engine, case, tp):
    s = shard(case, tp)
    assert ENGINES[engine].tp_fits(s.model.config, tp)
    check_rank_files(s)


def qkv(got: dict, layer: int) -> tuple[tuple[int, ...], np.ndarray]:
    _, shape, raw = got[f"model.layers.{layer}.self_attn.qkv_proj.weight"]
    return shape, np.frombuffer(raw, np.uint16).reshape(shape)


@ALL_ENGINES
def test_the_reference_covers_the_shared_layout_features(shard, engine):
    """Spot checks of what FORMATS.md lists (the matrix above exercises it), on a few files directly."""
    # tied: lm_head.weight kept, model.embed_tokens.weight dropped, on every rank;
    # MQA at tp 4: every rank holds the single kv head in its fused q;k;v rows
    s = shard("llama_tied_mqa", 4)
    d = s.model.config["head_dim"]
    src = source_tensors(s.model)
    for r in range(4):
        got = rank_tensors(s.directory, s.pattern, r)
        assert "lm_head.weight" in got and "model.embed_tokens.weight" not in got
        for layer in (0, 1):
            shape, rows = qkv(got, layer)
            assert shape == (3 * d, 256)
            k = src[f"model.layers.{layer}.self_attn.k_proj.weight"][1]
            np.testing.assert_array_equal(rows[d : 2 * d], k)
    # vocab 130 padded to 192: the last rank at tp 4 holds only zero rows, rank 2 34 real ones
    s = shard("qwen2_small_vocab_tied", 4)
    _, shape, raw = rank_tensors(s.directory, s.pattern, 3)["lm_head.weight"]
    assert shape == (48, 256) and not any(raw)
    _, shape, raw = rank_tensors(s.directory, s.pattern, 2)["lm_head.weight"]
    rows = np.frombuffer(raw, np.uint16).reshape(shape)
    assert not rows[34:].any() and rows[:34].any()
    # qwen3's q/k norms are replicated whole; nothing is left unfused
    s = shard("qwen3_tied_kv2", 2)
    got = rank_tensors(s.directory, s.pattern, 1)
    for i in range(3):
        assert got[f"model.layers.{i}.self_attn.q_norm.weight"][1] == (64,)
    s = shard("qwen3_qk_norm", 4)
    got = rank_tensors(s.directory, s.pattern, 3)
    assert got["model.layers.1.self_attn.q_norm.weight"][1] == (64,)
    assert not any(re.search(r"\.(q|k|v|gate|up)_proj\.", n) for n in got)
    # qwen2 q/k/v biases fused like the weights, no o_proj bias
    s = shard("qwen2_bias", 2)
    for r in range(2):
        names = set(rank_tensors(s.directory, s.pattern, r))
        assert "model.layers.0.self_attn.qkv_proj.bias" in names
        assert "model.layers.0.self_attn.o_proj.bias" not in names
        assert not any(re.search(r"\.(q|k|v|gate|up)_proj\.", n) for n in names)
    # RowParallelLinear keeps the full o_proj bias on every rank
    s = shard("llama_attention_bias", 4)
    src = source_tensors(s.model)
    for r in range(4):
        got = rank_tensors(s.directory, s.pattern, r)
        assert got["model.layers.0.self_attn.o_proj.bias"][2] == (
            src["model.layers.0.self_attn.o_proj.bias"][1].tobytes()
        )


# --------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("engine, case, tp", MATRIX)
def test_simulated_tp_forward_from_rank_files_matches_the_unsharded_model(shard, engine, case, tp):
    forward_matches(shard(case, tp))


# --------------------------------------------------------------------------- artifact contents


@pytest.mark.parametrize("engine, case, tp", MATRIX)
def test_artifact_holds_rank_files_and_copies_never_the_original_weights(shard, engine, case, tp):
    s = shard(case, tp)
    on_disk = {
        p.relative_to(s.directory).as_posix(): p for p in s.directory.rglob("*") if p.is_file()
    }
    rank_names = {p.name for r in range(tp) for p in rank_files(s.directory, s.pattern, r)}
    assert len(rank_names) == tp  # default max_file_size: one part per rank
    originals = {p for p in s.model.files if p.endswith(WEIGHT_SUFFIXES)}
    assert not originals & set(on_disk), "original weights were copied"
    assert not set(INDEXES) & set(on_disk), "a stale weight index was copied"
    assert not [p for p in on_disk if p.endswith(".safetensors") and p not in rank_names]
    copies = copied_files(s.model)
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(copies)
    assert set(on_disk) - rank_names == set(copies), "missing or unexpected files"
    for path, data in copies.items():
        assert on_disk[path].read_bytes() == data, f"{path} differs from the original"
    # the manifest lists exactly what is on disk, with sizes and digests
    listed = {f.path: (f.size, f.sha256) for f in s.manifest.files}
    assert listed == {
        p: (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
        for p, f in on_disk.items()
    }


# --------------------------------------------------------------------------- manifest

#: what `engine_versions` must hold: (the exact specifier or None, releases in it, releases not in it)
ENGINE_VERSIONS = {
    # the vLLM release whose loader was checked against these files (TESTING.md)
    "vllm": (None, ("0.32.0",), ()),
    "sglang": (">=0.5.22,<0.5.24", ("0.5.22", "0.5.23"), ("0.5.21", "0.5.24")),
}


@pytest.mark.parametrize("engine, case, tp", MATRIX)
def test_manifest_records_the_shard_and_its_lineage(shard, world, engine, case, tp):
    s = shard(case, tp)
    spec = s.manifest.shard
    assert (spec.engine, spec.tensor_parallel_size) == (engine, tp)
    assert (spec.dtype, spec.method, spec.file_pattern) == ("auto", "cpu", DEFAULT_PATTERN)
    exact, inside, outside = ENGINE_VERSIONS[engine]
    if exact is not None:
        assert spec.engine_versions == exact
    versions = SpecifierSet(spec.engine_versions)
    assert all(v in versions for v in inside) and not any(v in versions for v in outside)
    assert re.fullmatch(r"[0-9a-f]{64}", spec.signature or "")
    assert spec.args == {}
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


#: (case at tp 2, seed of a model of the same structure with other weights, requests that differ)
SIGNATURES = {
    "llama_gqa": (
        7,
        [("llama_gqa", 1, {}), ("llama_gqa", 4, {}), ("llama_gqa", 2, {"dtype": "float16"})]
        + [("qwen3_qk_norm", 2, {})],
    ),
    "qwen2_bias": (
        5,
        [("qwen2_bias", 4, {}), ("qwen2_bias", 2, {"dtype": "float32"}), ("mistral_kv2", 2, {})],
    ),
}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("case", sorted(SIGNATURES))
def test_signature_is_structural(shard, engine, case):
    """Same names, shapes and dtypes give the same signature; anything else changes it."""
    seed, different = SIGNATURES[case]
    a = shard(case, 2)
    other = shard(case, 2, repo_prefix="sig", seed=seed)  # same structure, other weights
    assert other.manifest.files != a.manifest.files
    assert other.manifest.shard.signature == a.manifest.shard.signature
    for name, tp, args in different:
        assert shard(name, tp, **args).manifest.shard.signature != a.manifest.shard.signature


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize(
    "engine, case, tp, limit",
    per_engine(
        [
            ("llama_gqa", 2, "100KiB"),
            ("qwen2_bias", 2, "100KiB"),
            ("qwen3_tied_kv2", 2, "100KiB"),
            ("llama_gqa", 2, "96KiB"),
            ("qwen3_tied_kv2", 2, "96KiB"),
            ("llama_tp3_vocab1000", 3, "96KiB"),
        ]
    ),
)
def test_max_file_size_splits_each_rank_into_loadable_parts(shard, engine, case, tp, limit):
    """A new part begins only when the next tensor would pass the limit (the engines' save rule)."""
    max_bytes = int(limit.removesuffix("KiB")) << 10
    s = shard(case, tp, max_file_size=limit)
    assert s.manifest.shard.file_pattern == DEFAULT_PATTERN
    check_rank_files(s)  # every part parses and together they hold exactly the reference
    for r in range(tp):
        files = rank_files(s.directory, s.pattern, r)
        assert len(files) > 1
        sizes = []
        for path in files:
            tensors = read_strict(path)
            assert tensors, f"{path.name} is empty"
            sizes.append([len(tensors[name][2]) for name in file_order(path)])
        for i, part in enumerate(sizes):
            assert sum(part) <= max_bytes or len(part) == 1, f"rank {r} part {i}: {part}"
            if i + 1 < len(sizes):
                assert sum(part) + sizes[i + 1][0] > max_bytes, f"rank {r}: part {i} split early"
    forward_matches(s)


@pytest.mark.parametrize(
    "engine, case, tp, pattern, max_size",
    per_engine(
        [
            ("mistral_kv2", 4, "weights-r{rank}-p{part}.safetensors", 200_000),
            ("mistral_kv2", 4, "sg-{rank}-of-tp-{part}.safetensors", 150_000),
        ],
        lambda case, tp, pattern, size: pattern.split("{")[0].rstrip("-"),
    ),
)
def test_custom_file_pattern_names_every_part(shard, engine, case, tp, pattern, max_size):
    s = shard(case, tp, file_pattern=pattern, max_file_size=max_size)
    assert s.manifest.shard.file_pattern == pattern
    check_rank_files(s)
    names = {p.name for p in s.directory.iterdir() if p.name.endswith(".safetensors")}
    regex = re.escape(pattern).replace(r"\{rank\}", f"[0-{tp - 1}]").replace(r"\{part\}", r"\d+")
    assert names and all(re.fullmatch(regex, n) for n in names)
    assert len(names) > tp  # several parts per rank


# --------------------------------------------------------------------------- dtype conversion


@pytest.mark.parametrize(
    "engine, case, tp, dtype",
    per_engine(
        [
            ("llama_gqa", 2, "float16"),
            ("llama_gqa", 2, "float32"),
            ("qwen3_tied_kv2", 2, "float32"),
            ("mistral_subfolders_fp32", 2, "bfloat16"),
            ("llama_odd_vocab_fp16", 2, "bfloat16"),
            ("llama_odd_vocab_fp16", 4, "bfloat16"),
            ("llama_tp3_vocab1000", 3, "float16"),
        ]
    ),
)
def test_dtype_converts_weights_and_config(shard, engine, case, tp, dtype):
    s = shard(case, tp, dtype=dtype)
    assert s.manifest.shard.dtype == dtype
    check_rank_files(s, dtype)  # rounded to nearest even; vLLM's scales stay float32
    config = json.loads((s.directory / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == dtype
    drop = ("torch_dtype", "dtype")
    assert {k: v for k, v in config.items() if k not in drop} == {
        k: v for k, v in s.model.config.items() if k not in drop
    }
    # the converted model still computes the same function, up to the new rounding
    target = ST_DTYPE[dtype]
    weights = {
        n: models.decode(convert(st, raw, target).tobytes(), target, raw.shape)
        for n, (st, raw) in source_tensors(s.model).items()
    }
    forward_matches(s, weights=weights)


# --------------------------------------------------------------------------- reuse


@ALL_ENGINES
def test_reuse_same_request_fetches_nothing_and_another_tp_reuses_the_unsharded_artifact(
    world, engine
):
    facts = ENGINES[engine]
    case = "llama_multipart"
    # content of its own per engine: the store reuses identical files across artifacts
    seed = 3 + sorted(ENGINES).index(engine)
    repo = world.case_repo(case, f"reuse-{engine}", seed=seed)
    name = f"reuse-{engine}-llama"
    model = world.model(case, seed=seed)
    n_weights = sum(1 for p in model.files if p.endswith(".safetensors"))
    total = sum(len(b) for p, b in model.files.items() if p.endswith(".safetensors"))

    first = world.prefetch(repo, facts.config(2), artifact_name=name)
    assert first.ok and not first.record.reused, first.record.error
    # fetched once, in full (plus the header reads of planning)
    assert total <= weight_bytes(first.requests) <= total + n_weights * HEADER_PROBE
    m1 = world.manifest(first)

    again = world.prefetch(repo, facts.config(2), artifact_name=name)
    assert again.ok and again.record.reused
    assert world.manifest(again).ref == m1.ref
    assert [r for r in again.requests if r.file] == [], "the reused run read repo files"

    tp4 = world.prefetch(repo, facts.config(4), artifact_name=name)
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
