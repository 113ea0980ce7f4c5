"""Serving, before anything starts: references, the checks, the plan (no engine, no process)."""

from __future__ import annotations

import json
import os
import types

import attrs
import pytest
from serve_support import FakeApp, publish

import preheat
from preheat.api import Location, NotFound, PreheatError, resolve_artifact
from preheat.app import Resources, RunOutput, Scaling
from preheat_sglang import SGLangAppEnvironment
from preheat_vllm import VLLMAppEnvironment

GiB = 2**30


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh PREHEAT_HOME whose default store is empty."""
    monkeypatch.setenv("PREHEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREHEAT_CONFIG", str(tmp_path / "config.toml"))
    for name in ("PREHEAT_STORE", "PREHEAT_VLLM_PYTHON", "PREHEAT_SGLANG_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(home) -> str:
    return str(home / "store")


def save_run(store: str, name: str, status: str, artifact=None) -> None:
    from preheat.catalog import Catalog, now_iso
    from preheat.config import open_store
    from preheat.models import PrefetchRequest, RunRecord

    Catalog(open_store(store)).save_run(
        RunRecord(
            name=name,
            status=status,
            request=PrefetchRequest(repo="org/tiny"),
            created=now_iso(),
            store=store,
            artifact=artifact,
            stage="download" if status == "running" else None,
        )
    )


# --------------------------------------------------------------------------- references


def test_a_name_resolves_to_latest_and_stays_pinned(store):
    first = publish(store, "tiny", version="v1")
    app = VLLMAppEnvironment(model_path="tiny", requires_auth=False)
    assert app.plan().manifest.version == "v1"
    publish(store, "tiny", version="v2", files={"config.json": b"{}"})
    assert app.plan().manifest.version == "v1", "a resolved app never moves to a newer version"
    assert app.plan().command.model.endswith("/artifacts/tiny/v1")
    assert VLLMAppEnvironment(model_path="tiny").plan().manifest.version == "v2"
    assert VLLMAppEnvironment(model_path="tiny:v1").plan().manifest == first


def test_every_kind_of_reference_resolves_through_one_function(store):
    from preheat.models import ArtifactRef

    m = publish(store, "tiny", version="v1")
    save_run(store, "r20260101-000000-aaaaaa", "succeeded", ArtifactRef("tiny", "v1"))
    directory = os.path.join(store, "artifacts", "tiny", "v1")
    refs = [
        "tiny",
        "tiny:v1",
        "tiny:latest",
        RunOutput(type="directory", run_name="r20260101-000000-aaaaaa"),
        directory,
        directory + "/",
        "file://" + directory,
    ]
    for ref in refs:
        manifest, where = resolve_artifact(ref)
        assert manifest == m, ref
        assert where.path == directory, ref
    # a run's output serves its exact version even when `latest` moved on
    publish(store, "tiny", version="v2", files={"config.json": b"{}"})
    out = RunOutput(type="directory", run_name="r20260101-000000-aaaaaa")
    assert resolve_artifact(out)[0].version == "v1"
    assert VLLMAppEnvironment(model_path=out).plan().manifest.version == "v1"


def test_a_store_uri_names_its_store():
    pytest.importorskip("preheat_storage")
    m = publish("memory://serve-refs/team", "tiny", version="v1")
    manifest, where = resolve_artifact("memory://serve-refs/team/artifacts/tiny/v1")
    assert manifest == m and where.path is None
    assert where.uri == "memory://serve-refs/team/artifacts/tiny/v1"


def test_unknown_references_fail_in_one_line(store):
    publish(store, "tiny", version="v1")
    with pytest.raises(NotFound, match=r"artifact nope:latest not found"):
        VLLMAppEnvironment(model_path="nope").plan()
    with pytest.raises(NotFound, match=r"tiny:v9 not found .*versions: v1"):
        VLLMAppEnvironment(model_path="tiny:v9").plan()
    with pytest.raises(NotFound, match="does not exist"):
        VLLMAppEnvironment(model_path="./no/such/dir").plan()
    with pytest.raises(PreheatError, match="not an artifact of a preheat store"):
        VLLMAppEnvironment(model_path=store).plan()
    with pytest.raises(NotFound, match="no manifest for tiny:v7"):
        VLLMAppEnvironment(model_path=os.path.join(store, "artifacts", "tiny", "v7")).plan()
    with pytest.raises(PreheatError, match="needs model_path="):
        VLLMAppEnvironment()


def test_an_artifact_still_being_written_names_its_run(store):
    from preheat.config import open_store

    publish(store, "other", version="v1")
    lease = {"run": "r20260101-000000-bbbbbb", "host": "h", "pid": 1, "heartbeat": 0}
    open_store(store).put("staging/tiny/v3/lease.json", json.dumps(lease).encode())
    for ref in ("tiny", "tiny:v3", os.path.join(store, "artifacts", "tiny", "v3")):
        with pytest.raises(
            PreheatError, match="still being written by run r20260101-000000-bbbbbb"
        ):
            VLLMAppEnvironment(model_path=ref).plan()
    save_run(store, "r20260101-000000-cccccc", "running")
    with pytest.raises(PreheatError, match=r"still running \(download\).*preheat runs wait"):
        VLLMAppEnvironment(model_path=RunOutput(run_name="r20260101-000000-cccccc")).plan()
    save_run(store, "r20260101-000000-dddddd", "failed")
    with pytest.raises(PreheatError, match="has no artifact to serve: it failed"):
        VLLMAppEnvironment(model_path=RunOutput(run_name="r20260101-000000-dddddd")).plan()


# --------------------------------------------------------------------------- the checks


def test_a_shard_for_the_other_engine_is_refused(store):
    publish(store, "tiny", shard={"engine": "sglang", "tp": 2})
    with pytest.raises(PreheatError, match=r"pre-sharded for sglang, not vllm.*--engine sglang"):
        VLLMAppEnvironment(model_path="tiny").plan()
    publish(store, "tiny2", shard={"engine": "vllm", "tp": 2})
    with pytest.raises(PreheatError, match="pre-sharded for vllm, not sglang"):
        SGLangAppEnvironment(model_path="tiny2").plan()


@pytest.mark.parametrize(
    "extra, field, match",
    [
        (["--tensor-parallel-size", "4"], None, r"extra_args --tensor-parallel-size 4 contradicts the shard.*size 2"),
        (["-tp=4"], None, "extra_args --tensor-parallel-size 4 contradicts the shard"),
        ([], 4, r"tensor_parallel_size=4 \(--tp\) contradicts the shard"),
        (["-tp", "2"], 4, "extra_args --tensor-parallel-size 2 contradicts tensor_parallel_size=4"),
        (["-tp", "2", "-tp", "3"], None, "more than once with different values"),
        (["-tp", "two"], None, "is not a number"),
    ],
)  # fmt: skip
def test_a_contradictory_tensor_parallel_size_is_refused(store, extra, field, match):
    publish(store, "tiny", shard={"engine": "vllm", "tp": 2})
    app = VLLMAppEnvironment(model_path="tiny", extra_args=extra, tensor_parallel_size=field)
    with pytest.raises(PreheatError, match=match):
        app.plan()


def test_the_matching_tensor_parallel_size_is_given_once(store):
    publish(store, "tiny", shard={"engine": "vllm", "tp": 2})
    argv = VLLMAppEnvironment(model_path="tiny", extra_args=["-tp", "2"]).command()
    assert argv.count("--tensor-parallel-size") == 1 and "-tp" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"


def test_gpus_must_be_one_per_rank_and_hold_the_weights(store):
    facts = {"weight_bytes": 60 * GiB, "weight_bytes_per_rank": 30 * GiB}
    publish(store, "big", shard={"engine": "vllm", "tp": 2}, serving=facts)
    app = VLLMAppEnvironment(model_path="big", resources=Resources(gpu="L40s:4"))
    with pytest.raises(PreheatError, match=r'gpu=L40s:4 does not match.*size 2.*use gpu="L40s:2"'):
        app.plan()
    app = VLLMAppEnvironment(model_path="big", resources=Resources(gpu="L4:2"))
    with pytest.raises(PreheatError, match=r"needs 30.0 GiB of weights per GPU.*L4 gives vllm"):
        app.plan()
    # vLLM's own memory share counts: 30 GiB fit a 48 GiB L40s at 0.9, not at 0.5
    assert VLLMAppEnvironment(model_path="big", resources=Resources(gpu="L40s:2")).plan()
    app = VLLMAppEnvironment(
        model_path="big",
        resources=Resources(gpu="L40s:2"),
        extra_args=["--gpu-memory-utilization", "0.5"],
    )
    with pytest.raises(PreheatError, match="50% of 48.0 GiB"):
        app.plan()
    # unsharded: one rank per GPU asked for, the weights split over them
    publish(store, "plain", serving={"weight_bytes": 60 * GiB})
    plan = VLLMAppEnvironment(model_path="plain", resources=Resources(gpu="H100:4")).plan()
    assert plan.tensor_parallel_size == 4
    assert "--tensor-parallel-size" in plan.command.argv and any(
        "one rank per GPU" in n for n in plan.notes
    )
    with pytest.raises(
        PreheatError, match="needs 60.0 GiB of weights per GPU at tensor-parallel size 1"
    ):
        VLLMAppEnvironment(model_path="plain", resources=Resources(gpu="A100:1")).plan()


def test_disk_must_hold_a_copied_artifact():
    pytest.importorskip("preheat_storage")
    m = publish("memory://serve-disk/s", "tiny", files={"model.safetensors": b"x" * 4096})
    ref = f"memory://serve-disk/s/artifacts/tiny/{m.version}"
    app = VLLMAppEnvironment(model_path=ref, resources=Resources(disk="1Ki"))
    with pytest.raises(
        PreheatError, match=r"disk=1Ki is smaller than .*4.0 KiB.*stream_model=True"
    ):
        app.plan()
    # vLLM cannot stream from memory:// either: still copied, still refused, with a note
    app = VLLMAppEnvironment(model_path=ref, resources=Resources(disk="1Ki"), stream_model=True)
    with pytest.raises(PreheatError, match="disk=1Ki is smaller"):
        app.plan()
    plan = VLLMAppEnvironment(model_path=ref, stream_model=True).plan()
    assert plan.local_copy and not plan.stream
    assert any("cannot stream from memory://" in n for n in plan.notes)
    assert plan.command.model == plan.local_copy


@pytest.mark.parametrize(
    "app_class, extra, match",
    [
        (VLLMAppEnvironment, ["--port", "9"], r"must not set --port: set port="),
        (VLLMAppEnvironment, ["--api-key=abc"], "never on a command line"),
        (VLLMAppEnvironment, ["--model", "x"], "set model_path="),
        (VLLMAppEnvironment, ["--served-model-name", "x"], "set model_id="),
        (SGLangAppEnvironment, ["--api-key", "abc"], "proxy check a generated key"),
        (SGLangAppEnvironment, ["--host=0.0.0.0"], "set host="),
    ],
)
def test_flags_preheat_sets_are_refused_in_extra_args(store, app_class, extra, match):
    publish(store, "tiny")
    with pytest.raises(PreheatError, match=match):
        app_class(model_path="tiny", extra_args=extra).plan()


def test_a_load_format_that_cannot_load_a_shard_is_refused(store):
    publish(store, "tiny", shard={"engine": "vllm", "tp": 2})
    app = VLLMAppEnvironment(model_path="tiny", extra_args=["--load-format", "safetensors"])
    with pytest.raises(PreheatError, match="pre-sharded: it loads only with sharded_state"):
        app.plan()


def test_bad_fields_fail_when_the_app_is_made(store):
    with pytest.raises(PreheatError, match=r"replicas"):
        Scaling(replicas=(2, 1))
    with pytest.raises(PreheatError, match="scaledown_after"):
        Scaling(replicas=(0, 1), scaledown_after=0)
    with pytest.raises(PreheatError, match="invalid accelerator"):
        preheat.Resources(gpu="L40s:x")
    with pytest.raises(PreheatError, match="invalid memory"):
        preheat.Resources(memory="lots")
    with pytest.raises(PreheatError, match="list of arguments"):
        VLLMAppEnvironment(model_path="tiny", extra_args="--enforce-eager")
    with pytest.raises(PreheatError, match="invalid port"):
        VLLMAppEnvironment(model_path="tiny", port=70000)
    with pytest.raises(PreheatError, match="model= and model_path= name different"):
        VLLMAppEnvironment(model="a", model_path="b")
    publish(store, "tiny")
    app = VLLMAppEnvironment(model_path="tiny", scaling=Scaling(replicas=(0, 3)))
    with pytest.raises(PreheatError, match=r"replicas=\(0, 3\).*maximum is 1"):
        app.plan()
    assert Scaling(replicas=1).replicas == (1, 1)
    assert Scaling(replicas=(0, 1), scaledown_after="10m").scaledown_after == 600


def test_the_seed_fields_and_the_older_ones_both_work(store):
    m = publish(store, "tiny", shard={"engine": "vllm", "tp": 2})
    old = VLLMAppEnvironment(
        model="tiny",
        store=store,
        tensor_parallel_size=2,
        port=8123,
        extra_args=("--enforce-eager",),
    )
    assert old.model_path == "tiny" and old.model == "tiny"
    argv = old.command()
    assert argv[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", argv[4]]
    assert argv[argv.index("--load-format") + 1] == "sharded_state"
    assert argv[-1] == "--enforce-eager"
    assert old.env() == {}
    assert old.launch().args == ("--load-format", "sharded_state", "--tensor-parallel-size", "2")
    seed = VLLMAppEnvironment(
        name="qwen-serving-app",
        model_path="tiny",
        model_id="qwen3-0.6b",
        resources=preheat.Resources(cpu="4", memory="16Gi", gpu="L40s:2", disk="10Gi"),
        stream_model=True,
        extra_args=[],
        scaling=preheat.app.Scaling(replicas=(0, 1), scaledown_after=600),
        requires_auth=True,
    )
    plan = seed.plan()
    assert (plan.app_name, plan.served_model_name, plan.manifest) == (
        "qwen-serving-app",
        "qwen3-0.6b",
        m,
    )
    assert plan.proxy and plan.auth and plan.min_replicas == 0 and plan.scaledown_after == 600
    assert plan.engine_host == "127.0.0.1" and plan.engine_port != plan.port
    assert any("store is local" in n for n in plan.notes)


# --------------------------------------------------------------------------- the plan


def fake_resolved(app, manifest, where: Location, store_url: str = "s3://bucket/team"):
    app._resolved = types.SimpleNamespace(
        manifest=manifest, location=where, store=types.SimpleNamespace(url=store_url)
    )
    return app


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
@pytest.mark.parametrize("stream", [False, True], ids=["copy", "stream"])
@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
def test_every_combination_gives_a_consistent_plan(store, engine, sharded, remote, stream, auth):
    """What each engine gets, for every (sharded, store, stream_model, requires_auth).

    The engines' own argument parsers check these command lines in the plugins' tests.
    """
    cls = VLLMAppEnvironment if engine == "vllm" else SGLangAppEnvironment
    manifest = publish(store, "tiny", shard={"engine": engine, "tp": 2} if sharded else None)
    local = os.path.join(store, "artifacts", "tiny", manifest.version)
    uri = f"s3://bucket/team/artifacts/tiny/{manifest.version}"
    env = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    where = Location(uri=uri, path=None, env=env) if remote else Location(uri=local, path=local)
    app = cls(model_path="x", stream_model=stream, requires_auth=auth, port=8001)
    plan = fake_resolved(app, manifest, where).plan()
    argv = list(plan.command.argv)

    streams = engine == "vllm" and remote and stream
    assert plan.stream is streams
    assert (plan.local_copy is not None) is (remote and not streams)
    model = uri if streams else (plan.local_copy or local)
    assert plan.command.model == model
    flag = "--model" if engine == "vllm" else "--model-path"
    assert argv[argv.index(flag) + 1] == model
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--port") + 1] == str(plan.engine_port)
    host = argv[argv.index("--host") + 1]
    assert (host, plan.proxy) == (("127.0.0.1", True) if auth else ("0.0.0.0", False))
    assert plan.url == "http://127.0.0.1:8001"
    formats = [argv[i + 1] for i, a in enumerate(argv) if a == "--load-format"]
    if engine == "vllm":
        expected = {
            (False, False): [],
            (False, True): ["runai_streamer"],
            (True, False): ["sharded_state"],
            (True, True): ["runai_streamer_sharded"],
        }[(sharded, streams)]
    else:
        expected = ["sharded_state"] if sharded else []
    assert formats == expected
    tp_flag = "--tensor-parallel-size" if engine == "vllm" else "--tp-size"
    assert (tp_flag in argv) is sharded
    # streaming settings only when streaming; the key never on the command line
    if streams:
        assert plan.command.env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
        assert plan.command.env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    else:
        assert plan.command.env == {}
    assert not any("api-key" in a or "api_key" in a for a in argv)
    shown = plan.shown_env()
    assert ("VLLM_API_KEY" in shown) is (auth and engine == "vllm")
    assert all(v == "***" for k, v in shown.items() if "KEY" in k)


def test_core_serves_an_engine_no_plugin_registered(store):
    """The serving core names no engine: an app environment is all it needs."""
    publish(store, "tiny")
    plan = FakeApp(model_path="tiny", requires_auth=False, port=8002).plan()
    assert plan.engine == "fake" and plan.command.argv[1].endswith("run_fake.py")
    assert plan.command.env == {"FAKE_PLAN_VAR": "1"} and not plan.proxy


def test_serving_core_never_names_an_engine():
    import pathlib

    import preheat.serving as pkg

    roots = [pathlib.Path(pkg.__file__).parent, pathlib.Path(preheat.app.__file__)]
    roots.append(pathlib.Path(preheat.__file__).parent / "references.py")
    roots.append(pathlib.Path(preheat.__file__).parent / "cli" / "serve.py")
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.glob("*.py")):
            text = path.read_text().lower()
            for word in ("vllm", "sglang"):
                assert word not in text, f"{path} names {word}"


def test_the_resources_record_is_the_serving_one():
    r = preheat.Resources(cpu="4", memory="16Gi", gpu="L40s:4", disk="100Gi")
    assert (r.gpus, r.disk_bytes) == (("L40s", 4), 100 * GiB)
    assert attrs.fields_dict(type(r)).keys() == {"cpu", "memory", "gpu", "disk"}
    assert preheat.Resources is preheat.app.Resources
