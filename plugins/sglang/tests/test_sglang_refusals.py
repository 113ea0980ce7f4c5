"""Requests the SGLang sharder refuses: one clear line, before any weight byte is fetched.

A refusal of the checkpoint comes after config.json and the safetensors headers
were read (bounded Range reads of at most 64 KiB) and before the download; the
store then holds nothing of the request, not even the unsharded artifact.
Invalid shard arguments (DP attention among them) are refused earlier still,
before the hub is contacted and before a run record exists.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml

from preheat.errors import PreheatError
from preheat_sglang import layout
from preheat_testing import models
from preheat_testing.sharding import SGLANG, assert_only_header_reads, n_weight_files

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
        repo, name = f"sglang-bad/{key}", f"sglang-bad-{key}"
        world.add_repo(repo, files)
        outcome = world.prefetch(
            repo, {"engine": "sglang", "args": args}, artifact_name=name, **fields
        )
        error = outcome.record.error or ""
        assert outcome.record.status == "failed", outcome.record
        assert error and "\n" not in error and "internal error" not in error, error
        assert any(r.file == "config.json" for r in outcome.requests), "refused without looking"
        assert_only_header_reads(outcome.requests, n_weight_files(files))
        assert world.catalog().versions(name) == [], "something was published"
        return error

    return run


def cli_refusal(world, repo: str, yaml_text: str, name: str):
    """`preheat prefetch hf-model REPO --shard-config FILE --wait`: (error line, hub requests)."""
    path = world.write_yaml(f"sglang-{name}.yaml", yaml_text)
    mark = world.mark()
    result = world.cli(
        "prefetch", "hf-model", repo, "--artifact-name", name, "--shard-config", str(path), "--wait"
    )
    return result.error_line(), world.requests_since(mark)


# --------------------------------------------------------------------------- tensor-parallel size


def test_tp_that_does_not_divide_the_heads_is_refused_by_the_cli(world):
    repo = world.case_repo(BASE, "sglang-tp3")
    line, requests = cli_refusal(world, repo, SGLANG.yaml(3), "sglang-tp3")
    assert line.startswith("error: ") and "tensor-parallel size 3 does not fit" in line
    assert "num_attention_heads=8 is not divisible by tp=3" in line
    assert "choose tp from: 1, 2, 4, 8" in line
    assert_only_header_reads(requests, 1)
    assert world.catalog().versions("sglang-tp3") == []


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


def test_accelerator_count_must_equal_tp(world, refuse):
    error = refuse("accel", world.model(BASE).files, {"tp": 2}, accelerator="H100:4")
    assert "H100:4 has 4 device(s) but tensor-parallel size is 2" in error


# --------------------------------------------------------------------------- checkpoints


REFUSED = {
    "quantized": ({"quantization_config": {"quant_method": "fp8"}}, None, ("quantized", "fp8")),
    "compressed": ({"compression_config": {"format": "int-quantized"}}, None, ("quantized",)),
    "modelopt": ({}, {"hf_quant_config.json": b"{}"}, ("quantized", "hf_quant_config.json")),
    "modelslim": (
        {},
        {"quant_model_description.json": b"{}"},
        ("quantized", "quant_model_description.json"),
    ),
    "moe-mixtral": ({"num_local_experts": 8, "num_experts_per_tok": 2}, None, ("experts", "8")),
    "moe-qwen": ({"num_experts": 60}, None, ("experts", "60")),
    "moe-deepseek": ({"n_routed_experts": 64}, None, ("experts", "64")),
    "gpt2": (
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
        None,
        ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM"),
    ),
    "mixtral-arch": ({"architectures": ["MixtralForCausalLM"]}, None, ("MixtralForCausalLM",)),
    "gelu": ({"hidden_act": "gelu"}, None, ("hidden_act 'gelu'", "silu")),
    "mlp-bias": ({"mlp_bias": True}, None, ("mlp_bias",)),
    "fope": (
        {"rope_scaling": {"rope_type": "default", "use_fope": True}},
        None,
        ("use_fope", "cos_coef"),
    ),
    "multimodal": ({"vision_config": {"hidden_size": 64}}, None, ("multimodal",)),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_checkpoints_sglang_lays_out_differently_are_refused(world, refuse, key):
    changes, extra, words = REFUSED[key]
    files = config_changed(world, BASE, extra, **changes)
    error = refuse(key, files, {"tp": 2})
    assert error.startswith("cannot pre-shard for sglang on CPU: "), error
    for word in words:
        assert word in error, error


def test_remote_code_needs_trust_remote_code(world, refuse):
    files = config_changed(world, BASE, auto_map={"AutoModelForCausalLM": "m.CustomLM"})
    error = refuse("auto-map", files, {"tp": 2})
    assert "trust_remote_code: true" in error
    trusted = world.prefetch(
        "sglang-bad/auto-map",
        SGLANG.config(2, trust_remote_code=True),
        artifact_name="sglang-ok-auto-map",
    )
    assert trusted.ok, trusted.record.error
    assert world.manifest(trusted).shard.engine == "sglang"


def test_method_engine_without_sglang_installed_is_refused_clearly(world, refuse):
    if importlib.util.find_spec("sglang") is None:
        assert world.env["PREHEAT_SGLANG_PYTHON"] == sys.executable
    error = refuse("engine", world.model(BASE).files, {"tp": 1, "method": "engine"})
    assert error.startswith("method: engine cannot run here: sglang is not importable by "), error
    assert "set PREHEAT_SGLANG_PYTHON to an interpreter that has it" in error


# --------------------------------------------------------------------------- shard arguments


# refused by the CLI from a YAML file (the process boundary) ...
YAML_ARGS = [
    ("attn-dp", {"attn_dp_size": 2}, ("attn_dp_size", "DP-attention", "plain tp")),
    ("dp-attention", {"enable_dp_attention": True}, ("enable_dp_attention", "DP-attention")),
    ("tp-zero", {"tp": 0}, ("tp must be a positive integer, got 0",)),
    ("dtype-int8", {"dtype": "int8"}, ("dtype must be one of auto, bfloat16, float16, float32",)),
    (
        "vllm-key",
        {"tensor_parallel_size": 2},
        ("unknown field(s) tensor_parallel_size", "allowed: tp, dtype"),
    ),
]
# ... and, the same way but in this process, from the same YAML text
MORE_YAML_ARGS = [
    ("attn-dp-zero", {"attn_dp_size": 0}, ("attn_dp_size must be a positive integer",)),
    (
        "attn-dp-text",
        {"enable_dp_attention": "yes"},
        ("enable_dp_attention must be true or false",),
    ),
    ("tp-text", {"tp": "two"}, ("tp must be a positive integer",)),
    ("method", {"method": "gpu"}, ("method must be one of auto, cpu, engine",)),
    ("pattern", {"file_pattern": "shard-{part}.safetensors"}, ("{rank} and {part}",)),
    ("size", {"max_file_size": "lots"}, ("invalid max_file_size 'lots'",)),
    ("pp", {"pp_size": 2}, ("unknown field(s) pp_size",)),
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
    from preheat.shard_config import ShardRequest

    with pytest.raises(PreheatError) as info:
        ShardRequest.parse(yaml.safe_load(SGLANG.yaml(**args)))
    assert str(info.value).startswith("sglang shard args: "), info.value
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"attn_dp_size": 2}, "attn_dp_size: DP-attention layouts"),
        ({"enable_dp_attention": True}, "enable_dp_attention: DP-attention layouts"),
        ({"tp": 0}, "tp must be a positive integer"),
        ({"tp": True}, "tp must be a positive integer"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"max_file_size": "huge"}, "invalid max_file_size 'huge'"),
        ({"context_length": 0}, "context_length must be a positive integer"),
    ],
)
def test_shard_args_from_python_are_refused(kwargs, error):
    from preheat.prefetch import SGLangShardArgs

    with pytest.raises(PreheatError, match="^" + error.replace("(", r"\(")):
        SGLangShardArgs(**kwargs)


def test_python_api_takes_sglang_shard_args(world):
    """`from preheat.prefetch import SGLangShardArgs` is the plugin's class; runs and refusals."""
    from preheat.prefetch import SGLangShardArgs, ShardConfig, hf_model
    from preheat_sglang.args import SGLangShardArgs as PluginArgs

    assert SGLangShardArgs is PluginArgs
    assert SGLangShardArgs() == SGLangShardArgs(tp=1, dtype="auto", attn_dp_size=1)
    with pytest.raises(TypeError, match="tensor_parallel_size"):
        SGLangShardArgs(tensor_parallel_size=2)
    repo = world.case_repo("qwen3_qk_norm", "sglang-api")
    runs = len(list(world.catalog().runs()))
    with world.applied():
        with pytest.raises(PreheatError, match=r"unknown field\(s\) attn_cp_size"):
            hf_model(repo, shard_config={"engine": "sglang", "args": {"attn_cp_size": 2}})
        with pytest.raises(PreheatError, match="sglang shard args: attn_dp_size"):
            hf_model(repo, shard_config={"engine": "sglang", "args": {"attn_dp_size": 2}})
        with pytest.raises(PreheatError, match="must be a SGLangShardArgs, not list"):
            hf_model(repo, shard_config=ShardConfig(engine="sglang", args=["tp", 2]))
    assert len(list(world.catalog().runs())) == runs
    with world.applied():
        run = hf_model(
            repo,
            artifact_name="sglang-api-qwen3",
            shard_config=ShardConfig(engine="sglang", args=SGLangShardArgs(tp=4)),
        )
        run.wait(timeout=120)
        assert run.record.status == "succeeded", run.record.error
        [output] = run.outputs()
    manifest = world.catalog().resolve(str(output.artifact))
    assert (manifest.shard.engine, manifest.shard.tensor_parallel_size) == ("sglang", 4)
    ranks = sorted(f.path for f in manifest.files if f.path.endswith(".safetensors"))
    assert ranks == [f"model-rank-{r}-part-0.safetensors" for r in range(4)]


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
