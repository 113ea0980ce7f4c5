"""`preheat resolve REF --hf-cache`: an artifact written into a Hugging Face hub cache.

huggingface_hub itself is the judge: `scan_cache_dir` must report the repo and revision with
no warnings, and `hf_hub_download` / `snapshot_download` with `HF_HUB_OFFLINE=1` must find
the files by repo id, in a fresh process, with no network (the endpoint is a dead port and
the loopback hub sees no request).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

OFFLINE_CHECK = r"""
import hashlib, json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download

repo, commit, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {"files": {}, "snapshot": None}
for revision in (commit, "main"):
    for name in files:
        with open(hf_hub_download(repo, name, revision=revision, local_files_only=True), "rb") as f:
            out["files"][f"{revision}:{name}"] = hashlib.sha256(f.read()).hexdigest()
out["snapshot"] = snapshot_download(repo, local_files_only=True)
out["snapshot_at_commit"] = snapshot_download(repo, revision=commit, local_files_only=True)
print(json.dumps(out))
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def publish(preheat_env, hub, tiny_model):
    """`publish(repo, files=None)`: put files (default: a tiny model with subfolders) on the hub
    and prefetch them; returns (manifest, files)."""
    preheat_env.connect(hub)

    def make(repo: str, files: dict | None = None, *, new_revision: bool = False):
        files = files if files is not None else tiny_model("mistral_subfolders_fp32").files
        if new_revision:
            hub.add_revision(repo, files)
        else:
            hub.add_repo(repo, files)
        record = preheat_env.prefetch(repo)
        assert record.status == "succeeded", record.error
        manifest = preheat_env.catalog().manifest(record.artifact.name, record.artifact.version)
        return manifest, files

    return make


def hub_etag(hub, repo: str, path: str, revision: str) -> str:
    entry = hub.tree_entry(repo, path, revision)
    return entry["lfs"]["oid"] if entry.get("lfs") else entry["oid"]


def offline(preheat_env, repo: str, commit: str, files, hub_cache: Path | None = None) -> dict:
    """Look the files up as an offline tool would, in a fresh process."""
    env = {**preheat_env.env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(hub_cache)
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHECK, repo, commit, json.dumps(sorted(files))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def scan(hub_cache: Path):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_cache)
    assert info.warnings == [], info.warnings
    return {r.repo_id: r for r in info.repos}


def test_offline_tools_find_the_artifact_by_repo_id(preheat_env, hub, publish):
    repo = "org/offline-model"
    manifest, files = publish(repo)
    commit = hub.commit_sha(repo)
    assert (manifest.source.repo, manifest.source.commit) == (repo, commit)
    requests = len(hub.requests)

    data = preheat_env.cli("resolve", manifest.name, "--hf-cache", "--json").ok().json
    hub_cache = preheat_env.hf_home / "hub"  # the default: $HF_HOME/hub
    repo_dir = hub_cache / "models--org--offline-model"
    snapshot = repo_dir / "snapshots" / commit
    assert data["path"] == str(snapshot) and data["hf_cache"]["snapshot"] == str(snapshot)
    assert data["hf_cache"] | {"linked": None} == {
        "dir": str(hub_cache),
        "repo": repo,
        "commit": commit,
        "revision": "main",
        "snapshot": str(snapshot),
        "linked": None,
        "copied": 0,
        "reused": 0,
    }
    assert data["hf_cache"]["linked"] == len(files), "a local store's files are hard-linked"

    # the layout is huggingface_hub's own: blobs named by the hub's etag, relative symlinks
    assert (repo_dir / "refs" / "main").read_text() == commit
    for path, body in files.items():
        link = snapshot / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        blob = link.resolve()
        assert blob.parent == (repo_dir / "blobs").resolve()
        assert blob.name == hub_etag(hub, repo, path, commit), path
        assert blob.read_bytes() == body
        stored = preheat_env.store / "artifacts" / manifest.name / manifest.version / path
        assert blob.stat().st_ino == stored.stat().st_ino
    assert any("/" in p for p in files), "the model has files in subfolders"

    cached = scan(hub_cache)[repo]
    (revision,) = cached.revisions
    assert (revision.commit_hash, revision.refs) == (commit, frozenset({"main"}))
    assert {f.file_name for f in revision.files} == {p.rsplit("/", 1)[-1] for p in files}
    assert revision.size_on_disk == sum(len(b) for b in files.values())

    found = offline(preheat_env, repo, commit, files)
    expected = {f"{rev}:{p}": sha256(b) for rev in (commit, "main") for p, b in files.items()}
    assert found["files"] == expected
    assert found["snapshot"] == found["snapshot_at_commit"] == str(snapshot)
    assert len(hub.requests) == requests, "an offline lookup reached the hub"

    # again: every blob is already there
    again = preheat_env.cli_in_process("resolve", manifest.name, "--hf-cache", "--json").ok().json
    assert again["hf_cache"]["reused"] == len(files) and again["hf_cache"]["linked"] == 0


def test_a_new_commit_is_merged_beside_the_old_one(preheat_env, hub, publish, tmp_path):
    repo = "org/merged-model"
    hub_cache = tmp_path / "hub-cache"
    old, old_files = publish(repo)
    old_commit = hub.commit_sha(repo)
    preheat_env.cli_in_process("resolve", old.name, "--hf-cache-dir", str(hub_cache), "--json").ok()
    new_files = {**old_files, "config.json": old_files["config.json"] + b"\n", "extra.txt": b"x"}
    new, _ = publish(repo, new_files, new_revision=True)
    new_commit = hub.commit_sha(repo)
    assert new_commit != old_commit and new.version != old.version
    data = (
        preheat_env.cli_in_process("resolve", new.name, "--hf-cache-dir", str(hub_cache), "--json")
        .ok()
        .json
    )
    assert data["hf_cache"]["reused"] == len(old_files) - 1, "unchanged files share their blob"

    repo_dir = hub_cache / "models--org--merged-model"
    assert (repo_dir / "refs" / "main").read_text() == new_commit
    cached = scan(hub_cache)[repo]
    revisions = {r.commit_hash: r.refs for r in cached.revisions}
    assert revisions == {old_commit: frozenset(), new_commit: frozenset({"main"})}
    etags = {hub_etag(hub, repo, p, old_commit) for p in old_files}
    etags |= {hub_etag(hub, repo, p, new_commit) for p in new_files}
    assert {p.name for p in (repo_dir / "blobs").iterdir()} == etags

    found = offline(preheat_env, repo, old_commit, ["config.json"], hub_cache)
    assert found["files"][f"{old_commit}:config.json"] == sha256(old_files["config.json"])
    assert found["files"]["main:config.json"] == sha256(new_files["config.json"])
    assert found["snapshot"] == str(repo_dir / "snapshots" / new_commit)


def test_a_remote_store_gives_verified_copies_and_old_manifests_get_the_hub_etags(
    preheat_env, hub, publish, tmp_path
):
    from preheat.builtin.local import LocalStore
    from preheat.catalog import Catalog
    from preheat.hfcache import export_hf_cache

    class RemoteLooking(LocalStore):
        def local_path(self, key):
            return None

    repo = "org/copied-model"
    manifest, files = publish(repo)
    commit = manifest.source.commit
    # a manifest written before etags were recorded
    old = attrs.evolve(manifest, files=tuple(attrs.evolve(f, etag=None) for f in manifest.files))
    done = export_hf_cache(Catalog(RemoteLooking(preheat_env.store)), old, tmp_path / "hub")
    assert (done.copied, done.linked, done.reused) == (len(files), 0, 0)
    for path, body in files.items():
        blob = (done.snapshot / path).resolve()
        assert blob.name == hub_etag(hub, repo, path, commit) and blob.read_bytes() == body
        assert blob.stat().st_nlink == 1
    assert not [p for p in (tmp_path / "hub").rglob("*preheat*")], "no staging left behind"
    scan(tmp_path / "hub")

    # a damaged store file is refused, and nothing is left under its blob name
    victim = next(e for e in manifest.files if e.path.endswith(".safetensors"))
    stored = preheat_env.store / "artifacts" / manifest.name / manifest.version / victim.path
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    from preheat.errors import PreheatError

    with pytest.raises(PreheatError, match="does not match its manifest sha256"):
        export_hf_cache(Catalog(RemoteLooking(preheat_env.store)), old, tmp_path / "hub2")
    assert not (tmp_path / "hub2" / "models--org--copied-model" / "blobs" / victim.sha256).exists()


def test_the_lfs_rule_for_manifests_without_etags():
    from preheat.hfcache import is_lfs_like

    assert is_lfs_like("model-00001-of-00002.safetensors", 10)
    assert is_lfs_like("sub/pytorch_model.bin", 10) and is_lfs_like("x.gguf", 1)
    assert is_lfs_like("tokenizer.model", 100) and is_lfs_like("saved_model/a/b.pb", 1)
    assert not is_lfs_like("config.json", 2000) and not is_lfs_like("README.md", 10)
    assert is_lfs_like("tokenizer.json", 10 * 2**20 + 1)
    assert not is_lfs_like("tokenizer.json", 10 * 2**20)


def test_a_sharded_artifact_is_refused(preheat_env, publish, tmp_path):
    from preheat.catalog import Catalog
    from preheat.errors import PreheatError
    from preheat.hfcache import export_hf_cache
    from preheat.models import ShardSpec

    manifest, _ = publish("org/sharded-model")
    sharded = attrs.evolve(
        manifest,
        shard=ShardSpec(
            engine="vllm", tensor_parallel_size=2, dtype="bfloat16", method="cpu", file_pattern="x"
        ),
    )
    with pytest.raises(PreheatError, match="is pre-sharded for vllm tp=2"):
        export_hf_cache(Catalog(preheat_env.catalog().store), sharded, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_a_cache_dir_that_is_not_writable_is_one_line(preheat_env, publish, tmp_path):
    manifest, _ = publish("org/readonly-model")
    if os.geteuid() == 0:
        target = Path("/sys/preheat-test-hub")  # root ignores modes; sysfs refuses
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "hub"
    line = preheat_env.cli("resolve", manifest.name, "--hf-cache-dir", str(target)).error_line()
    assert f"cannot write the Hugging Face cache {target}" in line


def test_hf_cache_conflicts_with_other_destinations(preheat_env, publish, tmp_path):
    manifest, _ = publish("org/conflict-hf-model")
    result = preheat_env.cli_in_process(
        "resolve", manifest.name, "--cache", "--hf-cache-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "--cache and --hf-cache cannot be combined" in result.error_line()
