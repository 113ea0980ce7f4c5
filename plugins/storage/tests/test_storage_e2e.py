"""End to end against real object stores: the `preheat` CLI, its workers, moto, SeaweedFS, Azurite.

A model is prefetched from a loopback hub into each store, read back with obstore directly,
browsed from a second machine with no local state, reused without hub traffic, materialised
and resolved for vLLM; two machines race for the same artifact; a tp=2 vLLM shard is built
from an artifact that only exists in S3 and checked by a simulated tensor-parallel forward.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from preheat_testing import servers
from preheat_testing.hub import Fault
from preheat_testing.models import forward, load_safetensors

REMOTE = [
    pytest.param("moto", marks=pytest.mark.s3),
    pytest.param("seaweedfs", marks=pytest.mark.s3),
    pytest.param("azurite", marks=pytest.mark.azure),
]
SECRET_ENV = ("SECRET", "ACCOUNT_KEY", "SESSION_TOKEN", "SAS", "CONNECTION_STRING", "PASSWORD")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Published:
    """A model prefetched with `preheat prefetch ... --store URL --wait --json` on machine one."""

    def __init__(self, e2e, server, url, repo, model, summary, requests) -> None:
        self.e2e, self.server, self.url = e2e, server, url
        self.repo, self.model, self.summary, self.requests = repo, model, summary, requests
        artifact = summary["artifact"]
        self.name, self.version = artifact["name"], artifact["version"]
        self.prefix = f"artifacts/{self.name}/{self.version}/"

    @property
    def weights(self) -> dict[str, bytes]:
        return {p: b for p, b in self.model.files.items() if p.endswith(".safetensors")}


@pytest.fixture(scope="module", params=REMOTE)
def published(request, e2e) -> Published:
    server = e2e.server(request.param)
    repo, model = e2e.repo("llama_multipart")
    url = e2e.url(server, f"main-{server.name}")
    mark = e2e.mark()
    result = e2e.machine(server).cli(
        "prefetch", "hf-model", repo, "--store", url, "--wait", "--json"
    )
    summary = result.ok().json
    return Published(e2e, server, url, repo, model, summary, e2e.repo_requests(repo, mark))


def _assert_stored_files(e2e, server, url: str, prefix: str, files: dict[str, bytes]) -> None:
    """The objects under `prefix` are exactly `files`, byte for byte."""
    stored = {
        k[len(prefix) :]: n for k, n in e2e.objects(server, url).items() if k.startswith(prefix)
    }
    assert stored == {p: len(b) for p, b in files.items()}
    for path, data in files.items():
        assert e2e.read(server, url, prefix + path) == data, f"{path} differs from the hub's copy"


def _full_downloads(requests) -> dict[str, int]:
    """Bytes per weight file served by body downloads (not bounded header probes)."""
    out: dict[str, int] = {}
    for r in requests:
        probe = r.range is not None and not r.range.endswith("-")
        if not probe:
            out[r.file] = out.get(r.file, 0) + r.body_bytes
    return out


# --------------------------------------------------------------------------- one machine


def test_prefetch_writes_the_hub_files_to_the_store(published):
    p, e2e = published, published.e2e
    assert p.summary["status"] == "succeeded" and p.summary["reused"] is False
    uri = f"{p.url}/artifacts/{p.name}/{p.version}"
    assert p.summary["artifact"]["uri"] == p.summary["artifact"]["path"] == uri
    assert p.summary["outputs"] == [{"path": uri}]

    _assert_stored_files(e2e, p.server, p.url, p.prefix, p.model.files)

    keys = e2e.objects(p.server, p.url)
    manifest = json.loads(e2e.read(p.server, p.url, f"manifests/{p.name}/{p.version}.json"))
    assert manifest["source"]["repo"] == p.repo
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        path: (len(data), sha256(data)) for path, data in p.model.files.items()
    }
    alias = json.loads(e2e.read(p.server, p.url, f"aliases/{p.name}/latest.json"))
    assert alias["version"] == p.version
    run = p.summary["run"]
    record = json.loads(e2e.read(p.server, p.url, f"runs/{run}.json"))
    assert record["status"] == "succeeded" and record["store"] == p.url
    assert record["artifact"] == {"name": p.name, "version": p.version}
    assert f"runs/{run}.log" in keys
    # no lease, journal or other leftovers once published
    assert not [k for k in keys if k.startswith("staging/")]
    # each weight byte came from the hub once
    weights = [r for r in p.requests if r.file in p.weights and r.status in (200, 206)]
    assert _full_downloads(weights) == {path: len(b) for path, b in p.weights.items()}


def test_catalog_commands_read_the_store(published):
    p, e2e = published, published.e2e
    run = p.summary["run"]
    store = ("--store", p.url)
    machine = e2e.machine(p.server)
    # as subprocesses on one server; in this process (the same CLI code, faster) on the others
    run_all = machine.many if p.server.name == "seaweedfs" else machine.many_in_process
    listed, got, runs, one_run, logs = run_all(
        ("artifacts", "list", *store, "--json"),
        ("artifacts", "get", p.name, *store, "--json"),
        ("runs", "list", *store, "--json"),
        ("runs", "get", run, *store, "--json"),
        ("runs", "logs", run, *store),
    )
    rows = listed.ok().json["artifacts"]
    assert [(r["name"], r["version"], r["latest"], r["repo"]) for r in rows] == [
        (p.name, p.version, True, p.repo)
    ]
    assert rows[0]["bytes"] == sum(len(b) for b in p.model.files.values())
    manifest = got.ok().json
    assert (manifest["name"], manifest["version"]) == (p.name, p.version)
    assert manifest["uri"] == manifest["path"] == f"{p.url}/artifacts/{p.name}/{p.version}"
    assert manifest["metadata"]["architecture"] == "LlamaForCausalLM"
    assert [r["name"] for r in runs.ok().json["runs"]] == [run]
    record = one_run.ok().json
    assert record["status"] == "succeeded" and record["request"]["repo"] == p.repo
    text = logs.ok().stdout
    assert f"run {run} succeeded" in text and "verified model-00001-of-00003.safetensors" in text


# --------------------------------------------------------------------------- a second machine


def test_second_machine_reuses_and_resolves(published, tmp_path):
    p, e2e = published, published.e2e
    other = e2e.machine(p.server)
    store = ("--store", p.url)
    listed = other.in_process("artifacts", "list", *store, "--json")
    assert [(r["name"], r["version"]) for r in listed.ok().json["artifacts"]] == [
        (p.name, p.version)
    ]
    mark = e2e.mark()
    dest = tmp_path / "model"
    again, first = other.many(
        ("prefetch", "hf-model", p.repo, *store, "--wait", "--json"),
        ("resolve", p.name, *store, "--to", str(dest), "--json"),
    )
    summary = again.ok().json
    assert summary["status"] == "succeeded" and summary["reused"] is True
    assert summary["artifact"]["version"] == p.version
    assert e2e.weight_requests(p.repo, mark) == [], "a reused artifact fetched weight bytes"
    assert first.ok().json["path"] == str(dest.resolve())
    on_disk = {
        f.relative_to(dest).as_posix(): f.read_bytes() for f in dest.rglob("*") if f.is_file()
    }
    assert on_disk == p.model.files
    manifest = json.loads(e2e.read(p.server, p.url, f"manifests/{p.name}/{p.version}.json"))
    assert all(sha256(on_disk[f["path"]]) == f["sha256"] for f in manifest["files"])

    # Again into the same directory: intact files stay as they are (same inode, same mtime, so
    # no weight object was read back); a damaged one is fetched again and nothing else.
    before = {path: _stat(dest / path) for path in p.model.files}
    (dest / "config.json").write_bytes(b"{}" + b" " * (len(p.model.files["config.json"]) - 2))
    damaged = _stat(dest / "config.json")
    other.cli("resolve", p.name, *store, "--to", str(dest), "--json").ok()
    after = {path: _stat(dest / path) for path in p.model.files}
    assert {k: v for k, v in after.items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"
    }
    assert after["config.json"] != damaged
    assert (dest / "config.json").read_bytes() == p.model.files["config.json"]
    assert not [f for f in dest.rglob("*") if "preheat-partial" in f.name]

    launch = other.in_process("resolve", p.name, *store, "--engine", "vllm", "--json")
    if p.server.kind == "azure":
        assert "vLLM cannot stream from az://" in launch.error_line()
        return
    data = launch.ok().json
    uri = f"{p.url}/artifacts/{p.name}/{p.version}"
    python = other.env.get("PREHEAT_VLLM_PYTHON") or "python"
    server = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", uri]
    assert data["model"] == uri and data["command"] == [*server, *data["args"]]
    assert data["args"] == ["--load-format", "runai_streamer"]
    _assert_streaming_env(data["env"], p.server)


def _stat(path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _assert_streaming_env(env: dict, server) -> None:
    assert env["AWS_ENDPOINT_URL"] == server.endpoint
    assert env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    assert env["AWS_REGION"] == servers.REGION
    assert not [k for k in env if any(s in k for s in SECRET_ENV)], env
    assert "AWS_ACCESS_KEY_ID" not in env
    assert servers.SECRET_KEY not in json.dumps(env)


# --------------------------------------------------------------------------- PREHEAT_STORE


@pytest.mark.s3
def test_preheat_store_is_the_default_store(e2e):
    server = e2e.server("moto")
    url = e2e.url(server, "from-env")
    repo, model = e2e.repo("qwen2_bias")
    machine = e2e.machine(server, PREHEAT_STORE=url)
    summary = machine.cli("prefetch", "hf-model", repo, "--wait", "--json").ok().json
    name, version = summary["artifact"]["name"], summary["artifact"]["version"]
    assert summary["artifact"]["uri"] == f"{url}/artifacts/{name}/{version}"
    listed, launch = machine.many_in_process(
        ("artifacts", "list", "--json"), ("resolve", name, "--engine", "vllm", "--json")
    )
    assert [(r["name"], r["version"]) for r in listed.ok().json["artifacts"]] == [(name, version)]
    assert launch.ok().json["model"] == summary["artifact"]["uri"]
    _assert_stored_files(e2e, server, url, f"artifacts/{name}/{version}/", model.files)
    # nothing went to the local default store
    assert not (machine.home / "store").exists()


# --------------------------------------------------------------------------- two machines at once


@pytest.mark.s3
def test_concurrent_identical_prefetches_publish_one_version(e2e):
    server = e2e.server("seaweedfs")
    url = e2e.url(server, "race")
    repo, model = e2e.repo("mistral_kv2")
    weight = "model.safetensors"
    # slow enough (about 1.5 s for the weights) that both runs are in flight together
    rate = len(model.files[weight]) * 2 // 3
    fault = e2e.hub.inject(Fault("slow", path="*.safetensors", bytes_per_sec=rate, times=None))
    mark = e2e.mark()
    try:
        args = ("prefetch", "hf-model", repo, "--store", url, "--wait", "--json")
        machines = [e2e.machine(server), e2e.machine(server)]
        procs = [m.start(*args) for m in machines]
        results = [m.finish(proc) for m, proc in zip(machines, procs, strict=True)]
    finally:
        e2e.hub.clear_faults()
    assert fault.hits >= 1
    summaries = [r.ok().json for r in results]
    assert {s["status"] for s in summaries} == {"succeeded"}
    versions = {s["artifact"]["version"] for s in summaries}
    assert len(versions) == 1
    name, version = summaries[0]["artifact"]["name"], versions.pop()

    keys = e2e.objects(server, url)
    assert [k for k in keys if k.startswith("manifests/")] == [f"manifests/{name}/{version}.json"]
    assert not [k for k in keys if k.startswith("staging/")]
    _assert_stored_files(e2e, server, url, f"artifacts/{name}/{version}/", model.files)
    assert _full_downloads(e2e.weight_requests(repo, mark)) == {weight: len(model.files[weight])}
    logs = [e2e.read(server, url, f"runs/{s['run']}.log").decode() for s in summaries]
    assert sum("waiting for run" in text for text in logs) == 1, logs


# --------------------------------------------------------------------------- vLLM tp=2 from S3


@pytest.mark.s3
def test_vllm_tp2_shard_built_from_an_artifact_in_s3(e2e, tmp_path):
    server = e2e.server("moto")
    url = e2e.url(server, "tp")
    repo, model = e2e.repo("qwen3_qk_norm")
    base = e2e.machine(server).cli("prefetch", "hf-model", repo, "--store", url, "--wait", "--json")
    base_summary = base.ok().json

    config = tmp_path / "shard.yaml"
    config.write_text("engine: vllm\nargs:\n  tensor_parallel_size: 2\n")
    other = e2e.machine(server)  # nothing local: the unsharded artifact is only in S3
    mark = e2e.mark()
    sharded = other.cli(
        "prefetch", "hf-model", repo, "--store", url, "--shard-config", str(config),
        "--wait", "--json",
    ).ok().json  # fmt: skip
    assert sharded["status"] == "succeeded" and sharded["reused"] is False
    assert e2e.weight_requests(repo, mark) == [], "the shard run read weights from the hub"
    name, version = sharded["artifact"]["name"], sharded["artifact"]["version"]
    assert version != base_summary["artifact"]["version"]

    manifest = json.loads(e2e.read(server, url, f"manifests/{name}/{version}.json"))
    assert manifest["shard"]["engine"] == "vllm"
    assert manifest["shard"]["tensor_parallel_size"] == 2
    base_artifact = base_summary["artifact"]
    assert manifest["lineage"] == {
        "name": base_artifact["name"],
        "version": base_artifact["version"],
    }
    prefix = f"artifacts/{name}/{version}/"
    stored = {
        k[len(prefix) :]: n for k, n in e2e.objects(server, url).items() if k.startswith(prefix)
    }
    assert stored == {f["path"]: f["size"] for f in manifest["files"]}
    rank_files = sorted(p for p in stored if p.startswith("model-rank-"))
    assert rank_files == ["model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors"]
    blobs = {f["path"]: e2e.read(server, url, prefix + f["path"]) for f in manifest["files"]}
    for entry in manifest["files"]:
        data = blobs[entry["path"]]
        assert (len(data), sha256(data)) == (entry["size"], entry["sha256"]), entry["path"]

    from preheat_testing.sharding import prompt
    from preheat_tp import simulate_tp_forward

    ranks = [load_safetensors(blobs[f"model-rank-{r}-part-0.safetensors"]) for r in range(2)]
    ids = prompt(model.config)
    np.testing.assert_allclose(
        simulate_tp_forward(model.config, ranks, ids),
        forward(model.config, model.weights, ids),
        rtol=0,
        atol=1e-4,
    )

    data = other.in_process("resolve", name, "--store", url, "--engine", "vllm", "--json").ok().json
    assert data["args"] == [
        "--load-format",
        "runai_streamer_sharded",
        "--tensor-parallel-size",
        "2",
    ]
    assert data["model"] == f"{url}/artifacts/{name}/{version}"
    _assert_streaming_env(data["env"], server)


# --------------------------------------------------------------------------- memory://


def test_memory_store_in_process(e2e, monkeypatch, tmp_path):
    """memory:// lives in one process: the pipeline, the catalog and a resolve share it."""
    from preheat.api import materialize, resolve_artifact
    from preheat_testing.core import prefetch_here

    repo, model = e2e.repo("llama_tied_mqa")
    monkeypatch.setenv("HF_ENDPOINT", e2e.hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("PREHEAT_HOME", str(tmp_path / "home"))
    url = f"memory://{e2e.base}/in-process"
    record = prefetch_here(url, repo=repo)
    assert record.status == "succeeded", record.error
    manifest, where = resolve_artifact(record.artifact.name, url)
    assert where.path is None and where.uri.startswith(f"{url}/artifacts/")
    dest = materialize(manifest, tmp_path / "model", store=url)
    assert {p: (dest / p).read_bytes() for p in model.files} == model.files


# --------------------------------------------------------------------------- upload memory


def test_open_writers_share_the_parts_in_flight(e2e, monkeypatch):
    """Eight files streamed at once hold about 2 x 8 parts, not 8 x 9 (benchmarks/storage.py)."""
    import obstore

    from preheat_storage.store import ObstoreStore

    shares = []
    real = obstore.open_writer

    def spy(*args, **kwargs):
        shares.append(kwargs["max_concurrency"])
        return real(*args, **kwargs)

    monkeypatch.setattr(obstore, "open_writer", spy)
    store = ObstoreStore(f"memory://{e2e.base}/writers", options={"part_size": "5MiB"})
    part = os.urandom(1 << 20)
    writers = [store.open_writer(f"w{i}.bin") for i in range(8)]
    small = store.open_writer("small.json")
    small.write(b"{}")
    assert shares == []  # nothing is sent before a whole part is buffered
    for w in writers:
        for _ in range(6):
            w.write(part)
    assert shares == [1] * 8  # 9 writers open share max_concurrency 8 (rounded up)
    small.commit()
    for w in writers[:4]:
        w.commit()
    writers[4].abort()
    alone = store.open_writer("alone.bin")
    for _ in range(6):
        alone.write(part)
    assert shares[-1] == 2  # 4 writers open now: 8 / 4
    for w in [*writers[5:], alone]:
        w.commit()
    assert store._writers == 0
    assert store.read("w0.bin")[0] == part * 6 and store.head("w4.bin") is None
    assert store.read("small.json")[0] == b"{}"
    solo = store.open_writer("solo.bin")
    for _ in range(6):
        solo.write(part)
    solo.commit()
    assert shares[-1] == 8  # a lone upload keeps every part in flight


# --------------------------------------------------------------------------- secrets


@pytest.mark.s3
def test_no_secret_in_any_object_local_file_or_output(e2e):
    """Checked on every CLI output as it happens; here every object and every PREHEAT_HOME file
    of the session, after a prefetch of its own: under xdist, the tests that ran before it in
    this worker may have published nothing."""
    server = e2e.server("moto")
    repo, _ = e2e.repo("llama_multipart")
    url = e2e.url(server, "secrets")
    e2e.machine(server).cli("prefetch", "hf-model", repo, "--store", url, "--wait", "--json").ok()
    scanned = e2e.assert_no_secrets()
    assert any("/manifests/" in s for s in scanned) and any("/runs/" in s for s in scanned)
