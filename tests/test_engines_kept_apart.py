"""vLLM and SGLang `sharded_state` files are not interchangeable, and preheat keeps them apart.

Both loaders look tensors up by name: SGLang raises KeyError for a key its model
does not have (vLLM's four attention scale buffers per layer), vLLM raises
"Missing keys" when they are absent (STATE_DICT.md, "Differences from vLLM's
layout"). Nothing in the files says which engine wrote them, so the manifest
does, and `preheat resolve` refuses the other engine.
"""

from __future__ import annotations

import pytest

from preheat.api import Location
from preheat_sglang import layout
from preheat_testing.core import engine_launch
from preheat_testing.sharding import (
    SGLANG,
    VLLM,
    assert_only_header_reads,
    check_rank_files,
    n_weight_files,
    rank_tensors,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One hub and one store for both engines."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("engines-apart"), hub)


@pytest.fixture(scope="module")
def shard(world):
    """`shard(case, tp, ...)`: the case pre-sharded for SGLang (cached)."""
    from preheat_testing.sharding import shard_getter

    return shard_getter(world, SGLANG)


@pytest.fixture(scope="module")
def vllm_shard(world):
    """The same for vLLM, in the same store."""
    from preheat_testing.sharding import shard_getter

    return shard_getter(world, VLLM)


SCALES = {f"self_attn.attn._{s}_scale" for s in ("k", "v", "q", "prob")}


@pytest.mark.parametrize(
    "case, tp", [("llama_gqa", 2), ("qwen3_tied_kv2", 4), ("qwen2_small_vocab_tied", 1)]
)
def test_same_model_same_tp_gives_different_key_sets(shard, vllm_shard, case, tp):
    sg, vl = shard(case, tp), vllm_shard(case, tp)
    layers = sg.model.config["num_hidden_layers"]
    scales = {f"model.layers.{i}.{name}" for i in range(layers) for name in SCALES}
    for r in range(tp):
        a = rank_tensors(sg.directory, sg.pattern, r)
        b = rank_tensors(vl.directory, vl.pattern, r)
        assert set(a) != set(b)
        assert set(b) - set(a) == scales  # an SGLang load of vLLM's files: KeyError
        assert set(a) <= set(b)  # a vLLM load of SGLang's files: "Missing keys"
        assert not scales & set(layout.expected_keys(sg.model.config, tp, r))
        # where the vocab padding agrees, every shared tensor is the same
        assert {k: a[k] for k in a} == {k: b[k] for k in a}
    assert sg.manifest.shard.engine == "sglang" and vl.manifest.shard.engine == "vllm"
    assert sg.manifest.shard.signature != vl.manifest.shard.signature
    assert sg.manifest.shard.engine_versions != vl.manifest.shard.engine_versions
    assert sg.manifest.lineage == vl.manifest.lineage  # one unsharded artifact serves both


def test_a_second_engine_reuses_the_unsharded_artifact(world, shard, vllm_shard):
    """Sharding the same repo for the other engine fetches only safetensors headers."""
    sg = shard("llama_multipart", 4, repo_prefix="both")
    vl = vllm_shard("llama_multipart", 4, repo_prefix="both")
    assert not sg.reused and not vl.reused
    assert vl.manifest.lineage == sg.manifest.lineage
    assert_only_header_reads(vl.requests, n_weight_files(sg.model.files))
    check_rank_files(vl)


def test_tp_3_fits_sglang_but_not_vllm_when_the_padded_vocab_does_not_divide(world, shard):
    config = world.model("llama_tp3_vocab1000").config
    assert SGLANG.tp_fits(config, 3) and not VLLM.tp_fits(config, 3)
    assert shard("llama_tp3_vocab1000", 3).manifest.shard.tensor_parallel_size == 3
    repo = world.case_repo("llama_tp3_vocab1000")
    outcome = world.prefetch(repo, VLLM.config(3), artifact_name="vllm-tp3-refused")
    assert outcome.record.status == "failed"
    assert "vocab_size=1000 padded to a multiple of 64 is 1024" in outcome.record.error
    assert_only_header_reads(outcome.requests, 1)


@pytest.mark.parametrize("wrong, right", [("vllm", "sglang"), ("sglang", "vllm")])
def test_resolve_refuses_an_artifact_sharded_for_the_other_engine(
    world, shard, vllm_shard, wrong, right
):
    s = (shard if right == "sglang" else vllm_shard)("llama_gqa", 2)
    assert s.manifest.shard.engine == right
    line = world.cli("resolve", str(s.manifest.ref), "--engine", wrong, "--json").error_line()
    assert f"is pre-sharded for {right}, not {wrong}" in line, line
    assert f"engine: {wrong}" in line
    # the unsharded artifact both were made from serves either engine
    with world.applied():
        where = Location(uri="file:///base", path=str(world.directory(s.base)))
        assert "sharded_state" not in engine_launch(wrong, s.base, where, 2).args
