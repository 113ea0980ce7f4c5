"""Requests the vLLM sharder must refuse, each with one clear line and before any weight byte moves.

Pipeline refusals happen after config.json and the safetensors headers are read
(ranged reads of the first 64 KiB) and before the download: the hub must have
served no weight body and the store must hold no artifact of the request, not
even the unsharded one. Invalid shard arguments are refused earlier still,
before the hub is contacted at all.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from preheat.errors import PreheatError
from preheat_testing import models
from preheat_testing.sharding import assert_only_header_reads, n_weight_files

BASE_CASE = "llama_gqa"  # 8 heads, 4 kv heads: valid tp 1, 2, 4, 8


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


def refused(world, key: str, files, shard_args: dict, **fields) -> str:
    """Run a vLLM shard request on `files` in-process; it must fail before fetching weights."""
    repo = f"bad/{key}"
    name = f"bad-{key}"
    world.add_repo(repo, files)
    outcome = world.prefetch(
        repo,
        {"engine": "vllm", "args": shard_args},
        artifact_name=name,
        **fields,
    )
    error = outcome.record.error or ""
    assert outcome.record.status == "failed", outcome.record
    assert error and "\n" not in error and "internal error" not in error, error
    assert_only_header_reads(outcome.requests, n_weight_files(files))
    assert any(r.file == "config.json" for r in outcome.requests)  # it did look before refusing
    assert world.catalog().versions(name) == [], "something was published"
    return error


# --------------------------------------------------------------------------- shapes and resources


def test_tp_that_does_not_divide_the_heads_is_refused_by_the_cli(world):
    repo = "bad/tp3"
    files = world.model(BASE_CASE).files
    world.add_repo(repo, files)
    config = world.write_yaml("tp3.yaml", "engine: vllm\nargs:\n  tensor_parallel_size: 3\n")
    mark = world.mark()
    result = world.cli(
        "prefetch",
        "hf-model",
        repo,
        "--artifact-name",
        "bad-tp3",
        "--shard-config",
        str(config),
        "--wait",
    )
    line = result.error_line()
    assert "tensor-parallel size 3" in line
    assert "num_attention_heads=8 is not divisible by tp=3" in line
    assert "choose tp from: 1, 2, 4, 8" in line
    assert_only_header_reads(world.requests_since(mark, repo), n_weight_files(files))
    assert world.catalog().versions("bad-tp3") == []


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
    "vocab": (
        dict(heads=12, kv_heads=3, head_dim=64, intermediate=516, vocab=500),
        3,
        "vocab_size=500 padded to a multiple of 64 is 512, which is not divisible by tp=3",
    ),
}


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_tp_that_does_not_fit_kv_heads_intermediate_or_vocab_is_refused(world, key):
    options, tp, expected = SHAPES[key]
    model = models.build_model(
        "llama", **{"hidden": 256, "intermediate": 512, "vocab": 512, **options}
    )
    error = refused(world, f"shape-{key}", model.files, {"tensor_parallel_size": tp})
    assert error.startswith(f"tensor-parallel size {tp} does not fit LlamaForCausalLM: "), error
    assert expected in error
    assert "choose tp from: " in error


def test_accelerator_count_must_equal_tp(world):
    error = refused(
        world,
        "accel-count",
        world.model(BASE_CASE).files,
        {"tensor_parallel_size": 2},
        accelerator="L4:4",
    )
    assert "L4:4" in error and "4 device(s)" in error and "tensor-parallel size is 2" in error


def test_weights_that_do_not_fit_the_accelerator_are_refused(world, monkeypatch):
    from preheat import resources

    # smaller than any real GPU: refused whatever the margins are
    monkeypatch.setitem(
        resources.ACCELERATORS, "tinygpu", resources.Accelerator("TinyGPU 64MB", 64 << 20)
    )
    error = refused(
        world,
        "accel-memory",
        world.model(BASE_CASE).files,
        {"tensor_parallel_size": 2},
        accelerator="tinygpu:2",
    )
    assert "per GPU at tp=2" in error and "TinyGPU 64MB" in error
    assert "use a larger tp or accelerator" in error


def test_memory_check_counts_the_weights_of_one_rank(world, monkeypatch):
    """A GPU that holds half the model but not all of it: tp 1 is refused, tp 2 fits."""
    from preheat import resources

    model = world.model(BASE_CASE)
    weights = sum(math.prod(w.shape) * 2 for w in model.weights.values())
    # room left for weights after the engine's 90% cap and a 1 GiB KV-cache margin: 3/4 of the model
    room = weights * 3 // 4
    memory = int((room + (1 << 30)) / 0.9) + 1
    monkeypatch.setitem(resources.ACCELERATORS, "halfgpu", resources.Accelerator("HalfGPU", memory))
    error = refused(
        world, "accel-half", model.files, {"tensor_parallel_size": 1}, accelerator="halfgpu:1"
    )
    assert "at tp=1" in error
    repo = "bad/accel-half"  # the same repo, now at tp 2 on two such GPUs
    fits = world.prefetch(
        repo,
        {"engine": "vllm", "args": {"tensor_parallel_size": 2}},
        accelerator="halfgpu:2",
        artifact_name="ok-accel-half",
    )
    assert fits.ok, fits.record.error
    manifest = world.manifest(fits)
    assert manifest.serving.weight_bytes_per_rank <= room


# --------------------------------------------------------------------------- checkpoints the CPU slicer refuses


@pytest.mark.parametrize(
    "key, changes, expected",
    [
        (
            "gpt2",
            {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
            ("GPT2LMHeadModel", "not supported", "LlamaForCausalLM"),
        ),
        (
            "quantized",
            {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}},
            ("quantized", "fp8"),
        ),
        (
            "compressed",
            {"compression_config": {"format": "float-quantized"}},
            ("quantized",),
        ),
        (
            "quant-side-file",
            {"extra_files": {"hf_quant_config.json": b'{"quantization": {"quant_algo": "FP8"}}'}},
            ("quantized", "hf_quant_config.json"),
        ),
        ("moe", {"num_local_experts": 8, "num_experts_per_tok": 2}, ("mixture-of-experts", "8")),
        (
            "tied-with-lm-head",
            {"tie_word_embeddings": True},
            ("ties the embeddings", "lm_head.weight"),
        ),
        ("multimodal", {"vision_config": {"hidden_size": 64}}, ("multimodal",)),
    ],
)
def test_checkpoints_the_cpu_slicer_cannot_handle_are_refused(world, key, changes, expected):
    error = refused(world, key, with_config(BASE_CASE, **changes), {"tensor_parallel_size": 2})
    assert error.startswith("cannot pre-shard for vllm on CPU: "), error
    for word in expected:
        assert word in error, error
    assert "method: engine" in error  # says what else could do it


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
def test_tensors_that_do_not_match_the_config_are_refused(world, key, files, expected):
    error = refused(world, key, with_tensors(BASE_CASE, **files), {"tensor_parallel_size": 2})
    assert error.startswith(
        "cannot pre-shard for vllm on CPU: the checkpoint's tensors do not match its config"
    ), error
    assert expected in error


def test_remote_code_needs_trust_remote_code(world):
    auto_map = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    files = with_config(BASE_CASE, auto_map=auto_map)
    error = refused(world, "auto-map", files, {"tensor_parallel_size": 2})
    assert "trust_remote_code: true" in error and "custom code" in error
    # once trusted, a supported architecture is sliced on CPU as usual
    trusted = world.prefetch(
        "bad/auto-map",
        {"engine": "vllm", "args": {"tensor_parallel_size": 2, "trust_remote_code": True}},
        artifact_name="ok-auto-map",
    )
    assert trusted.ok, trusted.record.error
    assert world.manifest(trusted).shard.method == "cpu"


def test_method_engine_without_vllm_is_refused_clearly(world):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert world.env["PREHEAT_VLLM_PYTHON"] == sys.executable
    error = refused(
        world,
        "engine",
        world.model(BASE_CASE).files,
        {"tensor_parallel_size": 1, "method": "engine"},
    )
    assert error.startswith("method: engine cannot run here: "), error
    assert "vllm is not importable" in error.lower() and "PREHEAT_VLLM_PYTHON" in error


# --------------------------------------------------------------------------- invalid shard arguments


BAD_ARGS = [
    ("tp-zero", "tensor_parallel_size: 0", ("tensor_parallel_size must be a positive integer",)),
    ("dtype-int8", "dtype: int8", ("dtype must be one of", "int8")),
    (
        "unknown-field",
        "pipeline_parallel_size: 2",
        ("unknown field(s) pipeline_parallel_size", "tensor_parallel_size"),
    ),
    (
        "pattern-without-rank",
        "file_pattern: model-part-{part}.safetensors",
        ("file_pattern", "{rank}"),
    ),
]


@pytest.mark.parametrize("key, line, expected", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_invalid_shard_args_in_yaml_are_refused_before_contacting_the_hub(
    world, key, line, expected
):
    repo = world.case_repo(BASE_CASE)
    config = world.write_yaml(f"{key}.yaml", f"engine: vllm\nargs:\n  {line}\n")
    runs_before = len(list(world.catalog().runs()))
    mark = world.mark()
    result = world.cli("prefetch", "hf-model", repo, "--shard-config", str(config), "--wait")
    error = result.error_line()
    assert error.startswith("error: vllm shard args: "), error
    for word in expected:
        assert word in error, error
    assert world.requests_since(mark) == [], "the hub was contacted"
    assert len(list(world.catalog().runs())) == runs_before, "a run record was left behind"


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be a positive integer"),
        ({"tensor_parallel_size": True}, "tensor_parallel_size must be a positive integer"),
        ({"tensor_parallel_size": "2"}, "tensor_parallel_size must be a positive integer"),
        ({"dtype": "int8"}, "dtype must be one of auto, bfloat16, float16, float32"),
        ({"file_pattern": "model-part-{part}.safetensors"}, "{rank} and {part}"),
        ({"file_pattern": "model-{rank}-{part}-{shard}.safetensors"}, "only use {rank} and {part}"),
        ({"file_pattern": "sub/model-{rank}-{part}.safetensors"}, "a file name"),
        ({"method": "gpu"}, "method must be one of auto, cpu, engine"),
        ({"max_file_size": "lots"}, "invalid max_file_size 'lots'"),
        ({"max_file_size": 0}, "max_file_size must be a positive integer"),
    ],
)
def test_invalid_shard_args_from_python_are_refused(kwargs, expected):
    from preheat.prefetch import VLLMShardArgs

    with pytest.raises(PreheatError) as info:
        VLLMShardArgs(**kwargs)
    assert expected in str(info.value)


def test_unknown_python_field_and_dict_config_are_refused(world):
    from preheat.prefetch import ShardConfig, VLLMShardArgs, hf_model

    with pytest.raises(TypeError, match="pipeline_parallel_size"):
        VLLMShardArgs(pipeline_parallel_size=2)
    runs_before = len(list(world.catalog().runs()))
    with world.applied():
        with pytest.raises(PreheatError, match=r"unknown field\(s\) pipeline_parallel_size"):
            hf_model(
                "tiny/llama_gqa",
                shard_config={"engine": "vllm", "args": {"pipeline_parallel_size": 2}},
            )
        with pytest.raises(PreheatError, match="must be a VLLMShardArgs, not list"):
            hf_model(
                "tiny/llama_gqa",
                shard_config=ShardConfig(engine="vllm", args=["tensor_parallel_size"]),
            )
    assert len(list(world.catalog().runs())) == runs_before


def test_python_api_shards_with_vllm_shard_args(world):
    """`from preheat.prefetch import VLLMShardArgs` is the plugin's class, and a run with it works."""
    from preheat.prefetch import ShardConfig, VLLMShardArgs, hf_model
    from preheat_vllm.args import VLLMShardArgs as PluginArgs

    assert VLLMShardArgs is PluginArgs
    assert VLLMShardArgs() == VLLMShardArgs(tensor_parallel_size=1, dtype="auto")
    repo = world.case_repo("qwen2_bias", "api")
    with world.applied():
        run = hf_model(
            repo,
            artifact_name="api-qwen2",
            shard_config=ShardConfig(
                engine="vllm", args=VLLMShardArgs(tensor_parallel_size=2, max_file_size="1Mi")
            ),
        )
        run.wait(timeout=120)
        record = run.record
        assert record.status == "succeeded", record.error
        [output] = run.outputs()
    manifest = world.catalog().resolve(str(output.artifact))
    assert manifest.shard.tensor_parallel_size == 2
    parts = {f.path: f.size for f in manifest.files if f.path.endswith(".safetensors")}
    assert {p.split("-part-")[0] for p in parts} == {"model-rank-0", "model-rank-1"}
    assert len(parts) > 2 and max(parts.values()) <= (1 << 20) + (64 << 10)  # split at 1 MiB


def test_unknown_engine_names_what_to_install(world):
    config = world.write_yaml("warp.yaml", "engine: warp-drive\nargs:\n  tensor_parallel_size: 2\n")
    mark = world.mark()
    error = world.cli(
        "prefetch", "hf-model", "tiny/llama_gqa", "--shard-config", str(config), "--wait"
    ).error_line()
    assert "no sharder for engine 'warp-drive'" in error
    assert "vllm" in error  # what is available
    assert "install preheat-warp-drive" in error
    assert world.requests_since(mark) == []
    with pytest.raises(ImportError, match="pip install preheat-warpdrive"):
        from preheat.prefetch import WarpDriveShardArgs  # noqa: F401
