"""`preheat.serve(app)` for real, with a fake engine server in place of vLLM / SGLang.

The fake engine (tests/fake_engines) is started exactly as the real ones are, so the
vLLM and SGLang app environments, the process supervision, the proxy, auth and
scale-to-zero all run for real; only the model is missing.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_support import (
    FakeApp,
    alive,
    completion,
    free_port,
    http,
    publish,
    records,
    streamed,
    wait_gone,
)

import preheat
from preheat.api import PreheatError
from preheat.app import Scaling
from preheat.redact import redact
from preheat.serving import EngineFailed
from preheat_sglang import SGLangAppEnvironment
from preheat_vllm import VLLMAppEnvironment


@pytest.fixture
def env(tmp_path, monkeypatch):
    """PREHEAT_HOME in tmp, the fake engines on PYTHONPATH, their starts recorded."""
    from serve_support import fake_engine_env

    monkeypatch.setenv("PREHEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREHEAT_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.delenv("PREHEAT_STORE", raising=False)
    record = tmp_path / "starts.jsonl"
    fake_engine_env(monkeypatch, record)
    return record


@pytest.fixture
def tiny(env, tmp_path):
    return publish(str(tmp_path / "home" / "store"), "tiny")


def started(record) -> list[dict]:
    return [r for r in records(record) if "argv" in r]


def test_an_open_engine_listens_on_the_port_itself(env, tiny, monkeypatch):
    monkeypatch.setenv("FAKE_CALLER_VAR", "from-the-caller")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    port = free_port()
    app = VLLMAppEnvironment(model_path="tiny", requires_auth=False, port=port, host="127.0.0.1")
    with preheat.serve(app, quiet=True) as server:
        assert server.url == f"http://127.0.0.1:{port}" and server.api_key is None
        assert server.proxy is None and server.model == "tiny" and server.artifact == str(tiny.ref)
        reply = completion(server.url, None, "hello")
        assert reply.status == 200 and reply.json["pid"] == server.pid
        (run,) = started(env)
        assert run["argv"][:2] == ["--model", str(server.plan.command.model)]
        assert run["env"]["FAKE_CALLER_VAR"] == "from-the-caller"
        assert run["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
        assert run["pgid"] == run["pid"], "the engine leads its own process group"
        assert "Loading weights took" in server.logs()
        pid = server.pid
    assert wait_gone([pid]) == []
    assert server.pid is None


def test_the_api_key_guards_every_route_and_stays_secret(env, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_PRINT_KEY", "1")
    key_file = tmp_path / "keys" / "api-key"
    app = VLLMAppEnvironment(model_path="tiny", model_id="tiny-chat", port=free_port())
    with preheat.serve(app, api_key_file=key_file, quiet=True) as server:
        key = server.api_key
        assert key and len(key) >= 32 and redact(f"x {key} y") == "x *** y"
        assert key_file.read_text().strip() == key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        url = server.url
        assert completion(url, None, "hi", model="tiny-chat").status == 401
        assert completion(url, "wrong", "hi", model="tiny-chat").status == 401
        assert completion(url, key, "hi", model="tiny-chat").status == 200
        # vLLM guards /v1 only: the proxy guards the rest too, /health stays open
        assert http("POST", url + "/tokenize", data={"prompt": "x"}).status == 401
        assert http("POST", url + "/tokenize", data={"prompt": "x"}, key=key).status == 200
        assert http("GET", url + "/health").status == 200
        assert http("GET", url + "/v1/models", key=key).json["data"][0]["id"] == "tiny-chat"
        # the engine itself listens on loopback, on a port of its own, and checks the key too
        assert server.plan.engine_host == "127.0.0.1" and server.plan.engine_port != app.port
        assert completion(server.plan.engine_url, None, "hi").status == 401
        # never on a command line, never in the log
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert key.encode() not in f.read()
        (run,) = started(env)
        import hashlib

        assert run["key"] == hashlib.sha256(key.encode()).hexdigest()
        assert "api key is ***" in server.logs() and key not in server.logs()
    assert key not in server.log_path.read_text()


def test_stop_ends_the_engine_its_children_and_a_stubborn_one(env, tiny, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_CHILD", "1")
    monkeypatch.setenv("FAKE_ENGINE_IGNORE_TERM", "1")
    app = VLLMAppEnvironment(model_path="tiny", requires_auth=False, port=free_port())
    server = preheat.serve(app, quiet=True)
    (child,) = [r["child"] for r in records(env) if "child" in r]
    pid = server.pid
    assert alive(pid) and alive(child)
    t0 = time.monotonic()
    server.stop(grace=1.0)
    assert time.monotonic() - t0 < 10
    assert wait_gone([pid, child]) == []
    server.stop()  # twice is fine


def test_an_engine_that_dies_while_starting_shows_its_last_lines(env, tiny, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_DIE", "3")
    port = free_port()
    app = VLLMAppEnvironment(model_path="tiny", requires_auth=False, port=port)
    with pytest.raises(EngineFailed) as info:
        preheat.serve(app, quiet=True)
    assert "vllm exited with code 3 before it was ready" in str(info.value)
    assert "CUDA out of memory (fake)" in str(info.value)
    assert any("loading model weights" in line for line in info.value.log_tail)
    (run,) = started(env)
    assert wait_gone([run["pid"]]) == []
    with socket.socket() as sock:  # nothing listens there any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))  # nothing left listening


def test_an_engine_that_is_too_slow_is_stopped(env, tiny, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_START_DELAY", "30")
    app = VLLMAppEnvironment(
        model_path="tiny", requires_auth=False, port=free_port(), startup_timeout=1
    )
    t0 = time.monotonic()
    with pytest.raises(EngineFailed, match=r"did not answer .*within 1 s.*--startup-timeout"):
        preheat.serve(app, quiet=True)
    assert time.monotonic() - t0 < 20
    assert wait_gone([r["pid"] for r in started(env)]) == []


def test_an_engine_that_is_not_installed_fails_fast(env, tiny, monkeypatch, tmp_path):
    monkeypatch.delenv("PYTHONPATH")
    app = VLLMAppEnvironment(model_path="tiny", port=free_port())
    with pytest.raises(PreheatError, match=r"vllm is not installed for .*PREHEAT_VLLM_PYTHON"):
        preheat.serve(app, quiet=True)
    monkeypatch.setenv("PREHEAT_SGLANG_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(PreheatError, match=r"cannot run .*no-python.*PREHEAT_SGLANG_PYTHON"):
        preheat.serve(SGLangAppEnvironment(model_path="tiny"), quiet=True)
    assert started(env) == []


@pytest.mark.parametrize("auth", [False, True], ids=["direct", "proxy"])
def test_a_port_in_use_fails_fast(env, tiny, auth):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        app = VLLMAppEnvironment(model_path="tiny", requires_auth=auth, port=port, host="127.0.0.1")
        with pytest.raises(PreheatError, match=f"port {port} on 127.0.0.1 is in use"):
            preheat.serve(app, quiet=True)
    assert started(env) == []


def metric(url: str, name: str) -> float:
    for line in http("GET", url + "/metrics").body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def test_scale_to_zero_starts_on_demand_and_stops_when_idle(env, tiny, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_START_DELAY", "1.0")
    app = VLLMAppEnvironment(
        model_path="tiny",
        port=free_port(),
        scaling=Scaling(replicas=(0, 1), scaledown_after=1.5),
    )
    with preheat.serve(app, quiet=True) as server:
        url, key = server.url, server.api_key
        # nothing runs until a request comes; health, metrics and bad keys never wake it
        for _ in range(3):
            assert http("GET", url + "/health").json == {"status": "ok", "engine": "stopped"}
            assert metric(url, "preheat_serve_engine_up") == 0
            assert completion(url, "wrong", "hi").status == 401
        time.sleep(0.3)
        assert started(env) == [] and server.pid is None

        # the first requests are held through the cold start (no 503), all of them
        replies = [None] * 3

        def ask(i: int) -> None:
            replies[i] = completion(url, key, "hello")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - t0 >= 1.0
        assert [r.status for r in replies] == [200, 200, 200]
        tokens = replies[0].json["choices"][0]["token_ids"]
        assert len(started(env)) == 1, "one cold start for the held requests"
        first_pid = replies[0].json["pid"]
        assert metric(url, "preheat_serve_cold_starts_total") == 1
        assert metric(url, "preheat_serve_engine_up") == 1
        assert metric(url, "preheat_serve_time_to_ready_seconds_count") == 1
        assert "fake_engine_up 1" in http("GET", url + "/metrics").body.decode()

        # streamed through the proxy as the engine writes it: one event per token
        ids, times = streamed(url, key, "hello")
        assert ids == tokens and len(times) == len(tokens)
        assert times[-1] - times[0] >= 0.05 * (len(tokens) - 2)

        # idle: the engine is stopped; health and metrics keep it down
        assert wait_gone([first_pid], timeout=15) == []
        deadline = time.monotonic() + 10
        while server.slot.state() != "stopped" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http("GET", url + "/health").json["engine"] == "stopped"
        assert metric(url, "preheat_serve_scale_downs_total") == 1
        assert metric(url, "preheat_serve_engine_up") == 0
        time.sleep(0.5)
        assert len(started(env)) == 1

        # the next request brings it back, with the same answer
        again = completion(url, key, "hello")
        assert again.status == 200 and again.json["choices"][0]["token_ids"] == tokens
        assert again.json["pid"] != first_pid
        assert metric(url, "preheat_serve_cold_starts_total") == 2
        assert metric(url, 'preheat_serve_requests_total{code="401"}') == 3
        last = again.json["pid"]
    assert wait_gone([last]) == []


def test_one_replica_stays_up_and_comes_back_after_a_crash(env, tiny):
    app = VLLMAppEnvironment(model_path="tiny", port=free_port(), scaling=Scaling(replicas=(1, 1)))
    with preheat.serve(app, quiet=True) as server:
        assert server.pid is not None and http("GET", server.url + "/health").status == 200
        first = server.pid
        os.killpg(first, 9)
        assert wait_gone([first]) == []
        assert http("GET", server.url + "/health").status == 503
        reply = completion(server.url, server.api_key, "hi")
        assert reply.status == 200 and reply.json["pid"] != first
        last = server.pid
    assert wait_gone([last]) == []


def test_a_remote_artifact_is_copied_once_verified_and_reused(env, tmp_path):
    pytest.importorskip("preheat_storage")
    files = {"config.json": b"{}", "model.safetensors": os.urandom(3000)}
    m = publish("memory://serve-copy/s", "tiny", files=files)
    ref = f"memory://serve-copy/s/artifacts/tiny/{m.version}"
    app = VLLMAppEnvironment(model_path=ref, requires_auth=False, port=free_port())
    with preheat.serve(app, quiet=True) as server:
        copy = server.plan.local_copy
        assert copy and server.plan.command.model == copy
        assert str(tmp_path / "home") in copy
        assert {p: Path(copy, p).read_bytes() for p in files} == files
        mtimes = {p: os.stat(os.path.join(copy, p)).st_mtime_ns for p in files}
    app = VLLMAppEnvironment(model_path=ref, requires_auth=False, port=free_port())
    with preheat.serve(app, quiet=True) as server:
        assert server.plan.local_copy == copy
        assert {p: os.stat(os.path.join(copy, p)).st_mtime_ns for p in files} == mtimes
    assert len(started(env)) == 2


def test_sglang_never_gets_the_key_and_listens_on_loopback(env, tiny):
    app = SGLangAppEnvironment(model_path="tiny", port=free_port())
    with preheat.serve(app, quiet=True) as server:
        (run,) = started(env)
        assert run["engine"] == "sglang" and run["key"] is None
        assert run["argv"][run["argv"].index("--host") + 1] == "127.0.0.1"
        assert completion(server.url, None, "hi").status == 401
        assert completion(server.url, server.api_key, "hi").status == 200


def test_core_serves_an_engine_it_does_not_know(env, tiny):
    app = FakeApp(model_path="tiny", port=free_port())
    with preheat.serve(app, quiet=True) as server:
        assert completion(server.url, server.api_key, "hi").status == 200
        assert server.plan.command.argv[0] == sys.executable


def test_a_cold_start_that_fails_answers_503_and_the_next_request_tries_again(
    env, tiny, monkeypatch
):
    app = VLLMAppEnvironment(
        model_path="tiny", port=free_port(), scaling=Scaling(replicas=(0, 1), scaledown_after=60)
    )
    with preheat.serve(app, quiet=True) as server:
        monkeypatch.setenv("FAKE_ENGINE_DIE", "5")  # the engine inherits the caller's environment
        reply = completion(server.url, server.api_key, "hi")
        assert reply.status == 503
        assert "could not start: vllm exited with code 5" in reply.json["error"]["message"]
        assert wait_gone([r["pid"] for r in started(env)]) == []
        monkeypatch.delenv("FAKE_ENGINE_DIE")
        assert completion(server.url, server.api_key, "hi").status == 200
        assert len(started(env)) == 2
