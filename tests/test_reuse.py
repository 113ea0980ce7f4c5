"""Fetch only what changed: files the local store already holds are linked in, not fetched.

A real loopback hub serves an 8-file model; a second revision changes one weight file.
The hub's byte counters show what was fetched; the store's files are re-hashed against
their manifests and compared with the hub's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from preheat_testing.hub import Fault

REPO = "reuse/Llama-Eight"
NAME = "llama-eight"
CHANGED = "model-00002-of-00003.safetensors"
DROPPED = ("generation_config.json", "special_tokens_map.json")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def eight_files(tiny_model) -> dict[str, bytes]:
    files = dict(tiny_model("llama_multipart").files)
    for path in DROPPED:
        del files[path]
    assert len(files) == 8
    return files


def changed(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same model with new values in the last bytes of one weight file (header intact)."""
    out = dict(files)
    data = bytearray(out[CHANGED])
    data[-4096:] = bytes((b + 1) % 256 for b in data[-4096:])
    out[CHANGED] = bytes(data)
    return out


@pytest.fixture
def repo(hub, tiny_model):
    """REPO with commit v1 (tag) and a main that changes one file of eight: (v1 files, main files)."""
    v1 = eight_files(tiny_model)
    main = changed(v1)
    hub.add_repo(REPO, v1, tags=["v1"])
    hub.add_revision(REPO, main, branch="main", title="retrain one shard")
    return v1, main


@pytest.fixture
def env(preheat_env, hub):
    return preheat_env.connect(hub)


def artifact_dir(env, record):
    return env.store / "artifacts" / record.artifact.name / record.artifact.version


def assert_verifies(env, ref: str) -> None:
    """Every file of the version re-hashed against its manifest."""
    manifest = env.catalog().resolve(ref)
    root = env.store / "artifacts" / manifest.name / manifest.version
    for entry in manifest.files:
        data = (root / entry.path).read_bytes()
        assert len(data) == entry.size and sha256(data) == entry.sha256, entry.path


METADATA = ("config.json", "README.md")  # read from the hub for every run, to detect metadata


def served_files(hub, files: dict[str, bytes]) -> dict[str, int]:
    """Bytes the hub served per file, less the one metadata read of config.json and README.md."""
    served = {k.split("/", 2)[2]: v.bytes for k, v in hub.stats_by_file().items()}
    for path in METADATA:
        assert served.get(path, 0) >= len(files[path]), (path, served.get(path))
        served[path] -= len(files[path])  # the metadata read
        if not served[path]:
            del served[path]  # not fetched
    return served


def test_a_new_revision_fetches_only_the_changed_file(env, hub, repo, read_tree):
    v1, main = repo
    first = env.prefetch(REPO, revision="v1")
    assert first.status == "succeeded", first.error
    assert (first.bytes_fetched, first.bytes_reused) == (sum(map(len, v1.values())), 0)

    hub.reset_stats()
    result = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--json").ok()
    summary = result.json
    assert summary["status"] == "succeeded" and summary["reused"] is False
    # only the changed file came from the hub: its header by range (and redirects), its body
    served = served_files(hub, main)
    assert set(served) == {CHANGED}, served
    assert served[CHANGED] <= len(main[CHANGED]) + (64 << 10) + 4096
    assert summary["bytes_fetched"] == len(main[CHANGED])
    assert summary["bytes_reused"] == sum(len(d) for p, d in main.items() if p != CHANGED)

    record = env.catalog().run(summary["run"])
    assert (record.bytes_fetched, record.bytes_reused) == (
        summary["bytes_fetched"],
        summary["bytes_reused"],
    )
    second = artifact_dir(env, record)
    assert read_tree(second) == main  # byte-identical to the hub's files
    manifest = env.catalog().resolve(f"{NAME}:{record.artifact.version}")
    by_path = {e.path: e for e in manifest.files}
    assert by_path[CHANGED].origin is None
    assert {e.origin for p, e in by_path.items() if p != CHANGED} == {str(first.artifact)}
    for path, entry in by_path.items():  # the hub's etag of every file
        tree = hub.tree_entry(REPO, path)
        assert entry.etag == (tree["lfs"]["oid"] if "lfs" in tree else tree["oid"])
        assert entry.stored_etag
    # hard links: the reused files are the first version's files, not copies
    first_dir = artifact_dir(env, first)
    for path in by_path:
        same = os.stat(first_dir / path).st_ino == os.stat(second / path).st_ino
        assert same == (path != CHANGED), path
    # the progress line and the log say what was reused
    log = env.catalog().log(record.name)
    assert "reusing 7 (" in log and "already in the store" in log

    # the same request again reuses the artifact: nothing fetched at all
    again = env.prefetch(REPO)
    assert again.reused and again.bytes_fetched == 0
    assert again.bytes_reused == sum(map(len, main.values()))
    # bumping force redoes the work: every file fetched again
    forced = env.prefetch(REPO, force=1)
    assert forced.bytes_fetched == sum(map(len, main.values())) and forced.bytes_reused == 0


def test_removing_the_first_version_leaves_the_second_intact(env, hub, repo, read_tree):
    v1, main = repo
    first = env.prefetch(REPO, revision="v1")
    second = env.prefetch(REPO)
    assert second.status == "succeeded" and second.bytes_fetched == len(main[CHANGED])

    env.cli_in_process("artifacts", "rm", str(first.artifact)).ok()
    assert not artifact_dir(env, first).exists()
    assert_verifies(env, str(second.artifact))
    assert read_tree(artifact_dir(env, second)) == main
    resolved = env.cli_in_process("resolve", str(second.artifact), "--json").ok()
    assert resolved.returncode == 0

    # and the other way round: removing the newer version keeps the older one whole
    # v1 again (its version was removed): only its own CHANGED went with the first version
    third = env.prefetch(REPO, revision="v1")
    assert third.artifact == first.artifact and not third.reused
    assert third.bytes_fetched == len(v1[CHANGED])
    assert third.bytes_reused == sum(len(d) for p, d in v1.items() if p != CHANGED)
    env.cli_in_process("artifacts", "rm", str(second.artifact)).ok()
    assert_verifies(env, str(third.artifact))
    assert read_tree(artifact_dir(env, third)) == v1


def test_another_file_selection_of_the_same_commit_reuses(env, hub, repo, read_tree):
    _, main = repo
    full = env.prefetch(REPO)
    assert full.status == "succeeded"
    hub.reset_stats()
    subset = env.prefetch(REPO, include=["*.safetensors", "*.json"], exclude=["tokenizer*"])
    assert subset.status == "succeeded", subset.error
    assert subset.artifact.version != full.artifact.version
    assert served_files(hub, main) == {}  # not even a header from the hub
    wanted = {p: d for p, d in main.items() if p.endswith((".safetensors", ".json"))}
    wanted = {p: d for p, d in wanted.items() if not p.startswith("tokenizer")}
    assert read_tree(artifact_dir(env, subset)) == wanted
    assert subset.bytes_fetched == 0 and subset.bytes_reused == sum(map(len, wanted.values()))
    manifest = env.catalog().resolve(str(subset.artifact))
    assert (
        manifest.serving.parameters == env.catalog().resolve(str(full.artifact)).serving.parameters
    )


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
def test_a_stored_copy_damaged_after_the_index_was_built_is_fetched(
    env, hub, repo, read_tree, stage_hook, damage
):
    _, main = repo
    first = env.prefetch(REPO, revision="v1")
    target = artifact_dir(env, first) / "model-00001-of-00003.safetensors"
    small = artifact_dir(env, first) / "tokenizer.json"

    def on_stage(name: str) -> None:
        if name.startswith("fetching"):  # the index is built and the headers read by now
            for path in (target, small):
                if damage == "deleted":
                    path.unlink()
                else:
                    with open(path, "r+b") as f:  # same size, other bytes
                        f.seek(path.stat().st_size - 100)
                        f.write(b"\xff" * 100)

    hub.reset_stats()
    second = env.prefetch(REPO, progress=stage_hook(on_stage=on_stage))
    assert second.status == "succeeded", second.error
    assert set(served_files(hub, main)) == {CHANGED, target.name, small.name}
    assert read_tree(artifact_dir(env, second)) == main  # no wrong byte published
    assert_verifies(env, str(second.artifact))
    manifest = env.catalog().resolve(str(second.artifact))
    assert {e.path for e in manifest.files if e.origin is None} == {
        CHANGED,
        target.name,
        small.name,
    }
    assert second.bytes_fetched == len(main[CHANGED]) + len(main[target.name]) + len(
        main[small.name]
    )


def test_manifests_without_etags_still_reuse_lfs_files_after_a_rehash(env, hub, repo, read_tree):
    _, main = repo
    first = env.prefetch(REPO, revision="v1")
    # a manifest written before etags were recorded
    key = env.store / "manifests" / NAME / f"{first.artifact.version}.json"
    data = json.loads(key.read_text())
    for entry in data["files"]:
        for field in ("etag", "origin", "stored_etag"):
            entry.pop(field, None)
    key.write_text(json.dumps(data))
    # and one of its weight files damaged in place, same size: only a re-hash can tell
    damaged = artifact_dir(env, first) / "model-00003-of-00003.safetensors"
    with open(damaged, "r+b") as f:
        f.seek(damaged.stat().st_size - 10)
        f.write(b"\x00" * 10)

    hub.reset_stats()
    second = env.prefetch(REPO)
    assert second.status == "succeeded", second.error
    served = set(served_files(hub, main))
    # LFS files match by sha256; the small files have no etag to match: fetched
    small = {p for p in main if not p.endswith(".safetensors")}
    assert served == {CHANGED, damaged.name} | small, served
    assert read_tree(artifact_dir(env, second)) == main
    manifest = env.catalog().resolve(str(second.artifact))
    assert [e.path for e in manifest.files if e.origin] == ["model-00001-of-00003.safetensors"]


def test_a_rerun_resumes_reused_files_from_the_journal(env, hub, repo, read_tree, monkeypatch):
    _, main = repo
    env.prefetch(REPO, revision="v1")
    # the changed file's body arrives corrupted: the run fails after the others were reused
    # (slowly, so that the other files are long reused when it fails)
    fault = hub.inject(Fault("corrupt", path=f"*{CHANGED}", after_bytes=500_000, times=None))
    hub.inject(Fault("slow", path=f"*{CHANGED}", bytes_per_sec=2 << 20, times=None))
    failed = env.prefetch(REPO)
    assert failed.status == "failed" and "does not match" in failed.error
    assert fault.hits >= 1
    assert failed.bytes_fetched == 0 and failed.bytes_reused == sum(
        len(d) for p, d in main.items() if p != CHANGED
    )
    hub.clear_faults()

    from preheat.builtin.local import LocalStore

    copies = []
    real_copy = LocalStore.copy
    monkeypatch.setattr(
        LocalStore, "copy", lambda self, a, b: copies.append(b) or real_copy(self, a, b)
    )
    hub.reset_stats()
    rerun = env.prefetch(REPO)
    assert rerun.status == "succeeded", rerun.error
    assert copies == []  # every reused file was taken from the journal
    assert set(served_files(hub, main)) == {CHANGED}
    assert rerun.bytes_fetched == len(main[CHANGED])
    assert read_tree(artifact_dir(env, rerun)) == main
    manifest = env.catalog().resolve(str(rerun.artifact))
    assert len([e for e in manifest.files if e.origin]) == 7


def test_local_copy_links_then_clones_then_copies(tmp_path, monkeypatch):
    import errno

    from preheat.builtin import local
    from preheat.builtin.local import LocalStore
    from preheat.errors import NotFound
    from preheat.store import Store

    store = LocalStore(tmp_path / "store")
    store.put("a/src.bin", b"x" * 1000)
    info = store.copy("a/src.bin", "b/dst.bin")
    assert info.size == 1000 and store.read("b/dst.bin")[0] == b"x" * 1000
    src_ino = os.stat(store.local_path("a/src.bin")).st_ino
    assert os.stat(store.local_path("b/dst.bin")).st_ino == src_ino  # a hard link
    # a second copy onto the same inode leaves no stray name behind
    store.copy("a/src.bin", "b/dst.bin")
    assert not list((store.root / ".partial").iterdir())

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(local.os, "link", no_link)
    copied = store.copy("a/src.bin", "c/dst.bin")
    assert store.read("c/dst.bin")[0] == b"x" * 1000 and copied.etag != info.etag
    store.delete("a/src.bin")
    assert store.read("b/dst.bin")[0] == b"x" * 1000
    with pytest.raises(NotFound):
        store.copy("a/src.bin", "d/dst.bin")
    assert store.head("d/dst.bin") is None
    # the interface's default streams through the store's reader and writer
    streamed = Store.copy(store, "b/dst.bin", "e/dst.bin")
    assert streamed.size == 1000 and store.read("e/dst.bin")[0] == b"x" * 1000
    with pytest.raises(NotFound):
        Store.copy(store, "a/src.bin", "f/dst.bin")
