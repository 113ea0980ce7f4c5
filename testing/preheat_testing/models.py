"""Tiny Hugging Face causal LMs made with numpy, and a numpy reference forward pass.

Models are generated without torch: config.json, generation_config.json, a
byte-level BPE tokenizer, a model card and safetensors weights with the exact
parameter names of the Llama, Mistral, Qwen2 and Qwen3 families.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# torch dtype name -> safetensors dtype name
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}

UNK, BOS, EOS = 0, 1, 2
_SPECIALS = ("<unk>", "<s>", "</s>")
# plain words given their own tokens, so short prompts tokenize readably
_WORDS = (
    "the a an is of and to in on it that was for with as by at from hello world "
    "user assistant system yes no one two three four five"
)

TRANSFORMERS_VERSION = "4.57.1"


# --------------------------------------------------------------------- dtypes


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
    quiet_nan = (u >> 16) | 0x0040
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the array whose bytes are stored for `dtype` (BF16 as uint16 bits)."""
    st = _st_dtype(dtype)
    if st == "BF16":
        return bf16_bits(x)
    return np.ascontiguousarray(x, dtype=np.float16 if st == "F16" else np.float32)


def decode(raw: bytes | memoryview | np.ndarray, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Stored bytes of a tensor -> float32 array."""
    st = _st_dtype(dtype)
    np_dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[st]
    arr = np.frombuffer(raw, dtype=np_dtype).reshape(tuple(shape))
    if st == "BF16":
        return bf16_to_float32(arr)
    return arr.astype(np.float32)


def _st_dtype(dtype: str) -> str:
    if dtype in _ITEMSIZE:
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")


# ---------------------------------------------------------------- safetensors


def safetensors_header(entries: Iterable[tuple[str, str, Sequence[int]]]) -> tuple[bytes, int]:
    """Header bytes (length prefix included) for (name, dtype, shape) entries in file order.

    Returns the header and the byte size of the data section that follows it.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        st = _st_dtype(dtype)
        nbytes = math.prod(shape) * _ITEMSIZE[st]
        header[name] = {
            "dtype": st,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def safetensors_bytes(tensors: Mapping[str, tuple[str, np.ndarray]]) -> bytes:
    """Serialize {name: (dtype, stored array)} in name order, like the safetensors library."""
    names = sorted(tensors)
    header, _ = safetensors_header((n, tensors[n][0], tensors[n][1].shape) for n in names)
    return header + b"".join(np.ascontiguousarray(tensors[n][1]).tobytes() for n in names)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies in a safetensors file; `start`/`end` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def parse_safetensors_header(data: bytes | memoryview) -> dict[str, TensorInfo]:
    """Tensor table of a safetensors file, given at least its first bytes up to the data."""
    n = int.from_bytes(bytes(data[:8]), "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    base = 8 + n
    return {
        name: TensorInfo(
            v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1]
        )
        for name, v in header.items()
        if name != "__metadata__"
    }


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor table of a safetensors file on disk, reading only its header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return parse_safetensors_header(n.to_bytes(8, "little") + f.read(n))


def load_safetensors(
    source: str | os.PathLike | bytes, *, as_float32: bool = True
) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file (a path or its bytes).

    With `as_float32` every tensor is decoded to float32 (bf16 and fp16 exactly);
    otherwise arrays keep their stored type, bf16 as uint16 bit patterns.
    """
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    out = {}
    for name, info in parse_safetensors_header(data).items():
        raw = memoryview(data)[info.start : info.end]
        if as_float32:
            out[name] = decode(raw, info.dtype, info.shape)
        else:
            np_dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info.dtype]
            out[name] = np.frombuffer(raw, dtype=np_dtype).reshape(info.shape).copy()
    return out


def load_safetensors_dir(
    directory: str | os.PathLike, pattern: str = "*.safetensors", *, as_float32: bool = True
) -> dict[str, np.ndarray]:
    """Tensors of every file matching `pattern` directly in `directory`, merged by name."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(Path(directory).glob(pattern)):
        for name, arr in load_safetensors(path, as_float32=as_float32).items():
            if name in out:
                raise ValueError(f"tensor {name} appears in more than one file of {directory}")
            out[name] = arr
    return out


# ------------------------------------------------------------------ tokenizer


def _byte_alphabet() -> list[str]:
    """The 256 byte-level characters (GPT-2 mapping), most useful first."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    char = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in char:
            char[b] = chr(256 + extra)
            extra += 1
    order = [ord(" "), *range(ord("a"), ord("z") + 1), *range(ord("0"), ord("9") + 1)]
    order += [b for b in range(256) if b not in order]
    return [char[b] for b in order]


def _bpe_vocab(n: int) -> tuple[list[str], list[str]]:
    """`n` byte-level BPE tokens (specials first) and the merges that build them."""
    tokens = dict.fromkeys([*_SPECIALS, *_byte_alphabet()[: max(0, n - len(_SPECIALS))]])
    merges: list[str] = []

    def add(left: str, right: str) -> None:
        if len(tokens) < n and left in tokens and right in tokens and left + right not in tokens:
            tokens[left + right] = None
            merges.append(f"{left} {right}")

    for word in _WORDS.split():
        piece = "\u0120"
        for ch in word:
            add(piece, ch)
            piece += ch
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    for syl in syllables:
        add(syl[0], syl[1])
    prefixes = ["\u0120"]
    while len(tokens) < n and prefixes:
        grown = []
        for prefix in prefixes:
            for syl in syllables:
                add(prefix, syl)
                grown.append(prefix + syl)
        prefixes = grown
    return list(tokens), merges


def tokenizer_files(vocab: int, model_max_length: int) -> dict[str, bytes]:
    """A byte-level BPE tokenizer with exactly `vocab` tokens, loadable by `tokenizers`/transformers.

    Below 259 tokens not every byte has a token and unknown characters are dropped.
    """
    if vocab < len(_SPECIALS) + 1:
        raise ValueError("vocab must hold the special tokens and at least one byte")
    tokens, merges = _bpe_vocab(vocab)
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(_SPECIALS)
    ]
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added
        },
        "chat_template": (
            "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}"
        ),
    }
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    return {
        "tokenizer.json": _json(tokenizer, indent=None),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(special),
    }


# --------------------------------------------------------------------- config


def make_config(
    kind: str,
    *,
    dtype: str = "bfloat16",
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    intermediate: int = 512,
    layers: int = 2,
    vocab: int = 512,
    tied: bool = False,
    attention_bias: bool = False,
    max_position_embeddings: int = 512,
    rms_norm_eps: float = 1e-6,
    rope_theta: float = 10000.0,
) -> dict:
    """config.json of a model family with the field names transformers writes."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {sorted(KINDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")
    kv_heads = heads if kv_heads is None else kv_heads
    head_dim = hidden // heads if head_dim is None else head_dim
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
    if head_dim % 2:
        raise ValueError("head_dim must be even for rotary embeddings")
    if kind == "qwen2" and head_dim * heads != hidden:
        raise ValueError("qwen2 has no head_dim field: hidden must equal heads * head_dim")
    if kind in ("mistral", "qwen2") and attention_bias:
        raise ValueError(f"{kind} has no attention_bias option")
    cfg: dict = {
        "architectures": [KINDS[kind]],
        "model_type": kind,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
    }
    if kind != "qwen2":
        cfg["head_dim"] = head_dim
    if kind == "llama":
        cfg.update(attention_bias=attention_bias, mlp_bias=False, pretraining_tp=1)
    elif kind == "mistral":
        cfg.update(sliding_window=None)
    elif kind == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=layers)
    else:
        cfg.update(
            attention_bias=attention_bias,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=layers,
        )
    cfg.update(torch_dtype=dtype, dtype=dtype, transformers_version=TRANSFORMERS_VERSION)
    return cfg


# -------------------------------------------------------------------- weights


def parameter_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of a config, in module order (tied lm_head omitted)."""
    h = config["hidden_size"]
    nq = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nq
    d = config.get("head_dim") or h // nq
    inter = config["intermediate_size"]
    kind = config["model_type"]
    qkv_bias = kind == "qwen2" or bool(config.get("attention_bias"))
    o_bias = kind != "qwen2" and bool(config.get("attention_bias"))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, rows in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (rows, h)
            if qkv_bias:
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (rows,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, nq * d)
        if o_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        if kind == "qwen3":
            shapes[f"{p}self_attn.q_norm.weight"] = (d,)
            shapes[f"{p}self_attn.k_norm.weight"] = (d,)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, inter)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return 0.1 * rng.standard_normal(shape, dtype=np.float32)
    # embeddings and lm_head: unit-ish logits after the final norm; linears: fan-in scaled
    std = (
        4.0 / math.sqrt(shape[1])
        if "embed" in name or "lm_head" in name
        else 1.0 / math.sqrt(shape[1])
    )
    return std * rng.standard_normal(shape, dtype=np.float32)


@dataclass
class TinyModel:
    """A generated model: its config, weights (float32 copies of the stored values) and files."""

    config: dict
    weights: dict[str, np.ndarray]
    files: dict[str, bytes] = field(repr=False)

    def write(self, directory: str | os.PathLike) -> Path:
        """Write every file under `directory` (created if missing) and return it."""
        return write_files(directory, self.files)


def write_files(directory: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write {repo path: bytes} under `directory`."""
    root = Path(directory)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def build_model(
    kind: str,
    *,
    parts: int = 1,
    subfolders: bool = False,
    seed: int = 0,
    **options,
) -> TinyModel:
    """Generate a tiny model of `kind` (llama, mistral, qwen2, qwen3).

    `options` are those of `make_config` (dtype, hidden, heads, kv_heads,
    head_dim, intermediate, layers, vocab, tied, attention_bias, ...).
    `parts` > 1 splits the weights into several files with an index;
    `subfolders` adds `original/params.json` and `extra/notes.txt`.
    """
    config = make_config(kind, **options)
    st_dtype = DTYPES[config["torch_dtype"]]
    rng = np.random.default_rng(seed)
    stored: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(config).items():
        stored[name] = encode(_init(rng, name, shape), st_dtype)
        weights[name] = decode(stored[name].tobytes(), st_dtype, shape)

    files = {
        "config.json": _json(config),
        "generation_config.json": _json(
            {
                "bos_token_id": BOS,
                "eos_token_id": EOS,
                "do_sample": False,
                "transformers_version": TRANSFORMERS_VERSION,
            }
        ),
        "README.md": _model_card(kind, config).encode(),
        **tokenizer_files(config["vocab_size"], config["max_position_embeddings"]),
        **_weight_files({n: (st_dtype, a) for n, a in stored.items()}, parts),
    }
    if subfolders:
        files["original/params.json"] = _json(
            {
                "dim": config["hidden_size"],
                "n_layers": config["num_hidden_layers"],
                "n_heads": config["num_attention_heads"],
                "n_kv_heads": config["num_key_value_heads"],
                "vocab_size": config["vocab_size"],
                "norm_eps": config["rms_norm_eps"],
                "rope_theta": config["rope_theta"],
            }
        )
        files["extra/notes.txt"] = b"Generated test model; weights are random.\n"
    return TinyModel(config, weights, files)


def make_model(kind: str, **options) -> dict[str, bytes]:
    """Files of a tiny model (repo path -> bytes); options as in `build_model`."""
    return build_model(kind, **options).files


def write_model(directory: str | os.PathLike, kind: str, **options) -> TinyModel:
    """Generate a tiny model and write its files under `directory`."""
    model = build_model(kind, **options)
    model.write(directory)
    return model


def _split(sizes: Sequence[int], parts: int) -> list[int]:
    """Contiguous, non-empty groups of roughly equal byte size: start index of each group."""
    if not 1 <= parts <= len(sizes):
        raise ValueError(f"parts must be between 1 and {len(sizes)}")
    total = sum(sizes)
    starts, running = [0], 0
    for i, size in enumerate(sizes[:-1]):
        running += size
        left = parts - len(starts)
        if left and (running >= total * len(starts) / parts or len(sizes) - 1 - i <= left):
            starts.append(i + 1)
    return starts


def _weight_files(tensors: Mapping[str, tuple[str, np.ndarray]], parts: int) -> dict[str, bytes]:
    names = list(tensors)
    if parts == 1:
        return {"model.safetensors": safetensors_bytes(tensors)}
    starts = _split([tensors[n][1].nbytes for n in names], parts) + [len(names)]
    files: dict[str, bytes] = {}
    weight_map = {}
    for k in range(parts):
        fname = f"model-{k + 1:05d}-of-{parts:05d}.safetensors"
        group = {n: tensors[n] for n in names[starts[k] : starts[k + 1]]}
        files[fname] = safetensors_bytes(group)
        weight_map.update(dict.fromkeys(group, fname))
    total = sum(a.nbytes for _, a in tensors.values())
    files["model.safetensors.index.json"] = _json(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    )
    return files


def _model_card(kind: str, config: Mapping) -> str:
    return (
        "---\n"
        "license: apache-2.0\n"
        "library_name: transformers\n"
        "pipeline_tag: text-generation\n"
        "tags:\n"
        f"- {kind}\n"
        "- tiny\n"
        "- test-model\n"
        "---\n\n"
        f"# Tiny {config['architectures'][0]}\n\n"
        f"A randomly initialised {kind} model with {config['num_hidden_layers']} layers and "
        f"hidden size {config['hidden_size']}, for tests. Its outputs mean nothing.\n"
    )


def _json(obj: object, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent) + "\n").encode()


# ---------------------------------------------------------------------- cases

# Named models covering the tensor-parallel layouts; each is valid at tp 1, 2 and 4.
CASES: dict[str, dict] = {
    # GQA with head_dim given explicitly (heads * head_dim != hidden)
    "llama_gqa": dict(kind="llama", hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=512, vocab=512),
    # kv heads replicated at tp 4
    "mistral_kv2": dict(kind="mistral", hidden=256, heads=4, kv_heads=2, intermediate=640, vocab=384),
    "qwen2_bias": dict(kind="qwen2", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=448),
    "qwen3_qk_norm": dict(kind="qwen3", hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=384, vocab=512),
    # tied embeddings with a single kv head (MQA)
    "llama_tied_mqa": dict(kind="llama", hidden=256, heads=4, kv_heads=1, intermediate=512, vocab=320, tied=True),
    # vocab 130 pads to 192: at tp 4 the last rank holds only padding rows
    "qwen2_small_vocab_tied": dict(kind="qwen2", hidden=256, heads=4, kv_heads=2, intermediate=256, vocab=130, tied=True),
    "llama_odd_vocab_fp16": dict(kind="llama", dtype="float16", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=1000),
    "llama_attention_bias": dict(kind="llama", hidden=256, heads=4, kv_heads=4, intermediate=512, vocab=256, attention_bias=True),
    "qwen3_tied_kv2": dict(kind="qwen3", hidden=128, heads=4, kv_heads=2, head_dim=64, intermediate=256, vocab=300, tied=True, layers=3),
    "llama_multipart": dict(kind="llama", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=512, parts=3),
    "mistral_subfolders_fp32": dict(kind="mistral", dtype="float32", hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=576, parts=2, subfolders=True),
}  # fmt: skip


def build_case(name: str, **overrides) -> TinyModel:
    """The named model of `CASES`, with optional option overrides."""
    opts = {**CASES[name], **overrides}
    return build_model(opts.pop("kind"), **opts)


def write_case(directory: str | os.PathLike, name: str, **overrides) -> TinyModel:
    """Write the named model of `CASES` under `directory`."""
    model = build_case(name, **overrides)
    model.write(directory)
    return model


# ---------------------------------------------------------------- big models


def make_big_model(
    directory: str | os.PathLike, total_bytes: int, n_files: int, *, seed: int = 0
) -> dict:
    """Write a Llama-shaped bf16 checkpoint of about `total_bytes` over `n_files` files.

    Values are finite but meaningless (a random pool written at varying
    offsets), the largest tensor (each embedding) is about total_bytes/16, and
    data is streamed to disk without holding the model in memory. Returns the
    config.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    hidden = 128
    while 26 * (2 * hidden) ** 2 * 4 <= 0.875 * total_bytes:
        hidden *= 2
    head_dim = 128 if hidden >= 1024 else 64
    heads = hidden // head_dim
    kv_heads = max(1, heads // 4)
    intermediate = hidden * 7 // 2
    vocab = max(64, round(total_bytes / 32 / hidden / 64) * 64)
    per_layer = 2 * (
        2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    )
    layers = max(1, round((total_bytes - 4 * vocab * hidden) / per_layer))
    config = make_config(
        "llama",
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        layers=layers,
        vocab=vocab,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )
    shapes = list(parameter_shapes(config).items())
    sizes = [math.prod(s) * 2 for _, s in shapes]
    starts = _split(sizes, n_files) + [len(shapes)]

    rng = np.random.default_rng(seed)
    pool_bits = rng.integers(0, 1 << 16, size=16 << 20, dtype=np.uint16)
    # keep sign and mantissa, force exponents of 2^-7: finite values of magnitude ~0.01
    pool = memoryview(((pool_bits & 0x807F) | 0x3C00).astype(np.uint16).tobytes())
    chunk = len(pool) // 2

    weight_map = {}
    for k in range(n_files):
        group = shapes[starts[k] : starts[k + 1]]
        fname = (
            "model.safetensors"
            if n_files == 1
            else f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        )
        header, _ = safetensors_header((n, "BF16", s) for n, s in group)
        with open(root / fname, "wb") as f:
            f.write(header)
            for _, shape in group:
                left = math.prod(shape) * 2
                while left:
                    off = int(rng.integers(0, chunk // 2)) * 2
                    n = min(left, chunk)
                    f.write(pool[off : off + n])
                    left -= n
        weight_map.update({n: fname for n, _ in group})
    if n_files > 1:
        (root / "model.safetensors.index.json").write_bytes(
            _json({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map})
        )
    (root / "config.json").write_bytes(_json(config))
    (root / "generation_config.json").write_bytes(
        _json(
            {"bos_token_id": BOS, "eos_token_id": EOS, "transformers_version": TRANSFORMERS_VERSION}
        )
    )
    write_files(root, tokenizer_files(vocab, config["max_position_embeddings"]))
    return config


# -------------------------------------------------------------------- forward


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotary(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    freqs = positions[:, None].astype(np.float32) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def forward(
    config: Mapping, weights: Mapping[str, np.ndarray], token_ids: Sequence[int]
) -> np.ndarray:
    """Logits [len(token_ids), vocab] of the unsharded HF model, in float32."""
    if config.get("rope_scaling"):
        raise NotImplementedError("rope_scaling is not supported by the reference forward")
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    h = config["hidden_size"]
    nq = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nq
    d = config.get("head_dim") or h // nq
    eps = config["rms_norm_eps"]
    ids = np.asarray(token_ids, dtype=np.int64)
    t = len(ids)
    cos, sin = _rotary(np.arange(t), d, config.get("rope_theta", 10000.0))
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)

    x = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name: str, inp: np.ndarray, p: str = p) -> np.ndarray:
            out = inp @ w[p + name + ".weight"].T
            bias = w.get(p + name + ".bias")
            return out if bias is None else out + bias

        a = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", a).reshape(t, nq, d)
        k = lin("self_attn.k_proj", a).reshape(t, nkv, d)
        v = lin("self_attn.v_proj", a).reshape(t, nkv, d)
        if p + "self_attn.q_norm.weight" in w:
            q = _rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = nq // nkv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(t, nq * d)
        x = x + lin("self_attn.o_proj", attn)

        m = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = lin("mlp.gate_proj", m)
        up = lin("mlp.up_proj", m)
        x = x + lin("mlp.down_proj", _silu(gate) * up)

    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None or config.get("tie_word_embeddings"):
        head = w["model.embed_tokens.weight"]
    return (x @ head.T).astype(np.float32)


def greedy(
    config: Mapping, weights: Mapping[str, np.ndarray], prompt: Sequence[int], n: int
) -> list[int]:
    """The `n` tokens greedy decoding appends to `prompt` (no stopping at EOS)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(forward(config, weights, ids)[-1])))
    return ids[len(prompt) :]
