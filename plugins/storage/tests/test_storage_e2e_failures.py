"""End to end, when things go wrong: a worker killed mid-upload, and bad store input.

A detached worker is SIGKILLed while a multipart upload of a 24 MiB weight file is open in
SeaweedFS: nothing becomes visible, a rerun publishes, and `preheat gc` (with `gc_after = 0`
from the config file) aborts the upload the dead worker left open. Unknown buckets, wrong
credentials, an unreachable endpoint and an unknown scheme each fail within seconds with one
line, before the hub is asked for anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time

import psutil
import pytest

from preheat_testing.hub import Fault, file_sha256
from preheat_testing.models import make_big_model

MiB = 1 << 20
WRONG_SECRET = "e2e-wrong-secret-do-not-print-0123456789"
WRONG_AZURE_KEY = base64.b64encode(b"e2e-wrong-azure-key-do-not-print-01234").decode()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------- kill -9 mid-upload


@pytest.mark.s3
def test_killed_worker_leaves_nothing_visible_rerun_publishes_gc_aborts(e2e, tmp_path):
    server = e2e.server("seaweedfs")
    url = e2e.url(server, "killed")
    src = tmp_path / "big"
    make_big_model(src, 24 * MiB, 1)
    weight = src / "model.safetensors"
    assert weight.stat().st_size > 2 * 8 * MiB  # three parts of the default 8 MiB
    repo = "e2e/big-killed"
    e2e.hub.add_repo(repo, {p.name: p for p in src.iterdir()})
    machine = e2e.machine(server)

    e2e.hub.inject(Fault("slow", path="*.safetensors", bytes_per_sec=4 * MiB, times=None))
    try:
        started = machine.cli("prefetch", "hf-model", repo, "--store", url, "--json").ok().json
        run = started["run"]
        assert started["status"] in ("queued", "running") and started["artifact"] is None
        uploads = _wait_for(
            lambda: [u for u in e2e.uploads(server, url) if u.key.endswith("/model.safetensors")],
            30,
            "the worker's multipart upload",
        )
        record = json.loads(e2e.read(server, url, f"runs/{run}.json"))
        worker = psutil.Process(record["pid"])
        assert "preheat.worker" in worker.cmdline() and run in worker.cmdline()
        assert worker.pid != os.getpid() and record["status"] == "running"
        os.kill(worker.pid, signal.SIGKILL)
        _wait_for(lambda: _gone(worker.pid), 10, "the worker to die")
    finally:
        e2e.hub.clear_faults()

    # nothing visible: no manifest, no alias, an empty listing, a failed run
    keys = e2e.objects(server, url)
    assert not [k for k in keys if k.startswith(("manifests/", "aliases/"))], keys
    assert not [k for k in keys if k.endswith("/model.safetensors")]
    store = ("--store", url)
    listed, got, resolved, gc_young = machine.many_in_process(
        ("artifacts", "list", *store, "--json"),
        ("runs", "get", run, *store, "--json"),
        ("resolve", "big-killed", *store),
        ("gc", *store, "--json"),
    )
    assert listed.ok().json == {"artifacts": []}
    failed = got.ok().json
    assert failed["status"] == "failed" and "killed" in failed["error"]
    assert "big-killed" in resolved.error_line() and "not found" in resolved.error_line()
    # gc keeps uploads younger than gc_after (24h by default): they may belong to a live writer
    assert gc_young.ok().json["removed"] == 0
    open_uploads = {u.upload_id for u in e2e.uploads(server, url)}
    assert {u.upload_id for u in uploads} <= open_uploads

    # the rerun takes the dead worker's lease over and publishes
    summary = machine.cli("prefetch", "hf-model", repo, *store, "--wait", "--json").ok().json
    assert summary["status"] == "succeeded" and summary["reused"] is False
    name, version = summary["artifact"]["name"], summary["artifact"]["version"]
    stored = e2e.read(server, url, f"artifacts/{name}/{version}/model.safetensors")
    assert hashlib.sha256(stored).hexdigest() == file_sha256(weight)
    keys = e2e.objects(server, url)
    assert [k for k in keys if k.startswith("manifests/")] == [f"manifests/{name}/{version}.json"]
    assert not [k for k in keys if k.startswith("staging/")]

    # gc with gc_after = 0 from the config file aborts what the killed worker left open
    (machine.home / "config.toml").write_text(f'[stores."{url}"]\ngc_after = 0\n')
    removed = machine.cli("gc", *store, "--json").ok().json["removed"]
    assert removed >= len(uploads)
    assert e2e.uploads(server, url) == []
    assert e2e.read(server, url, f"artifacts/{name}/{version}/model.safetensors") == stored


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_input_repo(e2e):
    return e2e.repo("llama_gqa")[0]


def _unknown_bucket(e2e):
    server = e2e.server("moto")
    return server, server.url("p", bucket="no-such-bucket-e2e"), {}


def _unknown_container(e2e):
    server = e2e.server("azurite")
    return server, server.url("p", bucket="no-such-container-e2e"), {}


def _wrong_secret(e2e):
    server = e2e.server("seaweedfs")
    return server, e2e.url(server, "wrong-secret"), {"AWS_SECRET_ACCESS_KEY": WRONG_SECRET}


def _wrong_azure_key(e2e):
    server = e2e.server("azurite")
    return server, e2e.url(server, "wrong-key"), {"AZURE_STORAGE_ACCOUNT_KEY": WRONG_AZURE_KEY}


def _unreachable(e2e):
    server = e2e.server("moto")
    return server, e2e.url(server, "unreachable"), {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}


def _unknown_scheme(e2e):
    return None, "foo://bucket/prefix", {}


BAD_INPUT = [
    pytest.param(_unknown_bucket, "bucket 'no-such-bucket-e2e' does not exist at {endpoint}",
                 id="unknown-bucket", marks=pytest.mark.s3),
    pytest.param(_unknown_container, "container 'no-such-container-e2e' does not exist at {endpoint}",
                 id="unknown-container", marks=pytest.mark.azure),
    pytest.param(_wrong_secret, "access denied to {url} at {endpoint}",
                 id="wrong-secret", marks=pytest.mark.s3),
    pytest.param(_wrong_azure_key, "access denied to {url} at {endpoint}",
                 id="wrong-azure-key", marks=pytest.mark.azure),
    pytest.param(_unreachable, "cannot reach http://127.0.0.1:1 for {url}",
                 id="unreachable", marks=pytest.mark.s3),
    pytest.param(_unknown_scheme, "unknown store URL scheme foo:// in 'foo://bucket/prefix'",
                 id="unknown-scheme"),
]  # fmt: skip


@pytest.mark.parametrize("case, expected", BAD_INPUT)
def test_bad_store_input_fails_fast_with_one_line(e2e, bad_input_repo, case, expected):
    e2e.secrets |= {WRONG_SECRET, WRONG_AZURE_KEY}
    server, url, env = case(e2e)
    machine = e2e.machine(server, **env)
    mark = e2e.mark()
    result = machine.cli("prefetch", "hf-model", bad_input_repo, "--store", url, "--wait")
    line = result.error_line()
    endpoint = server.endpoint if server is not None else ""
    assert line.startswith("error: " + expected.format(url=url, endpoint=endpoint)), line
    # about 1-2 s here, most of it interpreter start-up; the bound leaves room for a busy machine
    assert result.elapsed < 8, f"took {result.elapsed:.1f}s: {line}"
    assert result.stdout == ""
    # nothing happened: the hub was not asked, nothing was written here or in the store
    assert e2e.repo_requests(bad_input_repo, mark) == []
    assert not (machine.home / "store").exists()
    if server is not None and "no-such" in url:  # the bucket was not created either
        import obstore

        with pytest.raises(Exception, match="NoSuchBucket|ContainerNotFound"):
            next(iter(obstore.list(e2e.raw(server, bucket=url.split("/")[2]))))
    elif server is not None:
        assert e2e.objects(server, url) == {}


# --------------------------------------------------------------------------- secrets


@pytest.mark.s3
def test_no_secret_in_any_object_local_file_or_output(e2e):
    # a prefetch of its own: under xdist the other tests may run on another worker
    server = e2e.server("seaweedfs")
    repo, _ = e2e.repo("llama_gqa")
    url = e2e.url(server, "secrets")
    e2e.machine(server).cli("prefetch", "hf-model", repo, "--store", url, "--wait", "--json").ok()
    e2e.secrets |= {WRONG_SECRET, WRONG_AZURE_KEY}
    scanned = e2e.assert_no_secrets()
    assert any(key.startswith("seaweedfs:") for key in scanned)
