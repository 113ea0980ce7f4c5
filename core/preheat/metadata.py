"""Model facts from config.json, README front matter and safetensors headers (no weight bytes needed)."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from preheat.errors import PreheatError
from preheat.models import Metadata, ServingFacts

DTYPE_NAMES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
}  # fmt: skip
DTYPE_SIZES = {
    "BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
    "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1,
}  # fmt: skip

HEADER_PROBE = 64 << 10
MAX_HEADER = 100 << 20


@attrs.frozen
class TensorInfo:
    """One tensor in a safetensors file: dtype, shape and absolute byte range in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@attrs.frozen
class SafetensorsHeader:
    """A parsed safetensors header; tensor offsets are absolute in the file."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def parse_safetensors_header(
    read: Callable[[int, int], bytes], path: str = "file"
) -> SafetensorsHeader:
    """Parse a safetensors header with `read(start, length)`, in one read when it is small."""
    head = read(0, HEADER_PROBE)
    if len(head) < 8:
        raise PreheatError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER:
        raise PreheatError(f"{path} is not a safetensors file (header of {n} bytes)")
    raw = head[8 : 8 + n] if len(head) >= 8 + n else head[8:] + read(len(head), 8 + n - len(head))
    try:
        header = json.loads(raw)
        meta = header.pop("__metadata__", None) or {}
        tensors = {
            name: TensorInfo(
                name,
                t["dtype"],
                tuple(t["shape"]),
                8 + n + t["data_offsets"][0],
                8 + n + t["data_offsets"][1],
            )
            for name, t in header.items()
        }
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise PreheatError(f"{path} has a corrupt safetensors header") from None
    return SafetensorsHeader(tensors=tensors, metadata=meta, data_start=8 + n)


def front_matter(readme: str) -> tuple[dict[str, Any], str]:
    """The YAML front matter of a model card and the text after it."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", readme, re.S)
    if not m:
        return {}, readme
    import yaml

    try:
        data = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        data = {}
    return (data if isinstance(data, dict) else {}), readme[m.end() :]


def _description(body: str) -> str | None:
    for para in re.split(r"\n\s*\n", body):
        text = para.strip()
        if not text or text.startswith(("#", "<", "!", "|", "```", "---")):
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(text.split()))
        return text if len(text) <= 200 else text[:197].rstrip() + "..."
    return None


_TASKS = [
    ("ForCausalLM", "text-generation"),
    ("ForConditionalGeneration", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("Model", "feature-extraction"),
]


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language-model part of a config (multimodal configs nest it)."""
    inner = config.get("text_config") or config.get("language_config")
    return inner if isinstance(inner, Mapping) else config


def detect_metadata(
    config: Mapping[str, Any] | None,
    readme: str | None,
    paths: list[str],
    given: Mapping[str, Any],
) -> Metadata:
    """Metadata from what the user gave, else config.json, the README front matter and the file names."""
    config = config or {}
    card, body = front_matter(readme or "")
    archs = config.get("architectures") or []
    architecture = archs[0] if archs else None
    task = card.get("pipeline_tag")
    if not task and architecture:
        task = next((t for suffix, t in _TASKS if architecture.endswith(suffix)), None)
    modality = ["text"]
    if any(k in config for k in ("vision_config", "image_token_index", "image_token_id")):
        modality.append("image")
    if any(k in config for k in ("audio_config", "audio_token_index")):
        modality.append("audio")
    if any(p.endswith(".safetensors") for p in paths):
        fmt = "safetensors"
    elif any(p.endswith(".gguf") for p in paths):
        fmt = "gguf"
    elif any(p.endswith((".bin", ".pt", ".pth")) for p in paths):
        fmt = "pytorch"
    else:
        fmt = None
    license_ = card.get("license")
    detected = {
        "architecture": architecture,
        "task": task,
        "modality": tuple(modality),
        "format": fmt,
        "model_type": config.get("model_type"),
        "short_description": _description(body),
        "license": str(license_) if license_ is not None else None,
    }
    for key, value in given.items():
        if value is not None and key in detected:
            detected[key] = tuple(value) if key == "modality" else value
    return Metadata(**detected)


def serving_facts(
    config: Mapping[str, Any] | None, headers: Mapping[str, SafetensorsHeader]
) -> ServingFacts:
    """Exact parameter count and bytes by dtype from the headers; shape facts from the config."""
    cfg = text_config(config or {})
    seen: set[str] = set()
    params = 0
    by_dtype: dict[str, int] = {}
    for header in headers.values():
        for t in header.tensors.values():
            if t.name in seen:
                continue
            seen.add(t.name)
            params += math.prod(t.shape)
            name = DTYPE_NAMES.get(t.dtype, t.dtype.lower())
            by_dtype[name] = by_dtype.get(name, 0) + t.nbytes
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    quant = (config or {}).get("quantization_config") or cfg.get("quantization_config")
    experts = next(
        (
            cfg[k]
            for k in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
            if cfg.get(k)
        ),
        None,
    )
    dtype = (
        max(by_dtype, key=by_dtype.get)
        if by_dtype
        else (cfg.get("torch_dtype") or cfg.get("dtype"))
    )
    return ServingFacts(
        parameters=params if headers else None,
        bytes_by_dtype=by_dtype,
        weight_bytes=sum(by_dtype.values()) if headers else None,
        dtype=dtype,
        layers=cfg.get("num_hidden_layers"),
        hidden=hidden,
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate=cfg.get("intermediate_size"),
        vocab=cfg.get("vocab_size"),
        max_positions=cfg.get("max_position_embeddings"),
        tied_embeddings=bool(
            cfg.get("tie_word_embeddings", (config or {}).get("tie_word_embeddings", False))
        ),
        quantization=(quant.get("quant_method") or "unknown")
        if isinstance(quant, Mapping)
        else None,
        experts=experts,
    )
