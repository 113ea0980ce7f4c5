"""`preheat.serve` with the real vLLM CPU build, over HTTP (`nox -s conformance`).

A tiny Llama with a real (byte-level BPE) tokenizer is put on a loopback hub and
prefetched by the real CLI: unsharded, pre-sharded for vLLM at tp=2, and both again into
SeaweedFS S3. The oracle is vLLM itself on the original checkpoint (conformance/
generate.py, greedy, at tp=1 and tp=2). Then, each with `preheat.serve(app)`:

1. unsharded, local, with an API key and scale-to-zero: a request without the key is
   refused (and starts nothing); the first one with it cold-starts vLLM behind the proxy;
   the tokens equal the oracle's, streamed too; after the idle timeout the engine
   process is gone; the next request brings it back with the same tokens;
2. pre-sharded at tp=2 (`VLLM_CPU_OMP_THREADS_BIND=0|1` in the caller's environment):
   tokens equal the oracle's at tp=2;
3. streamed from SeaweedFS with `stream_model=True` (`runai_streamer`, and
   `runai_streamer_sharded` at tp=2), with no local copy: the same tokens again.

Tokens are compared as ids (`"return_token_ids": true`), prompts given as ids, at equal
tp (bf16 ties may differ across tp). Skipped unless PREHEAT_VLLM_PYTHON names an
interpreter that imports vLLM; PREHEAT_REQUIRE_CONFORMANCE=1 turns the skip into a
failure. Seven vLLM starts in all (5-8 minutes on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import preheat
from preheat.app import Scaling
from preheat_testing import models
from preheat_testing.cli import run_cli
from preheat_testing.hub import HubServer
from preheat_testing.vllm_python import PYTHON_ENV, REQUIRE_ENV, vllm_interpreter
from preheat_vllm import VLLMAppEnvironment

pytestmark = pytest.mark.conformance


GENERATE = Path(__file__).resolve().parents[1] / "conformance" / "generate.py"
CASE = "llama_gqa"  # 8 heads, 4 kv heads, head_dim 64: splits over tp=2 on CPU
PROMPT = [1, 5, 9, 23, 7]
MAX_TOKENS = 16
ENGINE_ARGS = ["--enforce-eager", "--max-model-len", "128", "--dtype", "bfloat16"]
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def vllm_python() -> str:
    return vllm_interpreter("runai_model_streamer").python


def cpu_bind(tp: int) -> str:
    cpus = sorted(os.sched_getaffinity(0))
    return "|".join(str(cpus[i % len(cpus)]) for i in range(tp))


class World:
    """The hub, the model, its artifacts in the local store (and in S3 once asked)."""

    def __init__(self, root: Path, hub: HubServer, python: str) -> None:
        self.root = root
        self.hub = hub
        self.python = python
        self.model = models.build_case(CASE)
        self.original = self.model.write(root / "original")
        hub.add_repo("conformance/served", self.model.files)
        self.home = root / "preheat-home"
        self.store = str(self.home / "store")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREHEAT_") and k not in _CLEARED and k not in _THREADS
        }
        env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(root / "hf-home"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_CONFIG=str(root / "preheat-config.toml"),
        )
        self.env = env
        (root / "tp2.yaml").write_text(
            json.dumps({"engine": "vllm", "args": {"tensor_parallel_size": 2, "method": "cpu"}})
        )

    def prefetch(self, *extra: str, env: dict | None = None) -> str:
        args = ["prefetch", "hf-model", "conformance/served", "--wait", "--json", *extra]
        done = run_cli(args, env={**self.env, **(env or {})}, cwd=self.root, timeout=300)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        out = json.loads(done.stdout)
        return f"{out['artifact']['name']}:{out['artifact']['version']}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, vllm_python):
    root = tmp_path_factory.mktemp("serve-vllm")
    with HubServer() as hub:
        w = World(root, hub, vllm_python)
        w.plain = w.prefetch()
        w.sharded = w.prefetch("--shard-config", str(root / "tp2.yaml"))
        yield w


@pytest.fixture(scope="module")
def oracle(world) -> dict[int, list[int]]:
    """Greedy tokens of vLLM on the original checkpoint, at tp=1 and tp=2."""
    tokens = {}
    for tp in (1, 2):
        out = world.root / f"oracle-tp{tp}.json"
        env = {k: v for k, v in os.environ.items() if k not in _THREADS}
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(world.root / "vllm-cache"))
        t0 = time.perf_counter()
        done = subprocess.run(
            [world.python, str(GENERATE), str(world.original), "--tp", str(tp),
             "--dtype", "bfloat16", "--prompt-ids", ",".join(map(str, PROMPT)),
             "--max-tokens", str(MAX_TOKENS), "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=900, start_new_session=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        TIMINGS[f"oracle tp={tp} (generate.py)"] = time.perf_counter() - t0
        tokens[tp] = json.loads(out.read_text())["token_ids"]
        assert len(tokens[tp]) == MAX_TOKENS
    return tokens


@pytest.fixture
def engine_env(world, monkeypatch):
    """The caller's environment preheat.serve passes on to vLLM."""
    for name in list(os.environ):
        if name.startswith("PREHEAT_") and name not in (PYTHON_ENV, REQUIRE_ENV):
            monkeypatch.delenv(name)
    for name in (*_THREADS, "VLLM_API_KEY", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(PYTHON_ENV, world.python)
    monkeypatch.setenv("PREHEAT_HOME", str(world.home))
    monkeypatch.setenv("PREHEAT_CONFIG", str(world.root / "preheat-config.toml"))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(world.root / "vllm-cache"))
    return monkeypatch


def ask(url: str, key: str | None, model: str, *, stream: bool = False, timeout: float = 600):
    """(status, token ids) of a greedy completion of PROMPT."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream": stream,
    }
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if not stream:
                return response.status, json.loads(response.read())["choices"][0]["token_ids"]
            ids, events = [], 0
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    choice = json.loads(line[6:])["choices"][0]
                    ids.extend(choice.get("token_ids") or [])
                    events += 1
            assert events >= MAX_TOKENS // 2, (
                f"{events} events: the stream was not forwarded as it came"
            )
            return response.status, ids
    except urllib.error.HTTPError as exc:
        return exc.code, None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone(pids, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def family(pid: int) -> list[int]:
    import psutil

    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def note_weights(what: str, log: str) -> None:
    """Record the weight-loading time vLLM logged ("Loading weights took 0.02 seconds")."""
    import re

    found = re.findall(r"(?:Loading weights|weights) took ([0-9.]+) ?s", log)
    if found:
        TIMINGS[f"weights load ({what}, from vLLM's log) s"] = float(found[-1])


def test_unsharded_with_a_key_and_scale_to_zero(world, oracle, engine_env):
    app = VLLMAppEnvironment(
        name="served-plain",
        model_path=world.plain,
        model_id="tiny-llama",
        store=world.store,
        extra_args=ENGINE_ARGS,
        scaling=Scaling(replicas=(0, 1), scaledown_after=4),
        requires_auth=True,
        port=free_port(),
        startup_timeout=900,
    )
    with preheat.serve(app) as server:
        url, key = server.url, server.api_key
        assert server.pid is None, "scale-to-zero starts nothing before a request"
        assert ask(url, None, "tiny-llama")[0] == 401
        assert server.pid is None, "a refused request does not wake the engine"

        t0 = time.perf_counter()
        status, tokens = ask(url, key, "tiny-llama")
        TIMINGS["cold start + first completion (unsharded)"] = time.perf_counter() - t0
        assert status == 200 and tokens == oracle[1], (tokens, oracle[1])
        assert ask(url, key, "tiny-llama", stream=True) == (200, oracle[1])
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert key.encode() not in f.read()
        first = family(server.pid)

        assert gone(first, timeout=120), "the engine outlived the idle timeout"
        assert server.slot.state() == "stopped" or not server.slot.current.alive()
        t0 = time.perf_counter()
        assert ask(url, key, "tiny-llama") == (200, oracle[1])
        TIMINGS["second cold start + completion"] = time.perf_counter() - t0
        last = family(server.pid)
        log = server.logs()
        assert key not in log
        note_weights("unsharded", log)
    assert gone(last)


def test_presharded_at_tp2(world, oracle, engine_env):
    engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(2))
    app = VLLMAppEnvironment(
        model_path=world.sharded,
        store=world.store,
        extra_args=ENGINE_ARGS,
        requires_auth=False,
        port=free_port(),
        startup_timeout=900,
    )
    plan = app.plan()
    argv = list(plan.command.argv)
    assert argv[argv.index("--load-format") + 1] == "sharded_state"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    t0 = time.perf_counter()
    with preheat.serve(app) as server:
        TIMINGS["ready (tp=2 pre-sharded)"] = time.perf_counter() - t0
        served = server.model
        assert ask(server.url, None, served) == (200, oracle[2])
        pids = family(server.pid)
    assert gone(pids)


@pytest.fixture(scope="module")
def s3(world):
    from preheat_testing import servers

    try:
        context = servers.seaweedfs_s3()
        server = context.__enter__()
    except servers.ServerUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"SeaweedFS unavailable: {exc}")
        pytest.skip(f"SeaweedFS unavailable: {exc}")
    try:
        url = server.url("models")
        env = {**server.env}
        world.s3_plain = world.prefetch("--store", url, env=env)
        world.s3_sharded = world.prefetch(
            "--store", url, "--shard-config", str(world.root / "tp2.yaml"), env=env
        )
        yield server, url
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("tp", [1, 2], ids=["runai_streamer", "runai_streamer_sharded"])
def test_streamed_from_seaweedfs_s3(world, oracle, engine_env, s3, tp):
    server_s3, url = s3
    for key, value in server_s3.env.items():  # the credentials the user already has
        engine_env.setenv(key, value)
    if tp == 2:
        engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(2))
    ref = world.s3_plain if tp == 1 else world.s3_sharded
    app = VLLMAppEnvironment(
        model_path=ref,
        store=url,
        stream_model=True,
        extra_args=ENGINE_ARGS,
        requires_auth=False,
        port=free_port(),
        startup_timeout=900,
    )
    plan = app.plan()
    argv = list(plan.command.argv)
    assert plan.stream and plan.local_copy is None and plan.command.model.startswith("s3://")
    assert argv[argv.index("--model") + 1] == plan.command.model
    fmt = "runai_streamer" if tp == 1 else "runai_streamer_sharded"
    assert argv[argv.index("--load-format") + 1] == fmt
    assert plan.command.env["AWS_ENDPOINT_URL"] == server_s3.endpoint
    assert plan.command.env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    assert not any(server_s3.env["AWS_SECRET_ACCESS_KEY"] in a for a in argv)
    cache = world.home / "cache"
    before = sorted(cache.rglob("*.safetensors")) if cache.exists() else []
    t0 = time.perf_counter()
    with preheat.serve(app) as server:
        TIMINGS[f"ready (streamed from S3, {fmt})"] = time.perf_counter() - t0
        assert ask(server.url, None, server.model) == (200, oracle[tp])
        pids = family(server.pid)
        note_weights(fmt, server.logs())
    assert gone(pids)
    after = sorted(cache.rglob("*.safetensors")) if cache.exists() else []
    assert after == before, "streaming made a local copy of the weights"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_timings_summary():
    """Not a check: prints what the engine starts above took."""
    for name, seconds in TIMINGS.items():
        print(f"\n  {name}: {seconds:.1f}")
