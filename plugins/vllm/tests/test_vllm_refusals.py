"""What only the vLLM sharder refuses: one clear line, before any weight byte moves.

The refusals every engine shares (tensor-parallel sizes, accelerators,
checkpoints the CPU slicer cannot handle, untrusted remote code, `method:
engine` without the engine, invalid shard arguments) run for vLLM and SGLang
alike in `tests/test_shard_refusals_engines.py`.
"""

from __future__ import annotations

from preheat_testing import models
from preheat_testing.sharding import VLLM, assert_only_header_reads, n_weight_files


def test_tp_that_does_not_divide_the_64_padded_vocab_is_refused(world):
    """vLLM pads the vocabulary to 64 and never widens it (SGLang pads to 64 * tp instead)."""
    model = models.build_model(
        "llama", hidden=256, heads=12, kv_heads=3, head_dim=64, intermediate=516, vocab=500
    )
    assert not VLLM.tp_fits(model.config, 3)
    repo, name = "bad/shape-vocab", "bad-shape-vocab"
    world.add_repo(repo, model.files)
    outcome = world.prefetch(repo, VLLM.config(3), artifact_name=name)
    error = outcome.record.error or ""
    assert outcome.record.status == "failed", outcome.record
    assert error and "\n" not in error and "internal error" not in error, error
    assert_only_header_reads(outcome.requests, n_weight_files(model.files))
    assert any(r.file == "config.json" for r in outcome.requests)  # it did look before refusing
    assert world.catalog().versions(name) == [], "something was published"
    assert error.startswith("tensor-parallel size 3 does not fit LlamaForCausalLM: "), error
    assert (
        "vocab_size=500 padded to a multiple of 64 is 512, which is not divisible by tp=3" in error
    )
    assert "choose tp from: " in error
