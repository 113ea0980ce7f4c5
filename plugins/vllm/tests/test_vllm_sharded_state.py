"""What only vLLM's `sharded_state` files hold, checked without an engine.

The checks every engine shares (bit-for-bit rank files against a numpy
reference, the simulated tensor-parallel forward pass, artifact contents,
manifest, parts, dtype conversion, reuse) run for vLLM and SGLang alike in
`tests/test_sharded_state_engines.py`; the real vLLM loads the files in
`test_conformance.py`.
"""

from __future__ import annotations

import numpy as np

from preheat_testing.sharding import VLLM, check_rank_files, rank_tensors

SCALES = ("k", "v", "q", "prob")


def test_every_layer_holds_the_four_attention_scales(shard):
    """vLLM's Attention registers k/v/q/prob scales as persistent buffers: 0-dim float32 1.0."""
    assert {b[0] for b in VLLM.layer_buffers} == {f"self_attn.attn._{s}_scale" for s in SCALES}
    s = shard("qwen3_tied_kv2", 2)
    for r in range(2):
        got = rank_tensors(s.directory, s.pattern, r)
        for i in range(s.model.config["num_hidden_layers"]):
            for scale in SCALES:
                dtype, shape, raw = got[f"model.layers.{i}.self_attn.attn._{scale}_scale"]
                assert (dtype, shape) == ("F32", ())
                assert np.frombuffer(raw, np.float32).tolist() == [1.0]
    check_rank_files(s)


def test_scales_stay_float32_when_the_weights_are_converted(shard):
    s = shard("llama_gqa", 2, dtype="float16")
    got = rank_tensors(s.directory, s.pattern, 0)
    assert {got[f"model.layers.0.self_attn.attn._{x}_scale"][0] for x in SCALES} == {"F32"}
    assert got["model.layers.0.self_attn.qkv_proj.weight"][0] == "F16"
