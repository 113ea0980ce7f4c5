"""`preheat serve REF --engine NAME ...`: the real CLI, with the fake engine server.

Bad input is one `error:` line, fast, with nothing left running; a served engine stops
with the CLI, whether it gets Ctrl-C, SIGTERM or SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import (
    FAKE_ENGINES,
    completion,
    free_port,
    http,
    publish,
    records,
    wait_gone,
)

from preheat_testing.cli import CliResult

PREHEAT = str(Path(sys.executable).with_name("preheat"))


class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.store = str(self.home / "store")
        self.record = root / "starts.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREHEAT_")}
        env.pop("VLLM_API_KEY", None)
        env.update(
            PREHEAT_HOME=str(self.home),
            PREHEAT_CONFIG=str(root / "config.toml"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(FAKE_ENGINES), env.get("PYTHONPATH")])),
            FAKE_ENGINE_RECORD=str(self.record),
        )
        self.env = env

    def run(self, *args: str, timeout: float = 60, **extra: str) -> CliResult:
        done = subprocess.run(
            [PREHEAT, *args],
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        return CliResult(list(args), done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [PREHEAT, *args],
            env={**self.env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )

    def starts(self) -> list[dict]:
        return [r for r in records(self.record) if "argv" in r]


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path)


def read_json(proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The JSON object the CLI prints once the engine is ready."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the CLI exited: {proc.wait()} {proc.stderr.read()}")
        lines.append(line)
        if line.rstrip() == "}":
            return json.loads("".join(lines))
    raise AssertionError("no JSON from the CLI")


def test_dry_run_prints_the_exact_command_with_secrets_redacted(cli):
    m = publish(cli.store, "tiny", shard={"engine": "vllm", "tp": 2})
    out = cli.run(
        "serve", "tiny", "--engine", "vllm", "--port", "8123", "--dry-run", "--", "--enforce-eager"
    ).ok()
    lines = out.stdout.splitlines()
    assert lines[0] == "export VLLM_API_KEY='***'"
    argv = lines[-1].split()
    assert argv[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert argv[4] == str(Path(cli.store, "artifacts", "tiny", m.version))
    assert argv[argv.index("--load-format") + 1] == "sharded_state"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[-1] == "--enforce-eager"
    assert "preheat's proxy on 0.0.0.0:8123 (an API key on every API route)" in out.stderr
    data = cli.run(
        "serve", "tiny", "--engine", "vllm", "--dry-run", "--json", "--no-auth",
        "--model-id", "chat", "--scale-to-zero", "10m",
    ).ok().json  # fmt: skip
    assert data["env"] == {} and data["model"] == "chat" and data["proxy"] is True
    assert data["scale_to_zero"] == {"scaledown_after": 600.0} and data["auth"] is False
    assert data["artifact"] == {"name": "tiny", "version": m.version}
    assert data["command"][data["command"].index("--served-model-name") + 1] == "chat"
    assert cli.starts() == []


def test_serve_until_ctrl_c_with_nothing_left_behind(cli):
    publish(cli.store, "tiny")
    port = free_port()
    proc = cli.start("serve", "tiny", "--engine", "vllm", "--port", str(port), "--json")
    try:
        data = read_json(proc)
        assert data["url"] == f"http://127.0.0.1:{port}" and data["model"] == "tiny"
        key = data["api_key"]
        assert key and data["api_key_file"] is None
        assert completion(data["url"], key, "hi").status == 200
        assert completion(data["url"], None, "hi").status == 401
        (run,) = cli.starts()
        assert Path(data["log"]).is_file() and key not in Path(data["log"]).read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
    assert wait_gone([run["pid"]]) == []
    with socket.socket() as sock:  # nothing listens there any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))


def test_sigterm_stops_cleanly_and_the_key_file_is_private(cli, tmp_path):
    publish(cli.store, "tiny")
    key_file = tmp_path / "key"
    proc = cli.start(
        "serve",
        "tiny",
        "--engine",
        "sglang",
        "--port",
        str(free_port()),
        "--api-key-file",
        str(key_file),
    )
    try:
        assert proc.stdout.readline().startswith("url: http://127.0.0.1:")
        assert proc.stdout.readline() == "model: tiny\n"
        assert proc.stdout.readline() == f"api key: in {key_file}\n"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        (run,) = cli.starts()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert key_file.read_text().strip() not in proc.stdout.read() + proc.stderr.read()
    finally:
        proc.kill()
    assert wait_gone([run["pid"]]) == []


def test_a_killed_cli_takes_its_engine_along(cli):
    publish(cli.store, "tiny")
    port = free_port()
    proc = cli.start(
        "serve", "tiny", "--engine", "vllm", "--port", str(port), "--no-auth", "--json"
    )
    try:
        data = read_json(proc)
        (run,) = cli.starts()
        assert http("GET", data["url"] + "/health").status == 200
        proc.kill()  # SIGKILL: no clean-up code runs in the CLI
        proc.wait()
    finally:
        proc.kill()
    assert wait_gone([run["pid"]], timeout=30) == []


def test_bad_input_is_one_line_fast_and_starts_nothing(cli):
    publish(cli.store, "tiny", shard={"engine": "vllm", "tp": 2})
    from preheat.config import open_store

    lease = json.dumps({"run": "r20260101-000000-eeeeee"}).encode()
    open_store(cli.store).put("staging/busy/v1/lease.json", lease)
    cases = [
        (["nope"], {}, "artifact nope:latest not found"),
        (["busy"], {}, "still being written by run r20260101-000000-eeeeee"),
        (["tiny", "--tp", "4"], {}, "contradicts the shard"),
        (
            ["tiny", "--", "-tp", "4"],
            {},
            "extra_args --tensor-parallel-size 4 contradicts the shard",
        ),
        (["tiny", "--gpu", "L4:4"], {}, 'use gpu="L4:2"'),
        (["tiny", "--engine", "sglang"], {}, "pre-sharded for vllm, not sglang"),
        (["tiny", "--engine", "nosuch"], {}, "no app environment for engine 'nosuch'"),
        (["tiny"], {"PYTHONPATH": ""}, "vllm is not installed for"),
        (["tiny", "--scale-to-zero", "soon"], {}, "invalid scaledown_after"),
    ]
    for args, extra, match in cases:
        engine = [] if "--engine" in args else ["--engine", "vllm"]
        t0 = time.monotonic()
        line = cli.run("serve", *engine, "--port", str(free_port()), *args, **extra).error_line()
        assert match in line, (args, line)
        assert time.monotonic() - t0 < 15, args
    assert cli.starts() == []


def test_a_port_in_use_and_an_engine_that_dies_are_one_error_line(cli):
    publish(cli.store, "tiny")
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        line = cli.run("serve", "tiny", "--engine", "vllm", "--port", str(port)).error_line()
        assert f"port {port} on 0.0.0.0 is in use" in line
    assert cli.starts() == []
    done = cli.run(
        "serve", "tiny", "--engine", "vllm", "--port", str(free_port()), FAKE_ENGINE_DIE="4"
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    (line,) = [x for x in lines if x.startswith("error: ")]
    assert line == lines[-1]
    assert "vllm exited with code 4 before it was ready: RuntimeError: CUDA out of memory" in line
    assert "  | loading model weights" in lines, "the engine's last lines are shown above it"
    (run,) = cli.starts()
    assert wait_gone([run["pid"]]) == []


def test_help_names_everything_as_the_design_does(cli):
    text = cli.run("serve", "--help").ok().stdout
    assert text.splitlines()[0] == "Usage: preheat serve [OPTIONS] REF [-- EXTRA ENGINE ARGS...]"
    for option in (
        "--engine NAME", "--port P", "--model-id ID", "--tp N", "--stream", "--auth / --no-auth",
        "--api-key-file F", "--scale-to-zero SECONDS", "--dry-run", "--json", "--store URL",
    ):  # fmt: skip
        assert f"  {option}  " in text, option
    assert "{" not in text and "<" not in text
