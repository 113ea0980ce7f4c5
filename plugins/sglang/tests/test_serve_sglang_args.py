"""`SGLangAppEnvironment`'s command lines, parsed by argparse built from SGLang's own flags.

SGLang is CUDA-only (no build installs here), so its flags are pinned from SGLang 0.5.23's
`python/sglang/srt/server_args.py` (`ServerArgs.add_cli_args`) and the load formats from
`srt/configs/load_config.py` (data/sglang-0.5.23-server-flags.json: the flags preheat
writes and common ones). Every (sharded / unsharded) x (local / remote store) x
(stream_model) x (requires_auth) command is parsed by an `argparse` parser made from that
list, as SGLang parses it (abbreviations allowed, unknown flags refused).
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import pytest

from preheat.api import FileEntry, Location, Manifest, PreheatError, ServingFacts, ShardSpec, Source
from preheat_sglang import SGLangAppEnvironment

PINNED = json.loads(
    (Path(__file__).resolve().parent / "data" / "sglang-0.5.23-server-flags.json").read_text()
)
STORE = "s3://bucket/team"


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _Refused(message)


def sglang_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sglang.launch_server")
    seen = set()
    # aliases share a destination: --tensor-parallel-size / --tp-size, --model-path / --model
    aliases = [
        ("--tensor-parallel-size", "--tp-size"),
        ("--model-path", "--model"),
        ("--pipeline-parallel-size", "--pp-size"),
        ("--data-parallel-size", "--dp-size"),
    ]
    for names in aliases:
        spec = PINNED["flags"][names[0]]
        parser.add_argument(*names, choices=spec["choices"])
        seen.update(names)
    for flag, spec in PINNED["flags"].items():
        if flag in seen:
            continue
        if spec["nargs"] == 0:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, choices=spec["choices"])
    return parser


def manifest(sharded: bool) -> Manifest:
    shard = None
    if sharded:
        shard = ShardSpec(
            engine="sglang",
            tensor_parallel_size=2,
            dtype="auto",
            method="cpu",
            file_pattern="model-rank-{rank}-part-{part}.safetensors",
        )
    return Manifest(
        name="tiny",
        version="v1",
        created="2026-01-01T00:00:00Z",
        source=Source("hf", "org/tiny", "main", "0" * 40),
        files=(FileEntry("config.json", 2, "0" * 64),),
        serving=ServingFacts(weight_bytes=1000),
        shard=shard,
    )


def app_for(m: Manifest, remote: bool, **fields) -> SGLangAppEnvironment:
    local = "/data/store/artifacts/tiny/v1"
    where = (
        Location(uri=f"{STORE}/artifacts/tiny/v1", path=None, env={"AWS_REGION": "us-east-1"})
        if remote
        else Location(uri=local, path=local)
    )
    app = SGLangAppEnvironment(model_path="tiny", port=30000, **fields)
    app._resolved = types.SimpleNamespace(
        manifest=m,
        location=where,
        store=types.SimpleNamespace(url=STORE if remote else "/data/store"),
    )
    return app


CASES = [
    (sharded, remote, stream, auth)
    for sharded in (False, True)
    for remote in (False, True)
    for stream in (False, True)
    for auth in (False, True)
]


@pytest.mark.parametrize("sharded, remote, stream, auth", CASES)
def test_every_combination_parses_as_sglang_parses_it(sharded, remote, stream, auth):
    plan = app_for(manifest(sharded), remote, stream_model=stream, requires_auth=auth).plan()
    argv = list(plan.command.argv)
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    ns = sglang_parser().parse_args(argv[3:])
    # SGLang loads local directories only: a remote artifact is always a verified local copy
    assert plan.stream is False and (plan.local_copy is not None) is remote
    assert (
        ns.model_path == plan.command.model == (plan.local_copy or "/data/store/artifacts/tiny/v1")
    )
    assert ns.served_model_name == "tiny" and int(ns.port) == plan.engine_port
    assert ns.load_format == ("sharded_state" if sharded else None)
    assert ns.tensor_parallel_size == ("2" if sharded else None)
    assert ns.api_key is None, "the key is never on SGLang's command line"
    # behind the proxy (auth) SGLang listens on loopback only
    assert ns.host == ("127.0.0.1" if auth else "0.0.0.0")
    assert plan.command.env == {}
    if stream and remote:
        assert any("cannot stream" in n for n in plan.notes)


def test_extra_args_parse_and_tp_flags_are_checked():
    app = app_for(manifest(True), False, extra_args=["--tp", "2", "--mem-fraction-static", "0.8"])
    argv = list(app.plan().command.argv)
    ns = sglang_parser().parse_args(argv[3:])
    assert ns.tensor_parallel_size == "2" and argv.count("--tp-size") == 1 and "--tp" not in argv
    assert ns.mem_fraction_static == "0.8"
    with pytest.raises(PreheatError, match="--tp-size 4 contradicts the shard"):
        app_for(manifest(True), False, extra_args=["--tensor-parallel-size=4"]).plan()


def test_the_parser_refuses_what_sglang_refuses():
    parser = sglang_parser()
    with pytest.raises(_Refused):
        parser.parse_args(["--model-path", "x", "--no-such-flag"])
    with pytest.raises(_Refused):
        parser.parse_args(["--model-path", "x", "--load-format", "runai_streamer_sharded"])
