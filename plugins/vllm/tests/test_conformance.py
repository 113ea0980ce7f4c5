"""preheat's vLLM shards against the real vLLM CPU build (`nox -s conformance`).

For each (model case, tp): the tiny model is put on a loopback hub and pre-sharded by
`preheat prefetch ... --wait` (a real CLI run into a temporary store, CPU slicer); its
launch arguments come from `preheat resolve --engine vllm`. Then one vLLM process
(conformance/roundtrip.py, in the vLLM venv) loads

1. the original checkpoint with vLLM's default loader, dumping each rank's state dict
   right after `load_weights` (the oracle), and generates greedy tokens;
2. preheat's artifact with `load_format="sharded_state"`, dumping what the loader
   filled in, and generates greedy tokens again, at the same tp and dtype.

Asserted: every rank's files equal the oracle bit for bit with the same key set, the
loaded tensors equal the files, and the greedy tokens are identical. Both engines use
the dtype `vllm serve` would get for the artifact (the shard's dtype, else the
checkpoint's); tokens are only compared at equal tp (bf16 ties may differ across tp).

Skipped unless PREHEAT_VLLM_PYTHON names an interpreter that imports vLLM;
PREHEAT_REQUIRE_CONFORMANCE=1 (set by the nox session) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from preheat_testing import models
from preheat_testing.cli import run_cli
from preheat_testing.hub import HubServer

pytestmark = pytest.mark.conformance

ROUNDTRIP = Path(__file__).resolve().parents[1] / "conformance" / "roundtrip.py"
DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
PROMPT = (1, 5, 9, 23, 7)
MAX_TOKENS = 16
# one engine start takes 15-50 s at tp 1-2 and up to ~160 s at tp 4 on a busy 2-core machine
TIMEOUT_S = 1200
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
# thread settings of the unit tests (conftest) are not the engine's defaults
_ENGINE_CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Case:
    model: str  # a `preheat_testing.models.CASES` name (all have head_dim 64)
    tp: int
    args: dict = field(default_factory=dict)  # extra vLLM shard args

    @property
    def id(self) -> str:
        tags = ["split"] if {"file_pattern", "max_file_size"} & set(self.args) else []
        tags += [f"to-{self.args['dtype']}"] if "dtype" in self.args else []
        return "-".join([self.model, f"tp{self.tp}", *tags])


CASES = [
    # every family at tp 2
    # llama, 3-part source with an index; custom file names, each rank split into parts
    Case(
        "llama_multipart",
        2,
        {"file_pattern": "w-{rank}-{part}.safetensors", "max_file_size": 400_000},
    ),
    Case("mistral_kv2", 2),
    Case("qwen2_bias", 2),  # q/k/v biases
    Case("qwen3_qk_norm", 2),  # q_norm/k_norm, head_dim given explicitly
    # tied embeddings, one kv head replicated on both ranks
    Case("llama_tied_mqa", 2),
    # tp 1 (cheap: one process, no workers): GQA 8/4, heads * head_dim != hidden
    Case("llama_gqa", 1),
    # float16, vocab 1000 padded to 1024
    Case("llama_odd_vocab_fp16", 1),
    # a float32 checkpoint (2 parts, subfolders) converted to bfloat16 by preheat, and by vLLM
    Case("mistral_subfolders_fp32", 1, {"dtype": "bfloat16"}),
    # tp 4: tied, kv heads replicated, vocab 130 padded to 192 (the last rank holds only zeros)
    Case("qwen2_small_vocab_tied", 4),
]


# --------------------------------------------------------------------------- the vLLM interpreter


# the `vllm` fixture (the interpreter that has vLLM) is in conftest.py


@pytest.fixture(scope="session")
def hub():
    with HubServer() as server:
        yield server


# --------------------------------------------------------------------------- safetensors, stdlib only


def read_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, bytes) of one safetensors file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {
        k: (v["dtype"], v["shape"], data[base + v["data_offsets"][0] : base + v["data_offsets"][1]])
        for k, v in header.items()
    }


def rank_files(directory: Path, pattern: str) -> dict[int, list[Path]]:
    """Files of `directory` named by `pattern` ({rank} and {part}), grouped by rank."""
    regex = re.compile(
        re.escape(pattern)
        .replace(re.escape("{rank}"), r"(?P<rank>\d+)")
        .replace(re.escape("{part}"), r"(?P<part>\d+)")
    )
    out: dict[int, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        m = regex.fullmatch(path.name)
        if m:
            out.setdefault(int(m["rank"]), []).append(path)
    return out


def load_rank(files: list[Path]) -> dict[str, tuple[str, list[int], bytes]]:
    tensors: dict = {}
    for path in files:
        for name, value in read_tensors(path).items():
            assert name not in tensors, f"{name} appears in more than one part: {files}"
            tensors[name] = value
    return tensors


def differences(expected: dict, actual: dict, what: str) -> list[str]:
    """Key set, dtype, shape and byte differences of one rank (empty when bit-identical)."""
    out = [f"{what}: missing {k}" for k in sorted(set(expected) - set(actual))]
    out += [f"{what}: unexpected {k}" for k in sorted(set(actual) - set(expected))]
    for k in sorted(set(expected) & set(actual)):
        (de, se, be), (da, sa, ba) = expected[k], actual[k]
        if (de, se) != (da, sa):
            out.append(f"{what}: {k}: expected {de}{se}, got {da}{sa}")
        elif be != ba:
            out.append(f"{what}: {k}: bytes differ")
    return out


# --------------------------------------------------------------------------- preheat, for real


def preheat_env(root: Path, hub: HubServer) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREHEAT_") and k not in _CLEARED
    }
    env.update(
        PREHEAT_HOME=str(root / "preheat-home"),
        HF_HOME=str(root / "hf-home"),
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def preheat(env: dict[str, str], cwd: Path, *args: str) -> dict:
    done = run_cli([*args, "--json"], env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, (
        f"preheat {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return json.loads(done.stdout)


def resolved_loader(launch: dict, case: Case) -> tuple[str, dict | None, str | None]:
    """load_format, model_loader_extra_config and dtype from `preheat resolve`'s vLLM arguments."""
    args = list(launch["args"])
    opts = dict(zip(args[::2], args[1::2], strict=True))
    known = {"--load-format", "--tensor-parallel-size", "--model-loader-extra-config", "--dtype"}
    assert set(opts) <= known, args
    assert opts["--tensor-parallel-size"] == str(case.tp), args
    extra = opts.get("--model-loader-extra-config")
    return opts["--load-format"], json.loads(extra) if extra else None, opts.get("--dtype")


def engine_env(tp: int) -> dict[str, str]:
    """The vLLM CPU build's settings for this machine: a small KV cache, one core per rank."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREHEAT_") and k not in _ENGINE_CLEARED
    }
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    if tp > 1:
        # "auto" fails on a single NUMA node; wrap ranks over the allowed cores ("0|1", "0|1|0|1")
        cpus = sorted(os.sched_getaffinity(0))
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(cpus[i % len(cpus)]) for i in range(tp))
    return env


def run_engine(python: str, args: list[str], env: dict[str, str], log: Path) -> None:
    """Run the driver in its own process group; kill the whole group (engine workers too) on timeout."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [python, str(ROUNDTRIP), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"vLLM did not finish in {TIMEOUT_S} s; log: {log}\n{tail(log)}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, f"vLLM exited {proc.returncode}; log: {log}\n{tail(log)}"


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- the check


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sharded_artifact_loads_like_the_original(case, vllm, hub, tmp_path):
    t0 = time.perf_counter()
    model = models.build_case(case.model)
    original = model.write(tmp_path / "original")
    repo = f"conformance/{case.id}"
    hub.add_repo(repo, model.files)

    env = preheat_env(tmp_path, hub)
    shard = {
        "engine": "vllm",
        "args": {"tensor_parallel_size": case.tp, "method": "cpu", **case.args},
    }
    config = tmp_path / "shard.yaml"
    config.write_text(json.dumps(shard))  # JSON is YAML
    summary = preheat(
        env, tmp_path, "prefetch", "hf-model", repo, "--shard-config", str(config), "--wait"
    )
    assert summary["status"] == "succeeded", summary
    ref = f"{summary['artifact']['name']}:{summary['artifact']['version']}"
    spec = preheat(env, tmp_path, "artifacts", "get", ref)["shard"]
    assert (spec["method"], spec["tensor_parallel_size"]) == ("cpu", case.tp), spec
    assert SpecifierSet(spec["engine_versions"]).contains(vllm.version), (
        f"vLLM {vllm.version} is outside the versions preheat writes for ({spec['engine_versions']})"
    )
    launch = preheat(env, tmp_path, "resolve", ref, "--engine", "vllm")
    artifact = Path(launch["model"])
    load_format, extra, dtype = resolved_loader(launch, case)
    assert load_format == "sharded_state"
    assert dtype == case.args.get("dtype"), launch["args"]
    # both engines get the dtype `vllm serve` would use for the artifact
    dtype = dtype or model.config["torch_dtype"]
    pattern = case.args.get("file_pattern", DEFAULT_PATTERN)
    assert extra == (None if pattern == DEFAULT_PATTERN else {"pattern": pattern})
    files = rank_files(artifact, pattern)
    assert sorted(files) == list(range(case.tp)), sorted(p.name for p in artifact.iterdir())
    stray = {p.name for p in artifact.glob("*.safetensors")} - {
        p.name for ps in files.values() for p in ps
    }
    assert not stray, f"weight files not named by the pattern: {sorted(stray)}"
    if "max_file_size" in case.args:
        assert all(len(ps) > 1 for ps in files.values()), {r: len(ps) for r, ps in files.items()}
    t_shard = time.perf_counter() - t0

    out = tmp_path / "vllm"
    args = [str(original), str(artifact), "--tp", str(case.tp), "--out", str(out)]
    args += ["--dtype", dtype, "--prompt-ids", ",".join(map(str, PROMPT))]
    args += ["--max-tokens", str(MAX_TOKENS)]
    if extra:
        args += ["--extra-config", json.dumps(extra)]
    run_engine(vllm.python, args, engine_env(case.tp), tmp_path / "vllm.log")
    result = json.loads((out / "result.json").read_text())

    problems = []
    for rank in range(case.tp):
        meta = json.loads((out / "oracle" / f"rank-{rank}.json").read_text())
        assert (meta["tp"], meta["untied_by_checkpoint"]) == (case.tp, False), meta
        oracle = read_tensors(out / "oracle" / f"rank-{rank}.safetensors")
        written = load_rank(files[rank])
        loaded = read_tensors(out / "loaded" / f"rank-{rank}.safetensors")
        assert oracle, f"empty oracle capture for rank {rank}"
        problems += differences(oracle, written, f"rank {rank} file vs vLLM's own loader")
        problems += differences(written, loaded, f"rank {rank} loaded vs file")
    expected_tokens = result["oracle"]["token_ids"]
    assert len(expected_tokens) == MAX_TOKENS, result
    if result["loaded"]["token_ids"] != expected_tokens:
        problems.append(
            f"greedy tokens at tp={case.tp}: original {expected_tokens}, "
            f"sharded {result['loaded']['token_ids']}"
        )
    print(
        f"\n{case.id}: vllm {result['vllm_version']} {dtype} bind={result['threads_bind']} "
        f"preheat {t_shard:.1f} s, total {time.perf_counter() - t0:.1f} s; "
        + "; ".join(
            f"{k} start {result[k]['engine_start_s']} s generate {result[k]['generate_s']} s "
            f"shutdown {result[k]['shutdown_s']} s"
            for k in ("oracle", "loaded")
        )
    )
    assert not problems, "\n".join(problems)
