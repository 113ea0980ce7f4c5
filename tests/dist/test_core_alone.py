"""preheat installed alone (its wheel, plus preheat-testing and pytest): what works, and what
asks for a plugin before any byte moves.

Run by `nox -s "dist(preheat)"` in a fresh environment; everything here FAILS (never skips)
where a preheat plugin is installed, so it is left out of the `tests` session.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from preheat_testing.cli import CliResult
from preheat_testing.hub import HubServer

PREHEAT_BIN = str(Path(sys.executable).with_name("preheat"))
REPO = "alone/tiny-model"
BUILTIN = {
    "hf": {"fetchers": ["hf"]},
    "local": {"stores": ["file"]},
    "local-executor": {"executors": ["local"]},
}
ENGINES = ("vllm", "sglang")


def safetensors(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    """A safetensors file of F32 tensors, written by hand (no numpy here)."""
    header, offset, data = {}, 0, b""
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


MODEL = {
    "config.json": json.dumps(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 4,
            "torch_dtype": "float32",
        }
    ).encode(),
    "model.safetensors": safetensors(
        {"model.embed_tokens.weight": ([4, 8], struct.pack("<32f", *range(32)))}
    ),
}


@pytest.fixture
def hub():
    with HubServer() as server:
        server.add_repo(REPO, MODEL)
        yield server


@pytest.fixture
def env(tmp_path, hub, monkeypatch):
    """A clean environment pointing at the loopback hub (applied to this process too)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREHEAT_", "HF_", "HUGGING_FACE_", "AWS_", "PYTEST_"))
    }
    clean.update(
        PREHEAT_HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf-home"),
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    for key in list(os.environ):
        if key not in clean and not key.startswith("PYTEST_"):
            monkeypatch.delenv(key)
    for key, value in clean.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    from preheat.plugins import set_registry

    set_registry(None)  # built again from this environment's entry points
    yield clean
    set_registry(None)


def cli(env: dict[str, str], *args: str) -> CliResult:
    proc = subprocess.run(
        [PREHEAT_BIN, *args], env=env, capture_output=True, text=True, timeout=120
    )
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


def nothing_moved(hub: HubServer, env: dict[str, str]) -> None:
    assert hub.requests == [], [r.path for r in hub.requests]
    store = Path(env["PREHEAT_HOME"]) / "store"
    files = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert files == [], f"the failed prefetch wrote {files}"


# --------------------------------------------------------------------------- what core alone has


def test_only_preheat_is_installed_with_its_builtin_plugins():
    dists = sorted(
        d.metadata["Name"].lower()
        for d in importlib.metadata.distributions()
        if d.metadata["Name"].lower().replace("_", "-").startswith("preheat")
    )
    assert dists == ["preheat", "preheat-testing"], f"installed besides core: {dists}"
    eps = importlib.metadata.entry_points(group="preheat")
    assert {ep.name: ep.dist.metadata["Name"] for ep in eps} == dict.fromkeys(BUILTIN, "preheat")


def test_help_works(env):
    result = cli(env, "--help").ok()
    for command in ("prefetch", "runs", "artifacts", "resolve", "plugins", "gc"):
        assert command in result.stdout
    assert result.stderr == ""


def test_plugins_lists_only_the_builtin_ones(env):
    listed = cli(env, "plugins", "--json").ok().json["plugins"]
    assert {p["name"]: p["provides"] for p in listed} == BUILTIN
    for p in listed:
        assert p["distribution"] == "preheat" and p["error"] is None, p


def test_unsharded_prefetch_works(env, hub, tmp_path):
    summary = cli(env, "prefetch", "hf-model", REPO, "--wait", "--json").ok().json
    assert summary["status"] == "succeeded"
    path = Path(summary["artifact"]["path"])
    assert {p.name: p.read_bytes() for p in path.iterdir()} == MODEL
    assert cli(env, "artifacts", "list", "--json").ok().json["artifacts"][0]["repo"] == REPO


# --------------------------------------------------------------------------- what needs a plugin


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("wait", [True, False], ids=["wait", "detached"])
def test_a_shard_config_names_the_engine_package_before_any_download(
    env, hub, tmp_path, engine, wait
):
    config = tmp_path / "shard.yaml"
    config.write_text(f"engine: {engine}\nargs:\n  tensor_parallel_size: 2\n")
    args = ["prefetch", "hf-model", REPO, "--shard-config", str(config), *(["--wait"] * wait)]
    line = cli(env, *args).error_line()
    assert f"pip install preheat-{engine}" in line, line
    nothing_moved(hub, env)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_python_api_names_the_engine_package_before_any_download(env, hub, engine):
    import preheat
    import preheat.prefetch
    from preheat.api import PreheatError

    name = {"vllm": "VLLMShardArgs", "sglang": "SGLangShardArgs"}[engine]
    with pytest.raises(ImportError, match=f"pip install preheat-{engine}"):
        getattr(preheat.prefetch, name)
    with pytest.raises(PreheatError, match=f"pip install preheat-{engine}"):
        preheat.prefetch.hf_model(
            REPO, shard_config={"engine": engine, "args": {"tensor_parallel_size": 2}}
        )
    nothing_moved(hub, env)


@pytest.mark.parametrize("url", ["s3://b", "gs://b/models", "az://container"])
def test_an_object_store_url_names_preheat_storage_before_any_download(env, hub, url):
    line = cli(env, "prefetch", "hf-model", REPO, "--store", url, "--wait").error_line()
    assert "pip install preheat-storage" in line, line
    nothing_moved(hub, env)
    line = cli(env, "artifacts", "list", "--store", url).error_line()
    assert "pip install preheat-storage" in line, line


def test_an_object_store_url_in_the_environment_names_preheat_storage(env, hub):
    line = cli({**env, "PREHEAT_STORE": "s3://b"}, "prefetch", "hf-model", REPO).error_line()
    assert "pip install preheat-storage" in line, line
    nothing_moved(hub, env)

    from preheat.api import PreheatError, open_store

    with pytest.raises(PreheatError, match="pip install preheat-storage"):
        open_store("s3://b")
