"""Reliability: hub faults, a killed worker, identical runs at once, cancellation, a full disk.

Faults come from the loopback hub (`preheat_testing.hub.Fault`). Faults meant for weight
downloads are armed when the pipeline enters its fetch stage, so the ranged safetensors
header reads before it are not hit. Tests that act mid-transfer (kill, cancel, fill the
disk) use a model with one 5 MB weight file served slowly, and act once its first MiB
has reached the store's partial file.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from preheat_testing.hub import Fault

REPO = "tiny/Faulty"
BIG = "tiny/Single"
MiB = 1 << 20
WEIGHTS = "*.safetensors"
SMALL_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
)


@pytest.fixture
def model(hub, tiny_model):
    m = tiny_model("llama_multipart")
    hub.add_repo(REPO, m.files)
    return m


@pytest.fixture
def big(hub, tiny_model):
    """One 5 MB weight file: several download chunks, so a transfer can be caught midway."""
    m = tiny_model("llama_multipart", parts=1, layers=4)
    hub.add_repo(BIG, m.files)
    return m


@pytest.fixture
def env(preheat_env, hub, model):
    return preheat_env.connect(hub)


def weight_paths(model) -> list[str]:
    return sorted(p for p in model.files if p.endswith(".safetensors"))


def weight_total(model) -> int:
    return sum(len(model.files[p]) for p in weight_paths(model))


def downloads(hub, path: str = WEIGHTS):
    """CDN requests that fetched weight bodies, not the ranged header reads."""
    return [
        r
        for r in hub.find_requests(path, origin="cdn")
        if r.file
        and r.file.endswith(".safetensors")
        and (r.range is None or re.fullmatch(r"bytes=\d+-", r.range))
    ]


def resumed_from(request) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", request.range or "")
    return int(m.group(1)) if m else 0


def published_tree(env, record, read_tree, store: Path | None = None):
    store = store or env.store
    return read_tree(store / "artifacts" / record.artifact.name / record.artifact.version)


def partial_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / ".partial").glob("*") if p.is_file())


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie counts: it runs no more code)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def arm_at_fetch(stage_hook, hub, *faults):
    """A Progress that arms `faults` when the pipeline starts fetching."""

    def on_stage(name: str) -> None:
        if name.startswith("fetching"):
            for fault in faults:
                hub.inject(fault)

    return stage_hook(on_stage=on_stage)


# --------------------------------------------------------------------------- hub faults


def test_server_errors_are_retried_until_success(env, hub, model, stage_hook, read_tree):
    api = hub.inject(Fault("status", path="/api/models/*", status=502, times=2))
    body = Fault("status", path=WEIGHTS, origin="cdn", status=503, times=3)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, body))
    assert record.status == "succeeded", record.error
    assert api.hits == 2 and body.hits == 3
    assert published_tree(env, record, read_tree) == model.files


def test_a_rate_limit_answer_is_retried(env, hub, model, stage_hook, read_tree):
    limited = Fault(
        "status", path="model-00002-of-00003.safetensors", origin="cdn", status=429, times=1
    )
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, limited))
    assert record.status == "succeeded", record.error
    assert limited.hits == 1
    assert published_tree(env, record, read_tree) == model.files


def test_a_dropped_connection_resumes_by_range(env, hub, model, stage_hook, read_tree):
    path = "model-00001-of-00003.safetensors"
    size = len(model.files[path])
    drop = Fault("drop", path=path, origin="cdn", after_bytes=size // 2, times=1)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, drop))
    assert record.status == "succeeded", record.error
    assert drop.hits == 1
    fetched = downloads(hub, path)
    assert len(fetched) == 2
    assert fetched[0].range is None and fetched[0].body_bytes == size // 2
    assert 0 < resumed_from(fetched[1]) <= size // 2, f"no resume by Range: {fetched[1].range}"
    total = sum(r.body_bytes for r in fetched)
    assert size <= total <= size + (1 << 20), "about one copy of the file, not two"
    assert published_tree(env, record, read_tree) == model.files


def test_repeated_drops_on_every_weight_file_still_complete(env, hub, model, stage_hook, read_tree):
    drops = Fault("drop", path=WEIGHTS, origin="cdn", after_bytes=200_000, times=6)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, drops))
    assert record.status == "succeeded", record.error
    assert drops.hits == 6
    assert sum(r.body_bytes for r in downloads(hub)) <= weight_total(model) + 6 * (1 << 20)
    assert published_tree(env, record, read_tree) == model.files


def test_slow_bodies_still_complete(env, hub, model, read_tree):
    slow = hub.inject(
        Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=2_000_000, times=None)
    )
    record = env.prefetch(REPO)
    assert record.status == "succeeded", record.error
    assert slow.hits >= len(weight_paths(model))
    assert published_tree(env, record, read_tree) == model.files


def test_a_fault_that_never_clears_fails_the_run_naming_the_file(env, hub, model, stage_hook):
    broken = Fault(
        "status", path="model-00003-of-00003.safetensors", origin="cdn", status=500, times=None
    )
    env.set("PREHEAT_HTTP_RETRIES", "2")
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, broken))
    assert record.status == "failed"
    assert "model-00003-of-00003.safetensors" in record.error and "3 attempts" in record.error
    assert broken.hits == 3
    assert env.catalog().artifacts() == []


# --------------------------------------------------------------------------- a killed worker


def test_kill_9_mid_download_then_a_rerun_resumes_and_publishes(env, hub, big, read_tree):
    hub.inject(Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=MiB, times=None))
    name = env.cli("prefetch", "hf-model", BIG).ok().stdout.strip()
    env.wait_for(lambda: partial_bytes(env.store) >= MiB, what="weight bytes to land")
    record = env.catalog().run(name)
    assert record.status == "running"
    assert "preheat.worker" in " ".join(psutil.Process(record.pid).cmdline())
    os.kill(record.pid, signal.SIGKILL)
    env.wait_for(lambda: gone(record.pid), what="the worker to die")

    killed = env.cli("runs", "get", name, "--json").ok().json
    assert killed["status"] == "failed"
    assert "exited before finishing" in killed["error"]
    assert env.catalog().artifacts() == []
    kept = partial_bytes(env.store)
    size = weight_total(big)
    assert MiB <= kept < size

    hub.clear_faults()
    hub.reset_stats()
    rerun = env.cli("prefetch", "hf-model", BIG, "--wait", "--json").ok().json
    assert rerun["status"] == "succeeded" and rerun["reused"] is False
    assert read_tree(rerun["artifact"]["path"]) == big.files

    (fetched,) = downloads(hub)
    assert resumed_from(fetched) == kept, f"expected a resume from byte {kept}: {fetched.range}"
    assert fetched.body_bytes == size - kept
    for path in SMALL_FILES:  # verified before the kill: not fetched again
        assert hub.request_count(path) == 0, path
    assert env.cli("runs", "get", name, "--json").ok().json["status"] == "failed"


# --------------------------------------------------------------------------- concurrency and cancel


def test_identical_prefetches_at_once_publish_one_version_and_fetch_each_byte_once(
    env, hub, model, read_tree
):
    hub.inject(Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=600_000, times=None))
    procs = [env.popen("prefetch", "hf-model", REPO, "--wait", "--json") for _ in range(2)]
    results = [env.finish(p).ok().json for p in procs]

    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert results[0]["artifact"] == results[1]["artifact"]
    assert len(env.catalog().artifacts()) == 1
    assert read_tree(results[0]["artifact"]["path"]) == model.files

    fetched = downloads(hub)
    assert sorted(r.file for r in fetched) == weight_paths(model), (
        "each weight file downloaded once"
    )
    assert sum(r.body_bytes for r in fetched) == weight_total(model)


def test_runs_cancel_stops_a_running_run_and_publishes_nothing(env, hub, big):
    hub.inject(Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=MiB, times=None))
    name = env.cli("prefetch", "hf-model", BIG).ok().stdout.strip()
    env.wait_for(lambda: partial_bytes(env.store) > 0, what="weight bytes to land")
    pid = env.catalog().run(name).pid

    cancelled = env.cli("runs", "cancel", name, "--json").ok().json
    assert cancelled["cancel_requested"] is True and cancelled["signalled"] is True
    waited = env.cli("runs", "wait", name, "--json")
    assert waited.returncode == 130
    assert waited.json["status"] == "cancelled" and waited.json["artifact"] is None

    env.wait_for(lambda: gone(pid), what="the worker to exit")
    assert env.catalog().artifacts() == []
    assert not list(env.store.glob("manifests/**/*.json"))
    assert not list(env.store.glob("staging/**/lease.json")), "the lease was not released"
    assert not (env.store / "runs" / f"{name}.cancel").exists()


# --------------------------------------------------------------------------- disk space


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a fresh tmpfs of `size` (e.g. "2M") mounted under tmp_path."""
    mounts = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root"
            )
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem holding `directory` is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * size
            try:
                while True:
                    f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_while_writing_fails_the_run_and_keeps_the_store_consistent(
    env, hub, big, tmpfs, read_tree
):
    disk = tmpfs("160M")  # room for the model plus the capacity check's margin
    store = disk / "store"
    hub.inject(Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=MiB, times=None))
    proc = env.popen("prefetch", "hf-model", BIG, "--store", str(store), "--wait")
    env.wait_for(lambda: partial_bytes(store) > 0, what="weight bytes to land")
    filler = fill(disk)
    result = env.finish(proc)
    line = result.error_line()
    assert "no space left" in line, line

    filler.unlink()
    hub.clear_faults()
    catalog = env.catalog(store)
    assert catalog.artifacts() == []
    assert not list(store.glob("manifests/**/*.json")) and not list(store.glob("aliases/**/*"))
    (record,) = catalog.runs()
    from preheat.runs import Run

    assert Run(record.name, str(store)).record.status == "failed"

    rerun = env.prefetch(BIG, store=str(store))
    assert rerun.status == "succeeded", rerun.error
    assert published_tree(env, rerun, read_tree, store) == big.files


def test_ephemeral_storage_smaller_than_the_model_refuses_before_any_weight_byte(env, hub, model):
    result = env.cli("prefetch", "hf-model", REPO, "--ephemeral-storage", "1Ki", "--wait")
    line = result.error_line()
    assert "ephemeral_storage 1Ki is smaller than" in line and "--ephemeral-storage" in line
    assert hub.request_count(WEIGHTS) == 0 and hub.bytes_served(WEIGHTS) == 0
    assert not (env.store / "artifacts").exists()


def test_a_store_smaller_than_the_model_refuses_before_any_weight_byte(env, hub, model, tmpfs):
    disk = tmpfs("2M")
    store = disk / "store"
    result = env.cli("prefetch", "hf-model", REPO, "--store", str(store), "--wait")
    line = result.error_line()
    assert re.search(r"has [0-9.]+ MiB free but this run writes", line), line
    assert "--store" in line
    assert hub.request_count(WEIGHTS) == 0 and hub.bytes_served(WEIGHTS) == 0
    assert not (store / "artifacts").exists()
    assert {p.name for p in store.iterdir()} <= {"runs", ".locks", ".partial", "staging"}
