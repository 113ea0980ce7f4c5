"""Requests every engine plugin's sharder refuses, each with one clear line, before any weight byte moves.

Each test runs for vLLM and SGLang (what only one engine refuses stays in that
plugin's tests). A refusal of the checkpoint comes after config.json and the
safetensors headers were read (bounded Range reads of at most 64 KiB) and
before the download: the hub must have served no weight body and the store
must hold no artifact of the request, not even the unsharded one. Invalid
shard arguments are refused earlier still, before the hub is contacted and
before a run record exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import yaml

from preheat.errors import PreheatError
from preheat_testing import models
from preheat_testing.refusals import cli_refusal, refused
from preheat_testing.sharding import ENGINES, assert_only_header_reads, n_weight_files

ENGINE_NAMES = ("vllm", "sglang")
ALL_ENGINES = pytest.mark.parametrize("engine", ENGINE_NAMES)
ARGS_CLASSES = {
    "vllm": "preheat_vllm.args:VLLMShardArgs",
    "sglang": "preheat_sglang.args:SGLangShardArgs",
}
BASE_CASE = "llama_gqa"  # 8 heads, 4 kv heads, intermediate 512, vocab 512: valid tp 1, 2, 4, 8
TP = "<tp>"  # in the tables below: the engine's shard-args key for the tensor-parallel size


def other_tp_key(engine: str) -> str:
    """The tensor-parallel key of the other engine (unknown to this one)."""
    return next(e.tp_key for name, e in ENGINES.items() if name != engine)


def with_tp(value, engine: str):
    """`value` with every `<tp>` (in keys and strings) replaced by the engine's tp key."""
    key = ENGINES[engine].tp_key
    if isinstance(value, dict):
        return {with_tp(k, engine): v for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(with_tp(v, engine) for v in value)
    return value.replace(TP, key) if isinstance(value, str) else value


def args_class(engine: str) -> type:
    module, name = ARGS_CLASSES[engine].split(":")
    return getattr(importlib.import_module(module), name)


def with_config(case: str, extra_files=None, **changes) -> dict[str, bytes]:
    """The case's files with config.json changed (None removes a key) and `extra_files` added."""
    model = models.build_case(case)
    config = dict(model.config)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_bytes = (json.dumps(config, indent=2) + "\n").encode()
    return {**model.files, **(extra_files or {}), "config.json": config_bytes}


def with_tensors(
    case: str, drop: str | None = None, reshape: str | None = None
) -> dict[str, bytes]:
    """The case's files with one tensor dropped from, or cut short in, its single weight file."""
    model = models.build_case(case)
    data = model.files["model.safetensors"]
    raw = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
    tensors = {}
    for name, info in models.parse_safetensors_header(data).items():
        arr = np.frombuffer(data[info.start : info.end], raw[info.dtype]).reshape(info.shape)
        if name == reshape:
            arr = arr[:-1]
        if name != drop:
            tensors[name] = (info.dtype, arr)
    return {**model.files, "model.safetensors": models.safetensors_bytes(tensors)}


def shard_yaml(engine: str, args: dict) -> str:
    """A shard-config YAML file for `engine` with exactly `args` (values written as JSON scalars)."""
    lines = [f"engine: {engine}", "args:" if args else "args: {}"]
    return "\n".join(lines + [f"  {k}: {json.dumps(v)}" for k, v in args.items()]) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One hub and one store for both engines (repos are added under per-engine names)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("refusals-world"), hub)


@pytest.fixture(scope="module")
def refuse(world):
    """`refuse(engine, key, files, args, **request_fields)`: run it in-process; its one-line error."""

    def run(engine: str, key: str, files: dict[str, bytes], args: dict, **fields) -> str:
        return refused(world, engine, key, files, with_tp(args, engine), **fields)

    return run


# --------------------------------------------------------------------------- shapes and resources


@ALL_ENGINES
def test_tp_that_does_not_divide_the_heads_is_refused_by_the_cli(world, engine):
    repo = world.case_repo(BASE_CASE, f"{engine}-tp3")
    files = world.model(BASE_CASE).files
    line, requests = cli_refusal(world, repo, ENGINES[engine].yaml(3), f"{engine}-tp3")
    assert line.startswith("error: ") and "tensor-parallel size 3 does not fit" in line, line
    assert "num_attention_heads=8 is not divisible by tp=3" in line
    assert "choose tp from: 1, 2, 4, 8" in line
    assert_only_header_reads(requests, n_weight_files(files))
    assert world.catalog().versions(f"{engine}-tp3") == []


SHAPES = {
    "kv-heads": (
        dict(heads=12, kv_heads=3, head_dim=64),
        2,
        "num_key_value_heads=3 and tp=2 do not divide one another",
    ),
    "intermediate": (
        dict(heads=8, kv_heads=4, head_dim=64, intermediate=516),
        8,
        "intermediate_size=516 is not divisible by tp=8",
    ),
}


@ALL_ENGINES
@pytest.mark.parametrize("key", sorted(SHAPES))
def test_tp_that_does_not_fit_kv_heads_or_intermediate_is_refused(refuse, engine, key):
    options, tp, expected = SHAPES[key]
    model = models.build_model(
        "llama", **{"hidden": 256, "intermediate": 512, "vocab": 512, **options}
    )
    error = refuse(engine, f"shape-{key}", model.files, {TP: tp})
    assert error.startswith(f"tensor-parallel size {tp} does not fit LlamaForCausalLM: "), error
    assert expected in error
    assert "choose tp from: " in error


@ALL_ENGINES
@pytest.mark.parametrize("accelerator", ["L4:4", "H100:4"])
def test_accelerator_count_must_equal_tp(world, refuse, engine, accelerator):
    files = world.model(BASE_CASE).files
    key = f"accel-{accelerator.split(':')[0].lower()}"
    error = refuse(engine, key, files, {TP: 2}, accelerator=accelerator)
    assert f"{accelerator} has 4 device(s) but tensor-parallel size is 2" in error


@ALL_ENGINES
def test_weights_that_do_not_fit_the_accelerator_are_refused(world, refuse, engine, monkeypatch):
    from preheat import resources

    # smaller than any real GPU: refused whatever the margins are
    monkeypatch.setitem(
        resources.ACCELERATORS, "tinygpu", resources.Accelerator("TinyGPU 64MB", 64 << 20)
    )
    files = world.model(BASE_CASE).files
    error = refuse(engine, "accel-memory", files, {TP: 2}, accelerator="tinygpu:2")
    assert "per GPU at tp=2" in error and "TinyGPU 64MB" in error
    assert "use a larger tp or accelerator" in error


@ALL_ENGINES
def test_memory_check_counts_the_weights_of_one_rank(world, refuse, engine, monkeypatch):
    """A GPU that holds half the model but not all of it: tp 1 is refused, tp 2 fits."""
    from preheat import resources

    model = world.model(BASE_CASE)
    weights = sum(math.prod(w.shape) * 2 for w in model.weights.values())
    # room left for weights after the engine's 90% cap and a 1 GiB KV-cache margin: 3/4 of the model
    room = weights * 3 // 4
    memory = int((room + (1 << 30)) / 0.9) + 1
    monkeypatch.setitem(resources.ACCELERATORS, "halfgpu", resources.Accelerator("HalfGPU", memory))
    error = refuse(engine, "accel-half", model.files, {TP: 1}, accelerator="halfgpu:1")
    assert "at tp=1" in error
    fits = world.prefetch(  # the same repo, now at tp 2 on two such GPUs
        f"{engine}-bad/accel-half",
        ENGINES[engine].config(2),
        accelerator="halfgpu:2",
        artifact_name=f"{engine}-ok-accel-half",
    )
    assert fits.ok, fits.record.error
    assert world.manifest(fits).serving.weight_bytes_per_rank <= room


# --------------------------------------------------------------------------- checkpoints the CPU slicer refuses

#: key: (config.json changes, extra files, words in every engine's error, {engine: more words})
REFUSED = {
    "gpt2": (
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
        None,
        ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM"),
        {"vllm": ("not supported",)},
    ),
    "mixtral-arch": ({"architectures": ["MixtralForCausalLM"]}, None, ("MixtralForCausalLM",), {}),
    "fp8": ({"quantization_config": {"quant_method": "fp8"}}, None, ("quantized", "fp8"), {}),
    "fp8-dynamic": (
        {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}},
        None,
        ("quantized", "fp8"),
        {},
    ),
    "compressed-float": ({"compression_config": {"format": "float-quantized"}}, None, ("quantized",), {}),
    "compressed-int": ({"compression_config": {"format": "int-quantized"}}, None, ("quantized",), {}),
    "modelopt": (
        {},
        {"hf_quant_config.json": b'{"quantization": {"quant_algo": "FP8"}}'},
        ("quantized", "hf_quant_config.json"),
        {},
    ),
    "modelopt-empty": ({}, {"hf_quant_config.json": b"{}"}, ("quantized", "hf_quant_config.json"), {}),
    "modelslim": (
        {},
        {"quant_model_description.json": b"{}"},
        ("quantized", "quant_model_description.json"),
        {},
    ),
    "moe-mixtral": (
        {"num_local_experts": 8, "num_experts_per_tok": 2},
        None,
        ("mixture-of-experts", "experts", "8"),
        {},
    ),
    "moe-qwen": ({"num_experts": 60}, None, ("experts", "60"), {}),
    "moe-deepseek": ({"n_routed_experts": 64}, None, ("experts", "64"), {}),
    "mlp-bias": ({"mlp_bias": True}, None, ("mlp_bias",), {}),
    "tied-with-lm-head": (
        {"tie_word_embeddings": True},
        None,
        ("ties the embeddings", "lm_head.weight"),
        {},
    ),
    "multimodal": ({"vision_config": {"hidden_size": 64}}, None, ("multimodal",), {}),
}  # fmt: skip


@ALL_ENGINES
@pytest.mark.parametrize("key", sorted(REFUSED))
def test_checkpoints_the_cpu_slicer_cannot_handle_are_refused(refuse, engine, key):
    changes, extra, words, more = REFUSED[key]
    error = refuse(engine, key, with_config(BASE_CASE, extra, **changes), {TP: 2})
    assert error.startswith(f"cannot pre-shard for {engine} on CPU: "), error
    for word in words + more.get(engine, ()):
        assert word in error, error
    assert "method: engine" in error  # says what else could do it


@ALL_ENGINES
@pytest.mark.parametrize(
    "key, files, expected",
    [
        ("missing-lm-head", dict(drop="lm_head.weight"), "lm_head.weight"),
        (
            "short-k-proj",
            dict(reshape="model.layers.1.self_attn.k_proj.weight"),
            "model.layers.1.self_attn.k_proj.weight",
        ),
    ],
)
def test_tensors_that_do_not_match_the_config_are_refused(refuse, engine, key, files, expected):
    error = refuse(engine, key, with_tensors(BASE_CASE, **files), {TP: 2})
    assert error.startswith(
        f"cannot pre-shard for {engine} on CPU: the checkpoint's tensors do not match its config"
    ), error
    assert expected in error


@ALL_ENGINES
def test_remote_code_needs_trust_remote_code(world, refuse, engine):
    auto_map = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    error = refuse(engine, "auto-map", with_config(BASE_CASE, auto_map=auto_map), {TP: 2})
    assert "trust_remote_code: true" in error and "custom code" in error
    # once trusted, a supported architecture is sliced on CPU as usual
    trusted = world.prefetch(
        f"{engine}-bad/auto-map",
        ENGINES[engine].config(2, trust_remote_code=True),
        artifact_name=f"{engine}-ok-auto-map",
    )
    assert trusted.ok, trusted.record.error
    spec = world.manifest(trusted).shard
    assert (spec.engine, spec.method) == (engine, "cpu")


@ALL_ENGINES
def test_method_engine_without_the_engine_is_refused_clearly(world, refuse, engine):
    facts = ENGINES[engine]
    if importlib.util.find_spec(engine) is None:
        assert world.env[facts.python_env] == sys.executable
    # else the world hides it behind an interpreter that cannot import anything
    error = refuse(engine, "engine", world.model(BASE_CASE).files, {TP: 1, "method": "engine"})
    assert error.startswith(f"method: engine cannot run here: {engine} is not importable by "), (
        error
    )
    assert f"set {facts.python_env} to an interpreter that has it" in error


# --------------------------------------------------------------------------- invalid shard arguments

# refused by the CLI from a YAML file (the process boundary) ...
YAML_ARGS = [
    ("tp-zero", {TP: 0}, (f"{TP} must be a positive integer, got 0",)),
    ("dtype-int8", {"dtype": "int8"}, ("dtype must be one of auto, bfloat16, float16, float32", "int8")),
    (
        "unknown-field",
        {"pipeline_parallel_size": 2},
        ("unknown field(s) pipeline_parallel_size", f"allowed: {TP}, dtype"),
    ),
    ("other-engines-tp-key", None, (f"allowed: {TP}, dtype",)),
    ("pattern-without-rank", {"file_pattern": "model-part-{part}.safetensors"}, ("file_pattern", "{rank}")),
]  # fmt: skip
# ... and, the same way but in this process, from the same YAML text
MORE_YAML_ARGS = [
    ("tp-text", {TP: "two"}, (f"{TP} must be a positive integer",)),
    ("method", {"method": "gpu"}, ("method must be one of auto, cpu, engine",)),
    ("pattern", {"file_pattern": "shard-{part}.safetensors"}, ("{rank} and {part}",)),
    ("size", {"max_file_size": "lots"}, ("invalid max_file_size 'lots'",)),
    ("pp", {"pp_size": 2}, ("unknown field(s) pp_size",)),
]


@ALL_ENGINES
@pytest.mark.parametrize("key, args, words", YAML_ARGS, ids=[c[0] for c in YAML_ARGS])
def test_invalid_shard_args_in_yaml_are_refused_before_contacting_the_hub(
    world, engine, key, args, words
):
    if args is None:  # e.g. `tp` for vLLM, `tensor_parallel_size` for SGLang
        args, words = (
            {other_tp_key(engine): 2},
            (f"unknown field(s) {other_tp_key(engine)}", *words),
        )
    repo = world.case_repo(BASE_CASE, f"{engine}-args")
    runs_before = len(list(world.catalog().runs()))
    line, requests = cli_refusal(
        world, repo, shard_yaml(engine, with_tp(args, engine)), f"{engine}-args-{key}"
    )
    assert line.startswith(f"error: {engine} shard args: "), line
    for word in with_tp(words, engine):
        assert word in line, line
    assert requests == [], "the hub was contacted"
    assert len(list(world.catalog().runs())) == runs_before, "a run record was left behind"


@ALL_ENGINES
@pytest.mark.parametrize("key, args, words", MORE_YAML_ARGS, ids=[c[0] for c in MORE_YAML_ARGS])
def test_more_shard_args_from_yaml_are_refused(engine, key, args, words):
    from preheat.shard_config import ShardRequest

    with pytest.raises(PreheatError) as info:
        ShardRequest.parse(yaml.safe_load(shard_yaml(engine, with_tp(args, engine))))
    assert str(info.value).startswith(f"{engine} shard args: "), info.value
    for word in with_tp(words, engine):
        assert word in str(info.value)


@ALL_ENGINES
@pytest.mark.parametrize(
    "kwargs, prefix",
    [
        ({TP: 0}, f"{TP} must be a positive integer"),
        ({TP: True}, f"{TP} must be a positive integer"),
        ({TP: "2"}, f"{TP} must be a positive integer"),
        ({"dtype": "int8"}, "dtype must be one of auto, bfloat16, float16, float32"),
        (
            {"file_pattern": "model-part-{part}.safetensors"},
            "file_pattern must be a file name with {rank} and {part}",
        ),
        (
            {"file_pattern": "model-{rank}-{part}-{shard}.safetensors"},
            "file_pattern may only use {rank} and {part}",
        ),
        (
            {"file_pattern": "sub/model-{rank}-{part}.safetensors"},
            "file_pattern must be a file name",
        ),
        ({"method": "gpu"}, "method must be one of auto, cpu, engine"),
        ({"max_file_size": "lots"}, "invalid max_file_size 'lots'"),
        ({"max_file_size": "huge"}, "invalid max_file_size 'huge'"),
        ({"max_file_size": 0}, "max_file_size must be a positive integer"),
    ],
)
def test_invalid_shard_args_from_python_are_refused(engine, kwargs, prefix):
    with pytest.raises(PreheatError) as info:
        args_class(engine)(**with_tp(kwargs, engine))
    assert str(info.value).startswith(with_tp(prefix, engine)), info.value


@ALL_ENGINES
def test_unknown_python_fields_and_bad_shard_configs_are_refused(world, engine):
    import preheat.prefetch
    from preheat.prefetch import ShardConfig, hf_model

    cls = getattr(preheat.prefetch, args_class(engine).__name__)
    for unknown in ("pipeline_parallel_size", other_tp_key(engine)):
        with pytest.raises(TypeError, match=unknown):
            cls(**{unknown: 2})
    repo = world.case_repo("qwen3_qk_norm", f"{engine}-api")
    runs_before = len(list(world.catalog().runs()))
    with world.applied():
        with pytest.raises(PreheatError, match=r"unknown field\(s\) pipeline_parallel_size"):
            hf_model(repo, shard_config={"engine": engine, "args": {"pipeline_parallel_size": 2}})
        with pytest.raises(PreheatError, match=f"must be a {cls.__name__}, not list"):
            hf_model(
                repo, shard_config=ShardConfig(engine=engine, args=[ENGINES[engine].tp_key, 2])
            )
    assert len(list(world.catalog().runs())) == runs_before


@ALL_ENGINES
@pytest.mark.parametrize("split", [True, False], ids=["parts-of-1MiB", "one-part-per-rank"])
def test_python_api_shards_with_the_plugins_shard_args(world, engine, split):
    """`from preheat.prefetch import <Engine>ShardArgs` is the plugin's class, and a run with it works."""
    import preheat.prefetch
    from preheat.prefetch import ShardConfig, hf_model

    plugin_class = args_class(engine)
    cls = getattr(preheat.prefetch, plugin_class.__name__)
    tp_key = ENGINES[engine].tp_key
    assert cls is plugin_class
    assert cls() == cls(**{tp_key: 1, "dtype": "auto"})
    case, tp, extra = (
        ("qwen2_bias", 2, {"max_file_size": "1Mi"}) if split else ("qwen3_qk_norm", 4, {})
    )
    repo = world.case_repo(case, f"{engine}-api")
    with world.applied():
        run = hf_model(
            repo,
            artifact_name=f"{engine}-api-{case}",
            shard_config=ShardConfig(engine=engine, args=cls(**{tp_key: tp}, **extra)),
        )
        run.wait(timeout=120)
        assert run.record.status == "succeeded", run.record.error
        [output] = run.outputs()
    manifest = world.catalog().resolve(str(output.artifact))
    assert (manifest.shard.engine, manifest.shard.tensor_parallel_size) == (engine, tp)
    parts = {f.path: f.size for f in manifest.files if f.path.endswith(".safetensors")}
    if split:
        assert {p.split("-part-")[0] for p in parts} == {"model-rank-0", "model-rank-1"}
        assert len(parts) > 2 and max(parts.values()) <= (1 << 20) + (64 << 10)  # split at 1 MiB
    else:
        assert sorted(parts) == [f"model-rank-{r}-part-0.safetensors" for r in range(tp)]


def test_unknown_engine_names_what_to_install(world):
    config = world.write_yaml("warp.yaml", "engine: warp-drive\nargs:\n  tensor_parallel_size: 2\n")
    mark = world.mark()
    error = world.cli(
        "prefetch", "hf-model", "tiny/llama_gqa", "--shard-config", str(config), "--wait"
    ).error_line()
    assert "no sharder for engine 'warp-drive'" in error
    for engine in ENGINE_NAMES:
        assert engine in error  # what is available
    assert "install preheat-warp-drive" in error
    assert world.requests_since(mark) == []
    with pytest.raises(ImportError, match="pip install preheat-warpdrive"):
        from preheat.prefetch import WarpDriveShardArgs  # noqa: F401
