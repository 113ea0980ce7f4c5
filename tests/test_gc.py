"""`preheat gc`: leftovers of interrupted runs, unreferenced objects, `--older-than`, `--apply`."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import psutil
import pytest

from preheat_testing.hub import Fault

REPO = "gc/Tiny-Llama"
NAME = "tiny-llama"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(preheat_env, hub, tiny_model):
    model = tiny_model("llama_multipart")
    hub.add_repo(REPO, model.files)
    preheat_env.model = model
    return preheat_env.connect(hub)


@pytest.fixture
def published(env):
    record = env.prefetch(REPO)
    assert record.status == "succeeded", record.error
    return record


def put(env, key: str, data: bytes = b"x", *, age: float = 0) -> None:
    path = env.store / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))


def lease(*, alive: bool) -> bytes:
    me = psutil.Process()
    holder = {
        "run": "r-someone",
        "host": socket.gethostname(),
        "pid": me.pid if alive else 2**22 + 12345,
        "started": me.create_time(),
        "heartbeat": time.time(),
    }
    return json.dumps(holder).encode()


def gc(env, *args: str) -> dict:
    return env.cli_in_process("gc", *args, "--json").ok().json


def assert_verifies(env, ref: str) -> None:
    manifest = env.catalog().resolve(ref)
    root = env.store / "artifacts" / manifest.name / manifest.version
    for entry in manifest.files:
        assert sha256((root / entry.path).read_bytes()) == entry.sha256, entry.path


def test_gc_reports_unreferenced_objects_and_removes_them_only_with_apply(env, published):
    version = published.artifact.version
    strays = [
        f"artifacts/{NAME}/{version}/extra.bin",  # inside a published version, not in its manifest
        "artifacts/ghost/0123abcd-00/model.safetensors",  # a version with no manifest
        "artifacts/stray.txt",  # not even under NAME/VERSION/
    ]
    for key in strays:
        put(env, key, b"orphan")
    found = gc(env)
    assert found["applied"] is False and found["removed"] == 0
    assert sorted(found["unreferenced"]["keys"]) == sorted(strays)
    assert found["unreferenced"]["count"] == 3 and found["unreferenced"]["bytes"] == 18
    assert all((env.store / k).exists() for k in strays)  # only reported

    text = env.cli_in_process("gc").ok()
    assert sorted(text.stdout.split()) == sorted(strays)
    assert "--apply" in text.stderr

    applied = gc(env, "--apply")
    assert applied["applied"] is True and applied["unreferenced"]["removed"] == 3
    assert applied["removed"] == 3
    assert not any((env.store / k).exists() for k in strays)
    assert_verifies(env, str(published.artifact))
    assert gc(env, "--apply")["unreferenced"]["keys"] == []


def test_gc_never_touches_a_version_under_a_live_lease(env, published):
    building = "0badcafe-11"
    put(env, f"staging/{NAME}/{building}/lease.json", lease(alive=True))
    put(env, f"staging/{NAME}/{building}/verified/a.json", b"{}")
    put(env, f"artifacts/{NAME}/{building}/model.safetensors", b"half-built", age=7200)
    found = gc(env, "--apply")
    assert found["staging"]["keys"] == [] and found["unreferenced"]["keys"] == []
    assert (env.store / f"artifacts/{NAME}/{building}/model.safetensors").exists()
    assert (env.store / f"staging/{NAME}/{building}/lease.json").exists()


def test_gc_removes_staging_folders_of_dead_runs(env, published):
    dead, failed = "dead0001-22", "fail0001-33"
    put(env, f"staging/{NAME}/{dead}/lease.json", lease(alive=False))
    put(env, f"staging/{NAME}/{dead}/files/model.safetensors", b"staged")
    put(env, f"staging/{NAME}/{failed}/verified/x.json", b"{}")  # a failed run leaves no lease
    put(env, f"artifacts/{NAME}/{dead}/leftover.bin", b"xx")
    found = gc(env)
    assert found["staging"]["keys"] == [f"staging/{NAME}/{dead}/", f"staging/{NAME}/{failed}/"]
    assert found["staging"]["objects"] == 3 and found["removed"] == 3
    assert not (env.store / "staging").exists()
    # the dead run's unpublished files are no longer protected: reported, then applied
    assert found["unreferenced"]["keys"] == [f"artifacts/{NAME}/{dead}/leftover.bin"]
    assert gc(env, "--apply")["unreferenced"]["removed"] == 1
    assert_verifies(env, str(published.artifact))


def test_older_than_keeps_young_leftovers(env, published):
    put(env, ".partial/w-young", b"half")
    put(env, ".partial/w-old", b"half", age=3 * 3600)
    put(env, f"staging/{NAME}/young001-44/verified/x.json", b"{}")
    put(env, f"staging/{NAME}/old00001-55/verified/x.json", b"{}", age=3 * 3600)
    put(env, f"artifacts/{NAME}/young001-44/a.bin", b"a")
    put(env, f"artifacts/{NAME}/old00001-55/a.bin", b"a", age=3 * 3600)

    found = gc(env, "--older-than", "2h", "--apply")
    assert found["older_than"] == 7200 and found["partial"] == 1
    assert found["staging"]["keys"] == [f"staging/{NAME}/old00001-55/"]
    assert found["unreferenced"]["keys"] == [f"artifacts/{NAME}/old00001-55/a.bin"]
    assert sorted(p.name for p in (env.store / ".partial").iterdir()) == ["w-young"]
    assert (env.store / f"staging/{NAME}/young001-44/verified/x.json").exists()
    assert (env.store / f"artifacts/{NAME}/young001-44/a.bin").exists()

    # the default for a local store stays "any age": the young leftovers go too
    found = gc(env, "--apply")
    assert found["partial"] == 1 and found["staging"]["keys"] == [f"staging/{NAME}/young001-44/"]
    assert found["unreferenced"]["keys"] == [f"artifacts/{NAME}/young001-44/a.bin"]
    assert_verifies(env, str(published.artifact))


@pytest.mark.parametrize("bad", ["soon", "-5m", "2 fortnights", "1.5.0h", ""])
def test_bad_durations_are_one_line_errors(env, bad):
    result = env.cli_in_process("gc", "--older-than", bad)
    assert result.returncode != 0
    line = result.error_line()
    assert "--older-than" in line and "30m" in line or "duration" in line, line


def test_gc_cleans_up_after_a_failed_run_and_the_rerun_still_publishes(env, hub, read_tree):
    # the weights arrive corrupted: the run fails, leaving its journal and staged files
    hub.inject(Fault("corrupt", path="*model-00001*", after_bytes=200_000, times=None))
    failed = env.prefetch(REPO)
    assert failed.status == "failed"
    hub.clear_faults()
    staging = env.store / "staging"
    assert any(p.is_file() for p in staging.rglob("*"))

    found = gc(env, "--apply")
    assert len(found["staging"]["keys"]) == 1 and found["staging"]["objects"] >= 1
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))

    rerun = env.prefetch(REPO)
    assert rerun.status == "succeeded", rerun.error
    artifact = env.store / "artifacts" / NAME / rerun.artifact.version
    assert read_tree(artifact) == env.model.files
    after = gc(env, "--apply")
    assert after["removed"] == 0 and after["unreferenced"]["keys"] == []


def test_gc_after_removing_a_version_that_shares_files_keeps_the_other(env, hub, published):
    files = dict(env.model.files)
    data = bytearray(files["model-00003-of-00003.safetensors"])
    data[-16:] = b"\x01" * 16
    files["model-00003-of-00003.safetensors"] = bytes(data)
    hub.add_revision(REPO, files, branch="main")
    second = env.prefetch(REPO)
    assert second.status == "succeeded" and second.bytes_reused > 0
    env.cli_in_process("artifacts", "rm", str(published.artifact)).ok()
    found = gc(env, "--apply")
    assert found["unreferenced"]["keys"] == []
    assert_verifies(env, str(second.artifact))
