"""`VLLMAppEnvironment`'s command lines, checked against vLLM's own server argument parser.

Every combination of (sharded / unsharded) x (local / remote store) x (stream_model) x
(requires_auth) is built, then parsed:

- always against the flag list pinned from vLLM 0.32.0's parser
  (data/vllm-0.32.0-server-flags.json, written by vllm_parser.py);
- with the real parser of the installed vLLM when PREHEAT_VLLM_PYTHON names one
  (marker `conformance`), which also checks the pinned list still matches it.
"""

from __future__ import annotations

import json
import os
import subprocess
import types
from pathlib import Path

import pytest

from preheat.api import FileEntry, Location, Manifest, ServingFacts, ShardSpec, Source
from preheat_vllm import VLLMAppEnvironment
from preheat_vllm.resolver import API_SERVER

HERE = Path(__file__).resolve().parent
PINNED = json.loads((HERE / "data" / "vllm-0.32.0-server-flags.json").read_text())
PARSER = HERE / "vllm_parser.py"
STORE = "s3://bucket/team"
ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "us-east-1"}


def manifest(sharded: bool, **shard_args) -> Manifest:
    shard = None
    if sharded:
        shard = ShardSpec(
            engine="vllm",
            tensor_parallel_size=shard_args.pop("tp", 2),
            dtype=shard_args.pop("dtype", "auto"),
            method="cpu",
            file_pattern=shard_args.pop(
                "file_pattern", "model-rank-{rank}-part-{part}.safetensors"
            ),
            args=shard_args,
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


def app_for(m: Manifest, remote: bool, **fields) -> VLLMAppEnvironment:
    local = "/data/store/artifacts/tiny/v1"
    where = (
        Location(uri=f"{STORE}/artifacts/tiny/v1", path=None, env=dict(ENV))
        if remote
        else Location(uri=local, path=local)
    )
    app = VLLMAppEnvironment(model_path="tiny", port=8000, **fields)
    app._resolved = types.SimpleNamespace(
        manifest=m,
        location=where,
        store=types.SimpleNamespace(url=STORE if remote else "/data/store"),
    )
    return app


def combinations():
    for sharded in (False, True):
        for remote in (False, True):
            for stream in (False, True):
                for auth in (False, True):
                    yield sharded, remote, stream, auth


CASES = list(combinations())
IDS = [
    "-".join(
        [
            "sharded" if s else "unsharded",
            "remote" if r else "local",
            "stream" if st else "copy",
            "auth" if a else "open",
        ]
    )
    for s, r, st, a in CASES
]


def build(sharded: bool, remote: bool, stream: bool, auth: bool):
    m = manifest(sharded)
    plan = app_for(m, remote, stream_model=stream, requires_auth=auth).plan()
    argv = list(plan.command.argv)
    assert argv[1:3] == ["-m", API_SERVER]
    return plan, argv[3:]


def expected(plan, sharded: bool) -> dict:
    streams = plan.stream
    load_format = {
        (False, False): "auto",
        (False, True): "runai_streamer",
        (True, False): "sharded_state",
        (True, True): "runai_streamer_sharded",
    }[(sharded, streams)]
    return {
        "model": plan.command.model,
        "served_model_name": ["tiny"],
        "host": plan.engine_host,
        "port": plan.engine_port,
        "load_format": load_format,
        "tensor_parallel_size": 2 if sharded else 1,
        "api_key": None,
    }


def parse_pinned(args: list[str]) -> dict:
    """A strict parse of `args` with the pinned flag list (unknown flags and arities fail)."""
    flags = PINNED["flags"]
    out: dict = {
        "load_format": "auto", "tensor_parallel_size": 1, "api_key": None,
        "host": None, "port": 8000, "served_model_name": None, "model": None,
    }  # fmt: skip
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        assert flag in flags, f"vLLM {PINNED['version']} has no flag {flag}"
        nargs = flags[flag]["nargs"]
        values: list[str] = []
        if inline:
            values = [inline]
        elif nargs in (1, "?"):
            values = [args[i + 1]] if i + 1 < len(args) and not args[i + 1].startswith("-") else []
            assert values or nargs == "?", f"{flag} needs a value"
            i += len(values)
        elif nargs in ("+", "*"):
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                values.append(args[i + 1])
                i += 1
            assert values or nargs == "*", f"{flag} needs values"
        choices = flags[flag]["choices"]
        assert not choices or all(v in choices for v in values), (flag, values, choices)
        key = flag.lstrip("-").replace("-", "_")
        if key == "tp":
            key = "tensor_parallel_size"
        if key in out:
            value = values if nargs in ("+", "*") else (values[0] if values else None)
            out[key] = int(value) if key in ("port", "tensor_parallel_size") else value
        i += 1
    assert out["load_format"] in PINNED["load_formats"], out["load_format"]
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_combination_parses_with_the_pinned_flags(case):
    plan, args = build(*case)
    parsed = parse_pinned(args)
    assert {k: parsed[k] for k in expected(plan, case[0])} == expected(plan, case[0])


def test_extra_args_and_shard_options_parse_too():
    m = manifest(
        True, tp=4, dtype="float16", file_pattern="w-{rank}-{part}.safetensors", max_model_len=256
    )
    app = app_for(m, False, extra_args=["--enforce-eager", "--max-num-seqs", "4", "-tp", "4"])
    args = list(app.plan().command.argv)[3:]
    parsed = parse_pinned(args)
    assert parsed["tensor_parallel_size"] == 4 and args.count("--tensor-parallel-size") == 1
    assert "--model-loader-extra-config" in args and "--enforce-eager" in args


# --------------------------------------------------------------------------- the real parser


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("PREHEAT_VLLM_PYTHON")
    if not python:
        if os.environ.get("PREHEAT_REQUIRE_CONFORMANCE") == "1":
            pytest.fail("PREHEAT_VLLM_PYTHON is not set (PREHEAT_REQUIRE_CONFORMANCE=1)")
        pytest.skip("PREHEAT_VLLM_PYTHON is not set: vLLM's own parser is not available")
    return python


def run_parser(python: str, *args: str, stdin: str | None = None):
    done = subprocess.run(
        [python, str(PARSER), *args], input=stdin, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.conformance
def test_every_combination_parses_with_vllms_own_parser(vllm_python):
    built = [build(*case) for case in CASES]
    m = manifest(
        True, tp=4, dtype="float16", file_pattern="w-{rank}-{part}.safetensors", max_model_len=256
    )
    extra = app_for(m, False, extra_args=["--enforce-eager", "-tp", "4"]).plan()
    results = run_parser(
        vllm_python,
        "parse",
        stdin=json.dumps([a for _, a in built] + [list(extra.command.argv)[3:]]),
    )
    for (plan, args), case, result in zip(built, CASES, results, strict=False):
        assert result["ok"], (args, result)
        got = {k: result["args"][k] for k in expected(plan, case[0])}
        assert got == expected(plan, case[0]), args
    last = results[-1]
    assert last["ok"] and last["args"]["tensor_parallel_size"] == 4
    assert last["args"]["model_loader_extra_config"] == {"pattern": "w-{rank}-{part}.safetensors"}
    assert (
        last["args"]["dtype"],
        last["args"]["max_model_len"],
        last["args"]["enforce_eager"],
    ) == ("float16", 256, True)


@pytest.mark.conformance
def test_the_pinned_flags_match_the_installed_vllm(vllm_python):
    real = run_parser(vllm_python, "flags")
    if real["version"] == PINNED["version"]:
        assert real == PINNED, "regenerate data/vllm-*-server-flags.json with vllm_parser.py flags"
    used = {"--model", "--served-model-name", "--host", "--port", "--load-format",
            "--tensor-parallel-size", "-tp", "--model-loader-extra-config", "--dtype",
            "--max-model-len", "--gpu-memory-utilization"}  # fmt: skip
    assert used <= set(real["flags"]), sorted(used - set(real["flags"]))
    assert {"sharded_state", "runai_streamer", "runai_streamer_sharded"} <= set(
        real["load_formats"]
    )
