"""Engine-neutral helpers of the sharded-state tests: a hub + store world, a shard runner, and a
reference of every rank tensor built independently of preheat with plain numpy.

What differs between engines is data (`EngineFacts`): the shard-args key naming the
tensor-parallel size, the persistent per-layer buffers the engine's state dict holds,
and the vocabulary padding rule. Everything else (fused q;k;v and gate;up, kv-head
replication, row and column slices, zero padding rows, the tied name kept) is the same
for vLLM and SGLang on the Llama, Mistral, Qwen2 and Qwen3 families
(`/FORMATS.md`, "Tensor-parallel slicing"; `plugins/sglang/STATE_DICT.md`).

Pipelines run in-process (`World.prefetch`, the same `create_run` + `execute` that
`preheat prefetch --wait` uses) unless a test is about the process boundary, which goes
through `World.cli` (a real `preheat` subprocess). Nothing here imports an engine plugin:
the reference must not share code with what it checks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preheat.resolve import location
from preheat_testing import models
from preheat_testing.cli import CliResult, run_cli

HEADER_PROBE = 64 << 10
DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
RAW = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
_BOUNDED_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")

# Models for tensor-parallel sizes that do not divide 64 (heads, kv heads and intermediate
# divisible by 3), beside `models.CASES` (which are valid at tp 1, 2 and 4).
ODD_TP_CASES: dict[str, dict] = {
    # vocab 1000 pads to 1024 (not divisible by 3 or 6): SGLang widens the padding to 1152
    "llama_tp3_vocab1000": dict(kind="llama", hidden=256, heads=6, kv_heads=3, head_dim=64, intermediate=384, vocab=1000),
    # one kv head replicated on every rank; vocab 300 pads to 320, widened to 384 at tp 3
    "qwen3_tp3_mqa_tied": dict(kind="qwen3", hidden=128, heads=6, kv_heads=1, head_dim=32, intermediate=192, vocab=300, tied=True),
    # vocab 130 pads to 192, which tp 3 divides: no widening
    "qwen2_tp3_vocab130": dict(kind="qwen2", hidden=192, heads=3, kv_heads=3, intermediate=192, vocab=130),
}  # fmt: skip
ALL_CASES: dict[str, dict] = {**models.CASES, **ODD_TP_CASES}


# --------------------------------------------------------------------------- per-engine facts


@dataclass(frozen=True)
class EngineFacts:
    """What an engine's `sharded_state` files and shard arguments differ in."""

    name: str
    #: the shard-args key naming the tensor-parallel size
    tp_key: str
    #: persistent buffers of every decoder layer: (name under `model.layers.{i}.`, dtype, shape, value)
    layer_buffers: tuple[tuple[str, str, tuple[int, ...], float], ...] = ()
    vocab_multiple: int = 64
    #: pad to vocab_multiple * tp when the padded vocab is not divisible by tp (SGLang)
    widen_vocab_for_tp: bool = False

    @property
    def python_env(self) -> str:
        """The variable naming the interpreter that has the engine (`method: engine`)."""
        return f"PREHEAT_{self.name.upper()}_PYTHON"

    def padded_vocab(self, vocab: int, tp: int) -> int:
        multiple = self.vocab_multiple
        if self.widen_vocab_for_tp and -(-vocab // multiple) * multiple % tp:
            multiple *= tp
        return -(-vocab // multiple) * multiple

    def args(self, tp: int, **extra) -> dict:
        return {self.tp_key: tp, **extra}

    def config(self, tp: int, **extra) -> dict:
        """A shard config (`{"engine": ..., "args": ...}`) as a Python dict."""
        return {"engine": self.name, "args": self.args(tp, **extra)}

    def yaml(self, tp: int | None = None, **extra) -> str:
        """The same as a shard-config YAML file (values written as JSON scalars)."""
        fields = {**({self.tp_key: tp} if tp is not None else {}), **extra}
        lines = [f"engine: {self.name}", "args:" if fields else "args: {}"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in fields.items()]
        return "\n".join(lines) + "\n"

    def tp_fits(self, config: Mapping, tp: int) -> bool:
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
        return (
            heads % tp == 0
            and (kv % tp == 0 or tp % kv == 0)
            and config["intermediate_size"] % tp == 0
            and self.padded_vocab(config["vocab_size"], tp) % tp == 0
        )


VLLM = EngineFacts(
    "vllm",
    "tensor_parallel_size",
    layer_buffers=tuple(
        (f"self_attn.attn._{s}_scale", "F32", (), 1.0) for s in ("k", "v", "q", "prob")
    ),
)
SGLANG = EngineFacts("sglang", "tp", widen_vocab_for_tp=True)
ENGINES = {e.name: e for e in (VLLM, SGLANG)}


def prompt(config: Mapping) -> list[int]:
    """Token ids touching the first and the last vocab shard."""
    return [1, 7, 42, 3, 99, 12, 5, 64, 8, 127, config["vocab_size"] - 1, 2]


# --------------------------------------------------------------------------- CLI and hub accounting


@dataclass
class Outcome:
    """A finished in-process run: its record and the hub requests it made for its repo."""

    record: object
    requests: list = field(repr=False)
    store: str | None = None

    @property
    def ok(self) -> bool:
        return self.record.status == "succeeded"


def weight_requests(requests) -> list:
    """Requests (hub and CDN origin) for safetensors files."""
    return [r for r in requests if r.file and r.file.endswith(".safetensors")]


def weight_bytes(requests) -> int:
    """Content bytes served for safetensors files (redirect bodies not counted)."""
    return sum(r.body_bytes for r in weight_requests(requests) if r.status in (200, 206))


def assert_only_header_reads(requests, n_files: int) -> None:
    """Every safetensors GET was a bounded Range read of at most the header probe size."""
    for r in weight_requests(requests):
        if r.method != "GET":
            continue
        m = _BOUNDED_RANGE.match(r.range or "")
        assert m, (
            f"a weight body was requested without a bounded Range: {r.method} {r.path} {r.range!r}"
        )
        assert int(m[2]) - int(m[1]) + 1 <= HEADER_PROBE, f"range read too large: {r.range}"
    assert weight_bytes(requests) <= n_files * HEADER_PROBE


def n_weight_files(files: Iterable[str]) -> int:
    return sum(1 for p in files if p.endswith(".safetensors"))


# --------------------------------------------------------------------------- the world


class World:
    """A loopback hub, a PREHEAT_HOME and a HF_HOME shared by a test session (or a script).

    With `hide_engines`, `method: engine` sees no engine even where one is installed
    (`PREHEAT_<ENGINE>_PYTHON` points at an interpreter that cannot import anything).
    """

    def __init__(
        self,
        root: Path,
        hub,
        *,
        cases: Mapping[str, dict] | None = None,
        hide_engines: Iterable[str] = ("vllm", "sglang"),
    ) -> None:
        self.root = Path(root)
        self.hub = hub
        self.cases = dict(ALL_CASES if cases is None else cases)
        self.home = self.root / "preheat-home"
        self.cwd = self.root / "cwd"
        for d in (self.home, self.cwd, self.root / "hf-home"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREHEAT_") and k not in _CLEARED
        }
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(self.root / "hf-home"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_RETRY_BACKOFF="0.01",
        )
        for engine in hide_engines:
            python = sys.executable
            if importlib.util.find_spec(engine) is not None:
                python = str(self.root / f"no-{engine}-python")
                Path(python).write_text("#!/bin/sh\nexit 1\n")
                os.chmod(python, 0o755)
            self.env[f"PREHEAT_{engine.upper()}_PYTHON"] = python
        self._repos: dict[str, str] = {}
        self._models: dict[tuple, models.TinyModel] = {}

    @property
    def store(self) -> Path:
        return self.home / "store"

    @contextlib.contextmanager
    def applied(self):
        """os.environ as `env` (restored on exit)."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    # models and repos

    def model(self, case: str, **overrides) -> models.TinyModel:
        """The TinyModel of a named case of `cases` (cached; do not mutate)."""
        key = (case, tuple(sorted(overrides.items())))
        if key not in self._models:
            options = {**self.cases[case], **overrides}
            self._models[key] = models.build_model(options.pop("kind"), **options)
        return self._models[key]

    def add_repo(self, repo: str, files) -> str:
        """Put `files` on the hub as `repo` once; returns its commit."""
        if repo not in self._repos:
            self._repos[repo] = self.hub.add_repo(repo, files)
        return self._repos[repo]

    def case_repo(self, case: str, prefix: str = "tiny", **overrides) -> str:
        """The case on the hub as PREFIX/CASE (same overrides, same repo)."""
        repo = f"{prefix}/{case}"
        self.add_repo(repo, self.model(case, **overrides).files)
        return repo

    # running

    def mark(self) -> int:
        return len(self.hub.requests)

    def requests_since(self, mark: int, repo: str | None = None) -> list:
        return [r for r in self.hub.requests[mark:] if repo is None or r.repo_id == repo]

    def prefetch(
        self,
        repo: str,
        shard=None,
        *,
        accelerator: str | None = None,
        store: str | None = None,
        **fields,
    ) -> Outcome:
        """One prefetch run, in this process, as `preheat prefetch hf-model --wait` runs it."""
        from preheat.models import PrefetchRequest, Resources
        from preheat.runner import execute
        from preheat.runs import create_run

        with self.applied():
            request = PrefetchRequest(
                repo=repo, shard=shard, resources=Resources(accelerator=accelerator), **fields
            )
            mark = self.mark()
            run = create_run(request, store)
            record = execute(run.store_url, run.name)
        return Outcome(record, self.requests_since(mark, repo), store)

    def cli(self, *args: str, timeout: float = 120) -> CliResult:
        """`preheat ARGS...` as a subprocess."""
        return run_cli(args, env=self.env, cwd=self.cwd, timeout=timeout)

    def write_yaml(self, name: str, text: str) -> Path:
        path = self.root / "configs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    # the store

    def catalog(self, store: str | None = None):
        from preheat.catalog import Catalog
        from preheat.config import open_store

        return Catalog(open_store(store or str(self.store)))

    def manifest(self, outcome: Outcome):
        assert outcome.ok, f"run failed: {outcome.record.error}"
        return self.catalog(outcome.store).resolve(str(outcome.record.artifact))

    def directory(self, manifest, store: str | None = None) -> Path:
        return Path(location(self.catalog(store), manifest).path)


# --------------------------------------------------------------------------- sharding, once per request


@dataclass
class Sharded:
    engine: EngineFacts
    case: str
    tp: int
    args: dict
    model: models.TinyModel
    manifest: object
    base: object
    directory: Path
    requests: list
    reused: bool

    @property
    def pattern(self) -> str:
        return self.args.get("file_pattern", DEFAULT_PATTERN)


def shard_getter(world: World, engine: EngineFacts, via_cli: Iterable[tuple[str, int]] = ()):
    """`shard(case, tp, repo_prefix="tiny", seed=0, **args)`: the case pre-sharded for `engine`.

    Results are cached per request. Requests in `via_cli` (without extra args) go through
    `preheat prefetch ... --shard-config FILE --wait --json` as a subprocess.
    """
    cache: dict = {}
    via_cli = set(via_cli)

    def get(case: str, tp: int, repo_prefix: str = "tiny", seed: int = 0, **args) -> Sharded:
        key = (case, tp, repo_prefix, seed, tuple(sorted(args.items())))
        if key in cache:
            return cache[key]
        repo = world.case_repo(case, repo_prefix, seed=seed)
        name = f"{repo_prefix}-{case}"
        catalog = world.catalog()
        if (case, tp) in via_cli and not args:
            path = world.write_yaml(f"{engine.name}-{case}-{tp}.yaml", engine.yaml(tp))
            mark = world.mark()
            summary = world.cli(
                "prefetch",
                "hf-model",
                repo,
                "--artifact-name",
                name,
                "--shard-config",
                str(path),
                "--wait",
                "--json",
            ).ok()
            summary = summary.json
            assert summary["status"] == "succeeded"
            requests = world.requests_since(mark, repo)
            manifest = catalog.resolve(
                f"{summary['artifact']['name']}:{summary['artifact']['version']}"
            )
            assert Path(summary["artifact"]["path"]) == Path(location(catalog, manifest).path)
            reused = summary["reused"]
        else:
            outcome = world.prefetch(repo, engine.config(tp, **args), artifact_name=name)
            manifest = world.manifest(outcome)
            requests, reused = outcome.requests, outcome.record.reused
        base = catalog.manifest(manifest.lineage.name, manifest.lineage.version)
        cache[key] = Sharded(
            engine,
            case,
            tp,
            args,
            world.model(case, seed=seed),
            manifest,
            base,
            Path(location(catalog, manifest).path),
            requests,
            reused,
        )
        return cache[key]

    return get


# --------------------------------------------------------------------------- the reference


def source_tensors(model) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (safetensors dtype, stored array; bf16 as uint16 bits) of the original files."""
    out = {}
    for path, data in model.files.items():
        if not path.endswith(".safetensors"):
            continue
        for name, info in models.parse_safetensors_header(data).items():
            raw = np.frombuffer(data[info.start : info.end], dtype=RAW[info.dtype])
            assert name not in out
            out[name] = (info.dtype, raw.reshape(info.shape))
    return out


def convert(dtype: str, raw: np.ndarray, target: str) -> np.ndarray:
    """A stored array in another dtype, rounding to nearest even (bf16 via its bit pattern)."""
    if dtype == target:
        return raw
    values = models.decode(raw.tobytes(), dtype, raw.shape)
    if target == "F32":
        return values
    if target == "F16":
        return values.astype(np.float16)
    return models.bf16_bits(values)


def reference_rank(
    config: Mapping,
    src: Mapping[str, tuple[str, np.ndarray]],
    tp: int,
    r: int,
    dtype: str = "auto",
    engine: EngineFacts = VLLM,
) -> dict[str, tuple[str, np.ndarray]]:
    """What `engine`'s rank r of tp holds: name -> (safetensors dtype, stored array)."""
    h, hq = config["hidden_size"], config["num_attention_heads"]
    hkv = config.get("num_key_value_heads") or hq
    d = config.get("head_dim") or h // hq
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    tied = config.get("tie_word_embeddings", False)
    nq = hq // tp
    if tp >= hkv:  # each kv head replicated tp/hkv times
        nkv, s = 1, r // (tp // hkv)
    else:
        nkv, s = hkv // tp, r
    q = slice(r * nq * d, (r + 1) * nq * d)
    kv = slice(s * nkv * d, (s + 1) * nkv * d)
    mlp = slice(r * inter // tp, (r + 1) * inter // tp)
    padded = engine.padded_vocab(vocab, tp)
    rows = slice(r * padded // tp, (r + 1) * padded // tp)

    def get(name: str) -> tuple[str, np.ndarray]:
        st, raw = src[name]
        target = st if dtype == "auto" else ST_DTYPE[dtype]
        return target, convert(st, raw, target)

    def vocab_shard(name: str) -> tuple[str, np.ndarray]:
        st, raw = get(name)
        full = np.zeros((padded, h), dtype=raw.dtype)
        full[:vocab] = raw
        return st, full[rows]

    out: dict[str, tuple[str, np.ndarray]] = {}
    if tied:
        # of tensors sharing storage the engines keep the lexicographically smallest name
        out["lm_head.weight"] = vocab_shard("model.embed_tokens.weight")
    else:
        out["model.embed_tokens.weight"] = vocab_shard("model.embed_tokens.weight")
        out["lm_head.weight"] = vocab_shard("lm_head.weight")
    out["model.norm.weight"] = get("model.norm.weight")
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        for kind in ("weight", "bias"):
            if a + "q_proj." + kind in src:
                parts = [get(a + f"{x}_proj." + kind) for x in "qkv"]
                st = parts[0][0]
                out[a + "qkv_proj." + kind] = (
                    st,
                    np.concatenate([parts[0][1][q], parts[1][1][kv], parts[2][1][kv]]),
                )
        st, o = get(a + "o_proj.weight")
        out[a + "o_proj.weight"] = (st, o[:, q])
        for name in ("o_proj.bias", "q_norm.weight", "k_norm.weight"):
            if a + name in src:
                out[a + name] = get(a + name)
        (st, gate), (_, up) = get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")
        out[p + "mlp.gate_up_proj.weight"] = (st, np.concatenate([gate[mlp], up[mlp]]))
        st, down = get(p + "mlp.down_proj.weight")
        out[p + "mlp.down_proj.weight"] = (st, down[:, mlp])
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = get(p + name)
        for name, buf_dtype, shape, value in engine.layer_buffers:
            out[p + name] = (buf_dtype, np.full(shape, value, dtype=RAW[buf_dtype]))
    return out


# --------------------------------------------------------------------------- reading rank files


def read_strict(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A safetensors file, validated as the safetensors library does: name -> (dtype, shape, bytes)."""
    path = Path(path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert 8 + n <= len(data), f"{path.name}: header runs past the end"
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n :]
    spans = sorted((tuple(v["data_offsets"]), k) for k, v in header.items())
    pos = 0
    for (start, end), name in spans:
        assert start == pos, f"{path.name}: {name} does not start where the previous tensor ended"
        pos = end
    assert pos == len(body), f"{path.name}: data section has trailing or missing bytes"
    out = {}
    for name, v in header.items():
        start, end = v["data_offsets"]
        assert end - start == math.prod(v["shape"]) * ITEMSIZE[v["dtype"]], name
        out[name] = (v["dtype"], tuple(v["shape"]), bytes(body[start:end]))
    try:
        import safetensors
    except ImportError:
        return out
    parsed = {name: t for name, t in safetensors.deserialize(data)}
    assert set(parsed) == set(out)
    for name, t in parsed.items():
        assert (tuple(t["shape"]), bytes(t["data"])) == out[name][1:], name
    return out


def file_order(path: Path) -> list[str]:
    """Tensor names of a safetensors file in data order."""
    data = Path(path).read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def rank_file_regex(pattern: str, rank: int) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{rank}"), str(rank))
    return re.compile(text.replace(re.escape("{part}"), r"(\d+)"))


def rank_files(directory: Path, pattern: str, rank: int) -> list[Path]:
    """The rank's part files, in part order; parts must be numbered 0..n-1."""
    regex = rank_file_regex(pattern, rank)
    found = {}
    for p in Path(directory).iterdir():
        m = regex.fullmatch(p.name)
        if m:
            found[int(m[1])] = p
    assert sorted(found) == list(range(len(found))) and found, f"rank {rank} parts: {sorted(found)}"
    return [found[k] for k in sorted(found)]


def rank_tensors(directory: Path, pattern: str, rank: int) -> dict:
    """name -> (dtype, shape, bytes) over every part of the rank; no name in two parts."""
    out: dict = {}
    for path in rank_files(directory, pattern, rank):
        for name, t in read_strict(path).items():
            assert name not in out, f"{name} is in two files of rank {rank}"
            out[name] = t
    return out


def rank_float32(directory: Path, pattern: str, rank: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in rank_files(directory, pattern, rank):
        out.update(models.load_safetensors(path, as_float32=True))
    return out


def check_rank_files(s: Sharded, dtype: str = "auto") -> None:
    """Every rank of `s` holds exactly the reference: same names, dtypes, shapes and bytes."""
    src = source_tensors(s.model)
    for r in range(s.tp):
        got = rank_tensors(s.directory, s.pattern, r)
        ref = reference_rank(s.model.config, src, s.tp, r, dtype, s.engine)
        assert sorted(got) == sorted(ref), f"rank {r}: key set differs"
        for name, (st, arr) in ref.items():
            g_dtype, g_shape, g_bytes = got[name]
            assert (g_dtype, g_shape) == (st, arr.shape), f"rank {r} {name}"
            assert g_bytes == np.ascontiguousarray(arr).tobytes(), f"rank {r} {name}: bytes differ"


def copied_files(model) -> dict[str, bytes]:
    """The repo's top-level files that are neither weights nor a weight index."""
    return {
        p: b
        for p, b in model.files.items()
        if "/" not in p and not p.endswith(WEIGHT_SUFFIXES) and p not in INDEXES
    }
