"""Metadata and serving facts: detected from config.json, the model card and safetensors
headers (never from weight bytes), overridable by the user, recorded in the manifest."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest

from preheat.errors import PreheatError
from preheat.metadata import detect_metadata, parse_safetensors_header, serving_facts
from preheat_testing.models import safetensors_bytes


def reader(data: bytes, reads: list | None = None):
    def read(start: int, length: int) -> bytes:
        if reads is not None:
            reads.append((start, length))
        return data[start : start + length]

    return read


def expected_facts(model) -> dict:
    cfg = model.config
    params = sum(math.prod(w.shape) for w in model.weights.values())
    itemsize = {"bfloat16": 2, "float16": 2, "float32": 4}[cfg["torch_dtype"]]
    return {
        "parameters": params,
        "bytes_by_dtype": {cfg["torch_dtype"]: params * itemsize},
        "weight_bytes": params * itemsize,
        "dtype": cfg["torch_dtype"],
        "layers": cfg["num_hidden_layers"],
        "hidden": cfg["hidden_size"],
        "heads": cfg["num_attention_heads"],
        "kv_heads": cfg["num_key_value_heads"],
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        "intermediate": cfg["intermediate_size"],
        "vocab": cfg["vocab_size"],
        "max_positions": cfg["max_position_embeddings"],
        "tied_embeddings": cfg["tie_word_embeddings"],
        "quantization": None,
        "experts": None,
    }


# --------------------------------------------------------------------------- safetensors headers


def test_a_small_header_is_parsed_from_one_read():
    data = safetensors_bytes(
        {"w": ("BF16", np.zeros((4, 8), np.uint16)), "b": ("F32", np.zeros(3, np.float32))}
    )
    reads = []
    header = parse_safetensors_header(reader(data, reads), "x.safetensors")
    assert len(reads) == 1
    assert header.tensors["w"].shape == (4, 8) and header.tensors["w"].nbytes == 64
    assert header.tensors["b"].dtype == "F32" and header.tensors["b"].nbytes == 12
    assert header.metadata == {"format": "pt"}
    assert header.tensors["b"].start == header.data_start  # "b" sorts first
    assert data[header.tensors["w"].start : header.tensors["w"].end] == bytes(64)


def test_a_header_larger_than_the_probe_takes_a_second_read():
    tensors = {
        f"model.layers.{i}.some.rather.long.parameter.name.weight": ("F16", np.zeros(1, np.float16))
        for i in range(2000)
    }
    data = safetensors_bytes(tensors)
    assert struct.unpack("<Q", data[:8])[0] > 64 << 10
    reads = []
    header = parse_safetensors_header(reader(data, reads), "big.safetensors")
    assert len(reads) == 2
    assert len(header.tensors) == 2000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02", "not a safetensors file (too short)"),
        (struct.pack("<Q", 1 << 40) + b"{}", "not a safetensors file (header of"),
        (struct.pack("<Q", 5) + b"{nope", "corrupt safetensors header"),
        (struct.pack("<Q", 2) + b"[]", "corrupt safetensors header"),
        (struct.pack("<Q", 16) + b'{"w": {"x": 1}} ', "corrupt safetensors header"),
    ],
)
def test_a_broken_header_is_a_clear_error(data, message):
    with pytest.raises(PreheatError, match=re.escape(message)) as info:
        parse_safetensors_header(reader(data), "bad.safetensors")
    assert "bad.safetensors" in str(info.value)


# --------------------------------------------------------------------------- detection rules


README = """---
license: mit
pipeline_tag: text2text-generation
tags: [a, b]
---

# Title

<p align="center"><img src="logo.png"></p>

![banner](banner.png)

This [model](https://example.com) is a *small* test
model, spread over two lines.

Second paragraph.
"""


def test_metadata_from_config_card_and_file_names():
    config = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    meta = detect_metadata(config, README, ["model.safetensors", "config.json"], {})
    assert meta.architecture == "MistralForCausalLM"
    assert meta.model_type == "mistral"
    assert meta.task == "text2text-generation"  # the card wins over the architecture
    assert meta.format == "safetensors"
    assert meta.license == "mit"
    assert meta.modality == ("text",)
    assert meta.short_description == "This model is a *small* test model, spread over two lines."


@pytest.mark.parametrize(
    ("arch", "task"),
    [
        ("LlamaForCausalLM", "text-generation"),
        ("GPT2LMHeadModel", "text-generation"),
        ("BertForSequenceClassification", "text-classification"),
        ("BertForMaskedLM", "fill-mask"),
        ("BertModel", "feature-extraction"),
        ("Weird", None),
    ],
)
def test_task_from_the_architecture_when_the_card_has_none(arch, task):
    assert detect_metadata({"architectures": [arch]}, None, [], {}).task == task


@pytest.mark.parametrize(
    ("paths", "fmt"),
    [
        (["model.safetensors", "pytorch_model.bin"], "safetensors"),
        (["model-q4.gguf"], "gguf"),
        (["pytorch_model.bin"], "pytorch"),
        (["README.md"], None),
    ],
)
def test_format_from_file_names(paths, fmt):
    assert detect_metadata(None, None, paths, {}).format == fmt


def test_multimodal_configs_add_modalities():
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "vision_config": {},
        "audio_config": {},
    }
    assert detect_metadata(config, None, [], {}).modality == ("text", "image", "audio")


def test_user_values_override_detection():
    given = {
        "architecture": "Custom",
        "task": "summarization",
        "modality": ["text", "image"],
        "format": "gguf",
        "model_type": "custom",
        "short_description": "Mine.",
    }
    meta = detect_metadata(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
        README,
        ["m.safetensors"],
        given,
    )
    assert (meta.architecture, meta.task, meta.modality, meta.format, meta.model_type, meta.short_description) == (
        "Custom", "summarization", ("text", "image"), "gguf", "custom", "Mine.",
    )  # fmt: skip
    assert meta.license == "mit"


def test_a_long_description_is_cut_and_bad_front_matter_is_ignored():
    readme = "---\n: [unclosed\n---\n" + "word " * 100
    meta = detect_metadata(None, readme, [], {})
    assert meta.license is None
    assert len(meta.short_description) == 200 and meta.short_description.endswith("...")


def test_no_config_no_card_no_weights_is_fine():
    meta = detect_metadata(None, None, ["notes.txt"], {})
    assert (meta.architecture, meta.task, meta.format, meta.model_type, meta.short_description) == (
        None,
    ) * 5
    facts = serving_facts(None, {})
    assert facts.parameters is None and facts.weight_bytes is None and facts.bytes_by_dtype == {}


# --------------------------------------------------------------------------- serving facts


def test_parameters_and_bytes_by_dtype_are_exact_across_files_and_dtypes():
    a = safetensors_bytes(
        {"x": ("BF16", np.zeros((3, 5), np.uint16)), "n": ("F32", np.zeros(7, np.float32))}
    )
    b = safetensors_bytes({"y": ("F16", np.zeros((2, 2, 2), np.float16))})
    headers = {p: parse_safetensors_header(reader(d), p) for p, d in (("a", a), ("b", b))}
    facts = serving_facts({"num_hidden_layers": 1}, headers)
    assert facts.parameters == 15 + 7 + 8
    assert facts.bytes_by_dtype == {"bfloat16": 30, "float32": 28, "float16": 16}
    assert facts.weight_bytes == 74
    assert facts.dtype == "bfloat16"  # the dtype holding the most bytes


def test_nested_text_config_quantization_and_experts():
    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "text_config": {
            "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
            "vocab_size": 1000, "num_experts": 16, "tie_word_embeddings": True,
        },
        "quantization_config": {"quant_method": "fp8"},
    }  # fmt: skip
    facts = serving_facts(config, {})
    assert (facts.layers, facts.hidden, facts.heads, facts.kv_heads, facts.head_dim) == (
        4,
        64,
        8,
        8,
        8,
    )
    assert (facts.vocab, facts.experts, facts.quantization, facts.tied_embeddings) == (
        1000,
        16,
        "fp8",
        True,
    )


# --------------------------------------------------------------------------- through the pipeline


CASES = [
    "llama_gqa",
    "llama_tied_mqa",
    "llama_odd_vocab_fp16",
    "mistral_subfolders_fp32",
    "qwen2_bias",
    "qwen3_qk_norm",
]


@pytest.fixture(scope="module")
def case_repos(module_hub, tiny_model):
    models = {}
    for case in CASES:
        models[case] = tiny_model(case)
        module_hub.add_repo(f"tiny/{case.replace('_', '-')}", models[case].files)
    return models


@pytest.fixture
def env(preheat_env, module_hub, case_repos):
    return preheat_env.connect(module_hub)


@pytest.mark.parametrize("case", CASES)
def test_manifest_serving_facts_are_exact(env, case_repos, case, module_hub):
    from preheat import serde

    model = case_repos[case]
    module_hub.reset_stats()
    record = env.prefetch(
        f"tiny/{case.replace('_', '-')}", include=["*.safetensors", "*.json", "README.md"]
    )
    assert record.status == "succeeded", record.error
    manifest = env.catalog().resolve(str(record.artifact))
    facts = serde.to_dict(manifest.serving)
    for key, value in expected_facts(model).items():
        assert facts[key] == value, key
    assert manifest.metadata.architecture == model.config["architectures"][0]
    assert manifest.metadata.model_type == model.config["model_type"]


def test_metadata_options_override_detection_end_to_end(env):
    result = env.cli_in_process(
        "prefetch", "hf-model", "tiny/llama-gqa", "--wait", "--json",
        "--architecture", "MyArch", "--task", "summarization", "--modality", "text", "--modality", "image",
        "--format", "custom", "--model-type", "my-type", "--short-description", "A model of mine.",
    ).ok()  # fmt: skip
    manifest = env.catalog().resolve(result.json["artifact"]["name"])
    meta = manifest.metadata
    assert (meta.architecture, meta.task, meta.modality, meta.format, meta.model_type, meta.short_description) == (
        "MyArch", "summarization", ("text", "image"), "custom", "my-type", "A model of mine.",
    )  # fmt: skip
    assert manifest.serving.heads == 8 and manifest.serving.head_dim == 64


def test_the_python_api_passes_metadata_through(env):
    import preheat

    run = preheat.prefetch.hf_model(
        "tiny/qwen2-bias",
        artifact_name="qwen-meta",
        task="feature-extraction",
        modality="text",
        short_description="Short.",
    )
    assert run.wait(timeout=60).status == "succeeded"
    meta = env.catalog().resolve("qwen-meta").metadata
    assert (meta.task, meta.modality, meta.short_description, meta.architecture) == (
        "feature-extraction", ("text",), "Short.", "Qwen2ForCausalLM",
    )  # fmt: skip


def test_an_invalid_config_json_fails_before_any_weight_download(env, module_hub, tiny_model):
    files = dict(tiny_model("llama_multipart").files, **{"config.json": b"{not json"})
    module_hub.add_repo("tiny/bad-config", files)
    module_hub.reset_stats()
    record = env.prefetch("tiny/bad-config")
    assert record.status == "failed"
    assert record.error == "config.json of tiny/bad-config is not valid JSON"
    weights = [
        r
        for r in module_hub.find_requests("*.safetensors", origin="cdn")
        if r.repo_id == "tiny/bad-config"
    ]
    assert weights and all(r.range == "bytes=0-65535" for r in weights), "only header reads"


def test_a_corrupt_safetensors_header_fails_before_any_weight_download(env, module_hub):
    module_hub.add_repo(
        "tiny/bad-header",
        {
            "config.json": json.dumps({"architectures": ["X"]}),
            "model.safetensors": b"\x10\0\0\0\0\0\0\0{{{{{{{{{{{{{{{{" + bytes(100),
        },
    )
    record = env.prefetch("tiny/bad-header")
    assert record.status == "failed"
    assert record.error == "model.safetensors has a corrupt safetensors header"
    assert env.catalog().artifacts() == []
