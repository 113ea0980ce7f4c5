"""Start-up stays cheap: what `preheat --help` and a no-op prefetch import, not how long they take.

Each case runs the real CLI in a fresh interpreter under `python -X importtime`, which
names every module imported; the heavy libraries must not be among them (timings live
in benchmarks/startup.py). The no-op prefetch is one whose artifact is already
published: it asks the hub for the commit and the listing and fetches no weight byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("huggingface_hub", "httpx", "httpx2", "httpcore", "rich", "numpy", "pydantic")
REPO = "tiny/Startup"


def imported(args: list[str], env: dict[str, str], cwd: Path) -> tuple[set[str], str]:
    """The modules `preheat ARGS...` imports (its own `-X importtime` report) and its stdout."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "preheat.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, proc.stdout


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_help_imports_no_hub_client_no_pydantic_no_rich_no_numpy(preheat_env):
    modules, out = imported(["--help"], preheat_env.env, preheat_env.cwd)
    assert "prefetch" in out and "Usage" in out
    assert "preheat.cli.prefetch" in modules, "the report lists the CLI's own modules"
    assert heavy(modules) == []


@pytest.fixture
def published(preheat_env, hub, tiny_model):
    """A loopback hub serving a tiny model that is already published in the store."""
    hub.add_repo(REPO, tiny_model("llama_multipart").files)
    env = preheat_env.connect(hub)
    env.cli("prefetch", "hf-model", REPO, "--wait", "--quiet").ok()
    hub.reset_stats()
    return env


def test_a_no_op_prefetch_imports_no_heavy_library_and_fetches_no_weight_byte(published, hub):
    args = ["prefetch", "hf-model", REPO, "--wait", "--json"]
    modules, out = imported(args, published.env, published.cwd)
    assert '"reused": true' in out
    assert heavy(modules) == []
    assert hub.bytes_served("*.safetensors") == 0
    assert sorted(r.path.split("/")[5] for r in hub.requests) == ["revision", "tree"]


def test_a_token_file_is_read_without_the_hub_client(published, hub):
    token = "hf_FromTheTokenFile_8c1d"
    hub.add_token(token)
    (published.hf_home / "token").write_text(token + "\n")
    modules, out = imported(
        ["prefetch", "hf-model", REPO, "--wait", "--json"], published.env, published.cwd
    )
    assert '"reused": true' in out
    assert heavy(modules) == []
    assert hub.requests and all(r.has_auth for r in hub.requests), "the file's token was sent"


def test_finding_the_token_follows_the_hub_conventions(tmp_path, monkeypatch):
    from preheat.builtin.hf import find_token

    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert find_token("HF_TOKEN") is None
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text(" hf_File \n")
    assert find_token("HF_TOKEN") == "hf_File"
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert find_token("HF_TOKEN") is None
    (tmp_path / "elsewhere").write_text("hf_Elsewhere")
    assert find_token("HF_TOKEN") == "hf_Elsewhere"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_Legacy")
    assert find_token("HF_TOKEN") == "hf_Legacy"
    monkeypatch.setenv("HF_TOKEN", "hf_Env")
    assert find_token("HF_TOKEN") == "hf_Env"
    # a custom key names one secret and nothing else
    assert find_token("MY_KEY") is None
    monkeypatch.setenv("MY_KEY", "hf_Mine")
    assert find_token("MY_KEY") == "hf_Mine"


# the CLI's own conversion of plain values, against Typer's (pydantic-backed) one


def _params():
    import typer.main

    from preheat.cli.main import _mount_plugin_commands, app

    _mount_plugin_commands()
    root = typer.main.get_command(app)
    found = {}

    def walk(command):
        for param in command.params:
            found.setdefault(param.type_descriptor.annotation, param)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(root)
    return found


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("str", ["", "org/name", "ünïcode", " spaced "]),
        ("int", ["0", "7", "-1", "00012"]),
        ("bool", [True, False]),
        ("list", [(), ("a",), ("*.json", "sub/")]),
        ("path", ["shard.yaml", "/nonexistent/dir/x.yaml", "."]),
    ],
)
def test_plain_values_convert_as_typer_converts_them(kind, values):
    from pathlib import Path as P

    from typer._coercion import build_runtime_param

    from preheat.cli.options import _kind, _Plain

    annotation = {"str": str, "int": int, "bool": bool, "list": list[str], "path": P}[kind]
    param = _params()[annotation]
    assert _kind(param.type_descriptor) == kind
    ours, theirs = _Plain(kind, param.type_descriptor), build_runtime_param(param.type_descriptor)
    for value in [*values, None]:
        assert ours.coerce(value, param, None) == theirs.coerce(value, param, None), value


def test_values_the_plain_conversion_does_not_take_get_typers_messages(preheat_env):
    bad = preheat_env.cli_in_process("prefetch", "hf-model", "a/b", "--force", "many")
    assert bad.returncode == 2
    assert "Invalid value for '--force'" in bad.stderr and "integer" in bad.stderr


def test_a_no_op_sharded_prefetch_builds_no_sharder(published, hub):
    """A published pre-sharded version is reused without the sharder (numpy and the slicer)."""
    config = published.cwd / "tp2.yaml"
    config.write_text("engine: vllm\nargs:\n  tensor_parallel_size: 2\n")
    args = ["prefetch", "hf-model", REPO, "--shard-config", str(config), "--wait", "--json"]
    published.cli(*args).ok()
    hub.reset_stats()
    modules, out = imported(args, published.env, published.cwd)
    assert '"reused": true' in out
    assert heavy(modules) == [] and "preheat_tp.cpu_writer" not in modules
    assert hub.bytes_served("*.safetensors") == 0
