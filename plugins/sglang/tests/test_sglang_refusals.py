"""What only the SGLang sharder refuses, or refuses in its own words: one clear line, before
any weight byte is fetched.

The refusals every engine shares (tensor-parallel sizes, accelerators,
checkpoints the CPU slicer cannot handle, untrusted remote code, `method:
engine` without the engine, invalid shard arguments) run for vLLM and SGLang
alike in `tests/test_shard_refusals_engines.py`. Here: the sizes SGLang's
widened vocabulary padding allows, the checkpoints SGLang lays out
differently, and DP-attention arguments (refused before the hub is contacted
and before a run record exists).
"""

from __future__ import annotations

import json

import pytest
import yaml

from preheat.api import PreheatError
from preheat_sglang import layout
from preheat_testing import models
from preheat_testing.refusals import cli_refusal as shared_cli_refusal
from preheat_testing.refusals import refused
from preheat_testing.sharding import SGLANG

BASE = "llama_gqa"  # 8 heads, 4 kv heads, intermediate 512, vocab 512


def config_changed(world, case: str, extra_files=None, **changes) -> dict[str, bytes]:
    """The case's files with config.json keys set (None deletes one) and extra files added."""
    model = world.model(case)
    config = {**model.config, **changes}
    config = {k: v for k, v in config.items() if v is not None}
    return {
        **model.files,
        **(extra_files or {}),
        "config.json": (json.dumps(config, indent=2) + "\n").encode(),
    }


@pytest.fixture(scope="module")
def refuse(world):
    """`refuse(key, files, args, **request_fields)`: run it in-process; return its one-line error."""

    def run(key: str, files: dict[str, bytes], args: dict, **fields) -> str:
        return refused(world, "sglang", key, files, args, **fields)

    return run


def cli_refusal(world, repo: str, yaml_text: str, name: str):
    """`preheat prefetch hf-model REPO --shard-config FILE --wait`: (error line, hub requests)."""
    return shared_cli_refusal(world, repo, yaml_text, name, f"sglang-{name}")


# --------------------------------------------------------------------------- tensor-parallel size


def test_kv_heads_and_intermediate_that_tp_does_not_divide_are_refused(world, refuse):
    error = refuse("kv3-tp2", world.model("llama_tp3_vocab1000").files, {"tp": 2})
    assert error.startswith("tensor-parallel size 2 does not fit LlamaForCausalLM: "), error
    assert "num_key_value_heads=3 and tp=2 do not divide one another" in error
    # SGLang widens the vocab padding, so the sizes to choose from include 3 and 6
    assert error.endswith("choose tp from: 1, 3, 6"), error
    model = models.build_model(
        "qwen3", hidden=128, heads=8, kv_heads=8, head_dim=32, intermediate=516, vocab=300
    )
    error = refuse("inter-tp8", model.files, {"tp": 8})
    assert "intermediate_size=516 is not divisible by tp=8" in error
    assert "choose tp from: 1, 2, 4" in error and "vocab" not in error


@pytest.mark.parametrize(
    "case", sorted(models.CASES) + ["llama_tp3_vocab1000", "qwen3_tp3_mqa_tied"]
)
def test_the_sizes_preheat_accepts_are_those_sglang_accepts(world, case):
    """preheat's tp check for SGLang agrees with the layout derived from SGLang's source."""
    from preheat_sglang.sharding import LAYOUT
    from preheat_tp import ModelShape, check_tp, valid_tps

    config = world.model(case).config
    shape = ModelShape.from_config(config)
    sglang = [tp for tp in range(1, 17) if not layout.unsupported_reasons(config, tp)]
    assert valid_tps(shape, LAYOUT.vocab_multiple, widen_vocab=LAYOUT.widen_vocab_for_tp) == sglang
    for tp in range(1, 17):
        problems = check_tp(shape, tp, LAYOUT.vocab_multiple, widen_vocab=True)
        assert bool(problems) == (tp not in sglang), (tp, problems)
        assert not [p for p in problems if "vocab" in p]


# --------------------------------------------------------------------------- checkpoints

# what SGLang lays out differently but vLLM's slicer accepts
REFUSED = {
    "gelu": ({"hidden_act": "gelu"}, None, ("hidden_act 'gelu'", "silu")),
    "fope": (
        {"rope_scaling": {"rope_type": "default", "use_fope": True}},
        None,
        ("use_fope", "cos_coef"),
    ),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_checkpoints_sglang_lays_out_differently_are_refused(world, refuse, key):
    changes, extra, words = REFUSED[key]
    files = config_changed(world, BASE, extra, **changes)
    error = refuse(key, files, {"tp": 2})
    assert error.startswith("cannot pre-shard for sglang on CPU: "), error
    for word in words:
        assert word in error, error
    assert "method: engine" in error


# --------------------------------------------------------------------------- DP attention


# refused by the CLI from a YAML file (the process boundary) ...
YAML_ARGS = [
    ("attn-dp", {"attn_dp_size": 2}, ("attn_dp_size", "DP-attention", "plain tp")),
    ("dp-attention", {"enable_dp_attention": True}, ("enable_dp_attention", "DP-attention")),
]
# ... and, the same way but in this process, from the same YAML text
MORE_YAML_ARGS = [
    ("attn-dp-zero", {"attn_dp_size": 0}, ("attn_dp_size must be a positive integer",)),
    (
        "attn-dp-text",
        {"enable_dp_attention": "yes"},
        ("enable_dp_attention must be true or false",),
    ),
]


@pytest.mark.parametrize("key, args, words", YAML_ARGS, ids=[c[0] for c in YAML_ARGS])
def test_shard_args_from_yaml_are_refused_before_contacting_the_hub(world, key, args, words):
    repo = world.case_repo(BASE, "sglang-args")
    runs = len(list(world.catalog().runs()))
    line, requests = cli_refusal(world, repo, SGLANG.yaml(**args), f"sglang-args-{key}")
    assert line.startswith("error: sglang shard args: "), line
    for word in words:
        assert word in line, line
    assert requests == [], "the hub was contacted"
    assert len(list(world.catalog().runs())) == runs, "a run record was left behind"


@pytest.mark.parametrize("key, args, words", MORE_YAML_ARGS, ids=[c[0] for c in MORE_YAML_ARGS])
def test_more_shard_args_from_yaml_are_refused(key, args, words):
    from preheat_testing.core import parse_shard_config

    with pytest.raises(PreheatError) as info:
        parse_shard_config(yaml.safe_load(SGLANG.yaml(**args)))
    assert str(info.value).startswith("sglang shard args: "), info.value
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"attn_dp_size": 2}, "attn_dp_size: DP-attention layouts"),
        ({"enable_dp_attention": True}, "enable_dp_attention: DP-attention layouts"),
        ({"context_length": 0}, "context_length must be a positive integer"),
    ],
)
def test_shard_args_from_python_are_refused(kwargs, error):
    from preheat.prefetch import SGLangShardArgs

    with pytest.raises(PreheatError, match="^" + error.replace("(", r"\(")):
        SGLangShardArgs(**kwargs)


def test_python_api_refuses_dp_attention_and_flags_it_does_not_take(world):
    """Defaults are plain tp; DP attention and `attn_cp_size` are refused before any run exists."""
    from preheat.prefetch import SGLangShardArgs, hf_model

    assert SGLangShardArgs() == SGLangShardArgs(tp=1, dtype="auto", attn_dp_size=1)
    repo = world.case_repo("qwen3_qk_norm", "sglang-api")
    runs = len(list(world.catalog().runs()))
    with world.applied():
        with pytest.raises(PreheatError, match=r"unknown field\(s\) attn_cp_size"):
            hf_model(repo, shard_config={"engine": "sglang", "args": {"attn_cp_size": 2}})
        with pytest.raises(PreheatError, match="sglang shard args: attn_dp_size"):
            hf_model(repo, shard_config={"engine": "sglang", "args": {"attn_dp_size": 2}})
    assert len(list(world.catalog().runs())) == runs
