"""`preheat resolve REF --engine vllm`: launch arguments for sharded, unsharded and remote artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import pytest

from preheat.api import Location, PreheatError
from preheat_testing.core import engine_launch

S3_ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "us-east-1"}


def server(model: str, env=os.environ) -> list[str]:
    """The command prefix that starts vLLM's server on every build (the CPU build included).

    The interpreter is `$PREHEAT_VLLM_PYTHON` where the command was resolved, else `python`.
    """
    python = env.get("PREHEAT_VLLM_PYTHON") or "python"
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]


def resolve_json(world, ref: str, *extra: str) -> dict:
    data = world.cli("resolve", ref, "--engine", "vllm", "--json", *extra).ok().json
    assert data["engine"] == "vllm"
    assert data["command"] == [*server(data["model"], world.env), *data["args"]]
    return data


def test_sharded_artifact_resolves_to_sharded_state_at_its_tp(world, shard):
    s = shard("llama_gqa", 2)
    ref = str(s.manifest.ref)
    data = resolve_json(world, ref)
    assert data["artifact"] == {"name": s.manifest.name, "version": s.manifest.version}
    assert Path(data["model"]) == Path(data["path"]) == s.directory
    assert data["args"] == ["--load-format", "sharded_state", "--tensor-parallel-size", "2"]
    assert data["env"] == {}
    # naming the matching tp changes nothing
    assert resolve_json(world, ref, "-tp", "2")["args"] == data["args"]
    # `latest` of the name is this sharded version when it was the last one published
    plain = world.cli("resolve", ref, "--engine", "vllm").ok()
    assert plain.stdout.splitlines()[-1].split() == [
        *server(str(s.directory), world.env),
        *data["args"],
    ]


def test_a_mismatched_tp_is_refused(world, shard):
    s = shard("llama_gqa", 2)
    error = world.cli(
        "resolve", str(s.manifest.ref), "--engine", "vllm", "--tensor-parallel-size", "4"
    ).error_line()
    assert "sharded for tensor-parallel size 2, not 4" in error
    assert "-tp 2" in error and "tensor_parallel_size: 4" in error


def test_unsharded_artifact_resolves_to_the_plain_directory(world, shard):
    s = shard("llama_gqa", 2)
    base = str(s.base.ref)
    data = resolve_json(world, base)
    assert data["args"] == [] and data["env"] == {}
    assert Path(data["model"]).is_dir() and (Path(data["model"]) / "model.safetensors").is_file()
    assert resolve_json(world, base, "-tp", "4")["args"] == ["--tensor-parallel-size", "4"]


def test_resolve_to_a_directory_gives_a_loadable_sharded_copy(world, shard, tmp_path):
    s = shard("qwen2_bias", 2)
    dest = tmp_path / "served"
    data = resolve_json(world, str(s.manifest.ref), "--to", str(dest))
    assert Path(data["model"]) == dest.resolve()
    assert data["args"] == ["--load-format", "sharded_state", "--tensor-parallel-size", "2"]
    copied = sorted(p.name for p in dest.iterdir())
    assert copied == sorted(f.path for f in s.manifest.files)


def launch(world, manifest, where: Location, tp: int | None = None):
    with world.applied():
        return engine_launch("vllm", manifest, where, tp)


def local(world, manifest) -> Location:
    return Location(uri=str(world.directory(manifest)), path=str(world.directory(manifest)))


def test_custom_file_pattern_adds_the_loader_pattern(world, shard):
    pattern = "weights-r{rank}-p{part}.safetensors"
    s = shard("mistral_kv2", 4, file_pattern=pattern, max_file_size=200_000)
    got = launch(world, s.manifest, local(world, s.manifest))
    assert list(got.args[:4]) == ["--load-format", "sharded_state", "--tensor-parallel-size", "4"]
    i = got.args.index("--model-loader-extra-config")
    assert json.loads(got.args[i + 1]) == {"pattern": pattern}


def test_dtype_and_max_model_len_are_passed_on(world, shard):
    s = shard("llama_gqa", 2, dtype="float16")
    got = launch(world, s.manifest, local(world, s.manifest))
    assert list(got.args) == [
        "--load-format", "sharded_state", "--tensor-parallel-size", "2", "--dtype", "float16",
    ]  # fmt: skip
    s = shard("llama_gqa", 2, max_model_len=128)
    assert s.manifest.shard.args == {"max_model_len": 128}
    got = launch(world, s.manifest, local(world, s.manifest))
    assert list(got.args) == [
        "--load-format", "sharded_state", "--tensor-parallel-size", "2", "--max-model-len", "128",
    ]  # fmt: skip


@pytest.mark.parametrize("uri", ["s3://b/x", "gs://b/x"])
def test_remote_sharded_artifact_streams_with_runai_streamer_sharded(world, shard, uri):
    s = shard("llama_gqa", 2)
    got = launch(world, s.manifest, Location(uri=uri, path=None, env=dict(S3_ENV)))
    assert got.model == uri and list(got.command) == server(uri, world.env)
    assert list(got.args) == [
        "--load-format", "runai_streamer_sharded", "--tensor-parallel-size", "2",
    ]  # fmt: skip
    assert got.env == {**S3_ENV, "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
    with pytest.raises(PreheatError, match="sharded for tensor-parallel size 2, not 1"):
        launch(world, s.manifest, Location(uri=uri, path=None, env={}), 1)


def test_remote_unsharded_artifact_streams_with_runai_streamer(world, shard):
    s = shard("llama_gqa", 2)
    where = Location(
        uri="s3://b/x", path=None, env={"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "1"}
    )
    got = launch(world, s.base, where, 2)
    assert got.model == "s3://b/x"
    assert list(got.args) == ["--load-format", "runai_streamer", "--tensor-parallel-size", "2"]
    # a store that asks for virtual addressing keeps it
    assert got.env == {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "1"}


def test_a_store_vllm_cannot_stream_from_is_refused(world, shard):
    s = shard("llama_gqa", 2)
    where = Location(uri="az://container/x", path=None, env={})
    with pytest.raises(PreheatError, match=r"cannot stream from az://.*--to DIR"):
        launch(world, s.manifest, where)


def test_an_sglang_sharded_artifact_is_refused(world, shard):
    s = shard("llama_gqa", 2)
    sglang = attrs.evolve(s.manifest, shard=attrs.evolve(s.manifest.shard, engine="sglang"))
    with pytest.raises(PreheatError, match="pre-sharded for sglang, not vllm") as info:
        launch(world, sglang, local(world, s.manifest))
    assert "engine: vllm" in str(info.value)
    with pytest.raises(PreheatError, match="pre-sharded for sglang"):
        launch(world, sglang, Location(uri="s3://b/x", path=None, env={}))
