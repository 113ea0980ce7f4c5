"""`preheat resolve REF --engine sglang`: SGLang launch commands for sharded and unsharded artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preheat.api import Location, PreheatError
from preheat_testing.core import engine_launch

SERVER = ["python", "-m", "sglang.launch_server"]


def resolved(world, ref: str, *extra: str) -> dict:
    data = world.cli("resolve", ref, "--engine", "sglang", "--json", *extra).ok().json
    assert data["engine"] == "sglang" and data["env"] == {}
    assert data["command"] == [*SERVER, *data["args"]]
    return data


def sglang_launch(world, manifest, where: Location, tp: int | None = None):
    with world.applied():
        return engine_launch("sglang", manifest, where, tp)


def at(directory: Path) -> Location:
    return Location(uri=directory.as_uri(), path=str(directory))


def test_sharded_artifact_resolves_to_launch_server_with_sharded_state(world, shard):
    s = shard("qwen3_qk_norm", 4)
    ref = str(s.manifest.ref)
    data = resolved(world, ref)
    assert data["artifact"] == {"name": s.manifest.name, "version": s.manifest.version}
    assert Path(data["model"]) == Path(data["path"]) == s.directory
    assert data["command"] == [
        *SERVER,
        "--model-path",
        str(s.directory),
        "--load-format",
        "sharded_state",
        "--tp-size",
        "4",
    ]
    assert resolved(world, ref, "-tp", "4")["command"] == data["command"]
    text = world.cli("resolve", ref, "--engine", "sglang").ok().stdout.splitlines()
    assert text[-1].split() == data["command"]


def test_a_mismatched_tp_is_refused(world, shard):
    s = shard("qwen3_qk_norm", 4)
    line = world.cli(
        "resolve", str(s.manifest.ref), "--engine", "sglang", "--tensor-parallel-size", "2"
    ).error_line()
    assert "is sharded for tensor-parallel size 4, not 2" in line
    assert "--tp-size 4" in line and "tp: 2" in line
    with pytest.raises(PreheatError, match="sharded for tensor-parallel size 4, not 8"):
        sglang_launch(world, s.manifest, at(s.directory), 8)


def test_remote_location_is_refused_with_a_hint_to_copy_it_first(world, shard):
    s = shard("qwen3_qk_norm", 4)
    for uri in ("s3://bucket/models/x", "gs://bucket/x", "az://container/x"):
        with pytest.raises(PreheatError, match="local directory only") as info:
            sglang_launch(world, s.manifest, Location(uri=uri, path=None, env={}))
        assert "--to DIR" in str(info.value)
    with pytest.raises(PreheatError, match="--to DIR"):
        sglang_launch(world, s.base, Location(uri="s3://bucket/base", path=None, env={}), 2)


def test_resolve_to_a_directory_gives_the_sharded_copy(world, shard, tmp_path):
    s = shard("llama_tied_mqa", 2)
    dest = tmp_path / "served"
    data = resolved(world, str(s.manifest.ref), "--to", str(dest))
    assert Path(data["model"]) == dest.resolve()
    assert data["args"] == [
        "--model-path", str(dest.resolve()), "--load-format", "sharded_state", "--tp-size", "2",
    ]  # fmt: skip
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.path for f in s.manifest.files)


def test_unsharded_artifact_resolves_to_the_plain_directory(world, shard):
    s = shard("llama_gqa", 2)
    data = resolved(world, str(s.base.ref))
    model = Path(data["model"])
    assert data["args"] == ["--model-path", str(model)]
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    tp4 = sglang_launch(world, s.base, at(model), 4)
    assert list(tp4.args) == ["--model-path", str(model), "--tp-size", "4"]


def test_custom_file_pattern_adds_the_loader_extra_config(world, shard):
    pattern = "sg-{rank}-of-tp-{part}.safetensors"
    s = shard("mistral_kv2", 4, file_pattern=pattern, max_file_size=150_000)
    data = resolved(world, str(s.manifest.ref))
    args = data["args"]
    assert args[:6] == [
        "--model-path", str(s.directory), "--load-format", "sharded_state", "--tp-size", "4",
    ]  # fmt: skip
    assert args[6] == "--model-loader-extra-config" and len(args) == 8
    # SGLang accepts only the "pattern" key there
    assert json.loads(args[7]) == {"pattern": pattern}
    # the default pattern needs no extra config
    plain = shard("mistral_kv2", 4)
    got = sglang_launch(world, plain.manifest, at(plain.directory))
    assert "--model-loader-extra-config" not in got.args


def test_dtype_and_context_length_are_passed_on(world, shard):
    s = shard("llama_gqa", 2, dtype="float16")
    got = sglang_launch(world, s.manifest, at(s.directory))
    assert list(got.args[-2:]) == ["--dtype", "float16"]
    s = shard("qwen2_bias", 2, context_length=256)
    got = sglang_launch(world, s.manifest, at(s.directory))
    assert list(got.args) == [
        "--model-path", str(s.directory), "--load-format", "sharded_state", "--tp-size", "2",
        "--context-length", "256",
    ]  # fmt: skip
    assert got.model == str(s.directory) and list(got.command) == SERVER
