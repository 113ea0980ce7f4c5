"""Fetch only what changed, on object stores: reused files are copied on the server.

`ObstoreStore.copy` is checked on every backend (no byte through the client), then a
second revision that changes one file of eight is prefetched into SeaweedFS S3 through
the real CLI: the loopback hub's counters show only that file was fetched, the stored
objects are byte-identical to the hub's, removing the first version leaves the second
verifiable, another file selection reuses, a damaged stored copy is fetched instead,
and `gc` reports and removes what no manifest references.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

MiB = 1 << 20
CHANGED = "model-00002-of-00003.safetensors"
DROPPED = ("generation_config.json", "special_tokens_map.json")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- Store.copy


def test_copy_is_server_side_and_independent_of_its_source(make_store, monkeypatch):
    import obstore

    from preheat.api import NotFound

    store = make_store()
    data = os.urandom(3 * MiB + 7)
    store.put("a/src.bin", data)
    store.put("b/dst.bin", b"old")

    def through_the_client(*args, **kwargs):
        raise AssertionError("copy moved the bytes through this process")

    monkeypatch.setattr(obstore, "get", through_the_client)
    monkeypatch.setattr(obstore, "get_range", through_the_client)
    monkeypatch.setattr(obstore, "put", through_the_client)
    monkeypatch.setattr(obstore, "open_writer", through_the_client)
    info = store.copy("a/src.bin", "b/dst.bin")  # replaces what was there
    monkeypatch.undo()
    assert info.key == "b/dst.bin" and info.size == len(data) and info.etag
    assert store.read("b/dst.bin")[0] == data
    store.delete("a/src.bin")
    assert store.read("b/dst.bin")[0] == data
    with pytest.raises(NotFound):
        store.copy("a/src.bin", "c/dst.bin")
    assert store.head("c/dst.bin") is None


@pytest.mark.s3
@pytest.mark.parametrize("name", ["moto", "seaweedfs"])
def test_objects_over_the_copy_limit_are_copied_part_by_part(object_servers, monkeypatch, name):
    import uuid

    from preheat_storage import store as store_module
    from preheat_storage.store import ObstoreStore

    server = object_servers.get(name)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store_module, "_S3_COPY_MAX", 5 * MiB)  # as if 12 MiB were over 5 GiB
    store = ObstoreStore(server.url(f"t-{uuid.uuid4().hex[:10]}"), options={"part_size": "5MiB"})
    try:
        data = os.urandom(12 * MiB + 3)
        store.put("big.bin", data)
        info = store.copy("big.bin", "copy/big.bin")
        assert info.size == len(data)
        assert store.read("copy/big.bin")[0] == data
        assert store.gc(older_than=0) == 0  # the multipart copy left no upload open
    finally:
        store.close()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def s3(e2e):
    return e2e.server("seaweedfs")


@pytest.fixture
def revisions(e2e):
    """A repo of eight files whose main changes one weight file of its tag v1."""
    from preheat_testing.models import build_case

    files = dict(build_case("llama_multipart").files)
    for path in DROPPED:
        del files[path]
    assert len(files) == 8
    main = dict(files)
    data = bytearray(main[CHANGED])
    data[-4096:] = bytes((b + 1) % 256 for b in data[-4096:])
    main[CHANGED] = bytes(data)
    repo = f"e2e/reuse-{os.urandom(3).hex()}"
    e2e.hub.add_repo(repo, files, tags=["v1"])
    e2e.hub.add_revision(repo, main, branch="main", title="retrain one shard")
    return repo, files, main


METADATA = ("config.json", "README.md")  # read from the hub by every run, for metadata


def served(e2e, repo: str, since: int, files: dict[str, bytes]) -> dict[str, int]:
    """Body bytes the hub and its CDN sent per file of `repo` since the mark, less the one
    metadata read of config.json and README.md."""
    out: dict[str, int] = {}
    for r in e2e.repo_requests(repo, since):
        if r.file and r.body_bytes:
            out[r.file] = out.get(r.file, 0) + r.body_bytes
    for path in METADATA:
        assert out.get(path, 0) >= len(files[path]), (path, out.get(path))
        out[path] -= len(files[path])
        if not out[path]:
            del out[path]
    return out


def stored(e2e, server, url: str, name: str, version: str) -> dict[str, bytes]:
    prefix = f"artifacts/{name}/{version}/"
    return {
        k[len(prefix) :]: e2e.read(server, url, k)
        for k in e2e.objects(server, url)
        if k.startswith(prefix)
    }


def verify(e2e, server, url: str, name: str, version: str) -> dict:
    """Every object of the version re-hashed against its manifest; the manifest."""
    manifest = json.loads(e2e.read(server, url, f"manifests/{name}/{version}.json"))
    for entry in manifest["files"]:
        data = e2e.read(server, url, f"artifacts/{name}/{version}/{entry['path']}")
        assert len(data) == entry["size"] and sha256(data) == entry["sha256"], entry["path"]
    return manifest


@pytest.mark.s3
def test_a_new_revision_on_s3_fetches_only_the_changed_file(e2e, s3, revisions):
    repo, v1, main = revisions
    url = e2e.url(s3, f"reuse-{os.urandom(3).hex()}")
    store = ("--store", url)
    machine = e2e.machine(s3)
    first = machine.cli(
        "prefetch", "hf-model", repo, "--revision", "v1", *store, "--wait", "--json"
    )
    first = first.ok().json
    assert first["bytes_fetched"] == sum(map(len, v1.values())) and first["bytes_reused"] == 0

    mark = e2e.mark()
    second = machine.cli("prefetch", "hf-model", repo, *store, "--wait", "--json").ok().json
    assert second["status"] == "succeeded" and second["reused"] is False
    got = served(e2e, repo, mark, main)
    assert set(got) == {CHANGED}, got
    assert got[CHANGED] <= len(main[CHANGED]) + (64 << 10) + 4096
    assert second["bytes_fetched"] == len(main[CHANGED])
    assert second["bytes_reused"] == sum(len(d) for p, d in main.items() if p != CHANGED)
    name, v1_version = first["artifact"]["name"], first["artifact"]["version"]
    version = second["artifact"]["version"]
    assert stored(e2e, s3, url, name, version) == main  # byte-identical to the hub's
    manifest = verify(e2e, s3, url, name, version)
    origins = {f["path"]: f["origin"] for f in manifest["files"]}
    assert origins.pop(CHANGED) is None
    assert set(origins.values()) == {f"{name}:{v1_version}"}
    assert not [k for k in e2e.objects(s3, url) if k.startswith("staging/")]

    # removing the first version leaves the second intact: server-side copies are objects
    machine.cli("artifacts", "rm", f"{name}:{v1_version}", *store).ok()
    assert stored(e2e, s3, url, name, v1_version) == {}
    verify(e2e, s3, url, name, version)
    assert stored(e2e, s3, url, name, version) == main

    # another file selection of the same commit: nothing from the hub, not even a header
    mark = e2e.mark()
    subset = machine.cli(
        "prefetch", "hf-model", repo, *store, "--include", "*.safetensors",
        "--include", "config.json", "--wait", "--json",
    ).ok().json  # fmt: skip
    assert served(e2e, repo, mark, main) == {}
    assert subset["bytes_fetched"] == 0
    wanted = {p: d for p, d in main.items() if p.endswith(".safetensors") or p == "config.json"}
    assert stored(e2e, s3, url, name, subset["artifact"]["version"]) == wanted

    # gc: nothing unreferenced; a stray object is reported, then removed with --apply
    assert machine.cli("gc", *store, "--json").ok().json["unreferenced"]["keys"] == []
    import obstore

    stray = f"artifacts/{name}/{version}/stray.bin"
    obstore.put(e2e.raw(s3), e2e.key_prefix(url) + stray, b"stray")
    ghost = "artifacts/ghost/00000000-00/model.safetensors"
    obstore.put(e2e.raw(s3), e2e.key_prefix(url) + ghost, b"ghost")
    found = machine.cli("gc", *store, "--older-than", "0s", "--json").ok().json
    assert sorted(found["unreferenced"]["keys"]) == sorted([stray, ghost])
    assert found["unreferenced"]["removed"] == 0
    applied = machine.cli("gc", *store, "--older-than", "0s", "--apply", "--json").ok().json
    assert applied["unreferenced"]["removed"] == 2
    keys = e2e.objects(s3, url)
    assert stray not in keys and ghost not in keys
    verify(e2e, s3, url, name, version)


@pytest.mark.s3
@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
def test_a_damaged_stored_copy_on_s3_is_fetched_instead(
    e2e, s3, revisions, monkeypatch, tmp_path, damage
):
    import obstore

    from preheat_testing.core import prefetch_here

    repo, v1, main = revisions
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_ENDPOINT", e2e.hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("PREHEAT_HOME", str(tmp_path / "home"))
    url = e2e.url(s3, f"damaged-{os.urandom(3).hex()}")
    first = prefetch_here(url, repo=repo, revision="v1")
    assert first.status == "succeeded", first.error
    target = "model-00001-of-00003.safetensors"
    key = e2e.key_prefix(url) + f"artifacts/{first.artifact.name}/{first.artifact.version}/{target}"

    class Damage:
        def stage(self, name: str, total: int) -> None:
            if name.startswith("fetching"):  # the index is built and the headers read by now
                if damage == "deleted":
                    obstore.delete(e2e.raw(s3), key)
                else:
                    data = bytearray(v1[target])
                    data[-10:] = b"\x00" * 10
                    obstore.put(e2e.raw(s3), key, bytes(data))

        def advance(self, n: int) -> None:
            pass

    mark = e2e.mark()
    second = prefetch_here(url, repo=repo, progress=Damage())
    assert second.status == "succeeded", second.error
    assert set(served(e2e, repo, mark, main)) == {CHANGED, target}
    assert second.bytes_fetched == len(main[CHANGED]) + len(main[target])
    name, version = second.artifact.name, second.artifact.version
    assert stored(e2e, s3, url, name, version) == main  # no wrong byte published
    manifest = verify(e2e, s3, url, name, version)
    assert {f["path"] for f in manifest["files"] if f["origin"] is None} == {CHANGED, target}
