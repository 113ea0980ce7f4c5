"""The built-in local store: conditional writes under races, streaming writers, resume, listing."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from preheat.builtin.local import LocalStore
from preheat.errors import PreconditionFailed, PreheatError


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def race(n: int, fn):
    """Run fn(i) for i in range(n) on n threads released together; return results or exceptions."""
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


# --------------------------------------------------------------------------- put, read, head


def test_put_read_head_round_trip(store):
    info = store.put("a/b/c.json", b"hello")
    assert info.size == 5 and info.etag
    data, etag = store.read("a/b/c.json")
    assert data == b"hello" and etag == info.etag
    assert store.head("a/b/c.json") == info
    assert store.read_range("a/b/c.json", 1, 3) == b"ell"
    assert b"".join(store.open_reader("a/b/c.json", chunk_size=2)) == b"hello"
    assert store.read("a/b/missing") is None and store.head("a/b/missing") is None
    assert store.head("a/b") is None, "a directory is not an object"


def test_overwrite_changes_the_etag(store):
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert first.etag != second.etag
    assert store.read("k") == (b"two", second.etag)


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/"])
def test_keys_that_could_escape_the_root_are_refused(store, key):
    with pytest.raises(PreheatError, match="invalid store key"):
        store.put(key, b"x")


def test_put_if_absent_race_has_exactly_one_winner(store):
    for round_ in range(5):
        key = f"manifests/m/v{round_}.json"
        outcomes = race(
            16, lambda i, key=key: store.put(key, f"writer-{i:02d}".encode(), if_absent=True)
        )
        winners = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
        assert len(winners) == 1, outcomes
        assert all(
            isinstance(o, PreconditionFailed) for i, o in enumerate(outcomes) if i not in winners
        )
        assert store.read(key)[0] == f"writer-{winners[0]:02d}".encode()
    assert not [p for p in (store.root / "manifests" / "m").iterdir() if p.name.startswith(".put-")]


def test_put_if_match_is_compare_and_swap(store):
    v1 = store.put("alias.json", b'{"version": "1"}')
    v2 = store.put("alias.json", b'{"version": "2"}', if_match=v1.etag)
    with pytest.raises(PreconditionFailed):
        store.put("alias.json", b'{"version": "3"}', if_match=v1.etag)
    assert store.read("alias.json")[0] == b'{"version": "2"}'
    with pytest.raises(PreconditionFailed):
        store.put("missing.json", b"x", if_match=v2.etag)
    assert store.read("missing.json") is None


def test_concurrent_compare_and_swap_loses_no_update(store):
    """Threads increment a counter by read + CAS; every increment must survive."""
    store.put("counter.json", json.dumps({"n": 0}).encode())
    threads, each = 8, 40

    def increment(_):
        for _ in range(each):
            while True:
                data, etag = store.read("counter.json")
                body = json.dumps({"n": json.loads(data)["n"] + 1}).encode().ljust(16)
                try:
                    store.put("counter.json", body, if_match=etag)
                    break
                except PreconditionFailed:
                    continue

    assert race(threads, increment) == [None] * threads
    assert json.loads(store.read("counter.json")[0])["n"] == threads * each


# --------------------------------------------------------------------------- streaming writers


def test_a_writer_becomes_visible_only_on_commit(store):
    writer = store.open_writer("artifacts/m/v/model.safetensors")
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    assert store.head("artifacts/m/v/model.safetensors") is None
    assert [i.key for i in store.list("")] == []
    info = writer.commit()
    assert info.size == 6
    assert store.read("artifacts/m/v/model.safetensors")[0] == b"abcdef"
    assert [i.key for i in store.list("artifacts/")] == ["artifacts/m/v/model.safetensors"]


def test_an_aborted_writer_leaves_nothing(store):
    with pytest.raises(RuntimeError), store.open_writer("k") as writer:
        writer.write(b"half")
        raise RuntimeError("interrupted")
    assert store.head("k") is None
    assert not list((store.root / ".partial").iterdir())


def test_a_resumable_writer_keeps_its_bytes_for_the_next_attempt(store):
    first = store.open_writer("big.bin", resume=True)
    assert first.offset == 0 and list(first.existing()) == []
    first.write(b"0123456789")
    first.abort()
    assert store.head("big.bin") is None

    second = store.open_writer("big.bin", resume=True)
    assert second.offset == 10
    assert b"".join(second.existing()) == b"0123456789"
    second.write(b"abcdef")
    second.commit()
    assert store.read("big.bin")[0] == b"0123456789abcdef"
    assert store.open_writer("big.bin", resume=True).offset == 0, "a commit consumes the partial"


def test_discard_drops_resumable_bytes(store):
    writer = store.open_writer("bad.bin", resume=True)
    writer.write(b"wrong bytes")
    writer.discard()
    assert store.open_writer("bad.bin", resume=True).offset == 0


def test_resumable_writers_of_different_keys_do_not_share_bytes(store):
    a = store.open_writer("a.bin", resume=True)
    a.write(b"aaaa")
    a.abort()
    assert store.open_writer("b.bin", resume=True).offset == 0
    assert store.open_writer("a.bin", resume=True).offset == 4


def test_gc_removes_partial_files(store):
    for key in ("x", "y"):
        w = store.open_writer(key, resume=True)
        w.write(b"partial")
        w.abort()
    assert store.gc() == 2
    assert store.open_writer("x", resume=True).offset == 0


# --------------------------------------------------------------------------- list and delete


def test_list_matches_key_prefixes_and_hides_internal_files(store):
    for key in (
        "runs/r1.json",
        "runs/r10.json",
        "runs/r2.json",
        "manifests/m/v1.json",
        "aliases/m/latest.json",
    ):
        store.put(key, b"{}")
    w = store.open_writer("runs/r3.json", resume=True)
    w.write(b"{")
    w.abort()
    with store._key_lock("runs/r1.json"):
        pass
    assert [i.key for i in store.list("runs/r1")] == ["runs/r1.json", "runs/r10.json"]
    assert [i.key for i in store.list("runs/")] == ["runs/r1.json", "runs/r10.json", "runs/r2.json"]
    assert sorted(i.key for i in store.list("")) == sorted(
        [
            "runs/r1.json",
            "runs/r10.json",
            "runs/r2.json",
            "manifests/m/v1.json",
            "aliases/m/latest.json",
        ]
    )
    assert list(store.list("nothing/")) == []


def test_delete_prunes_empty_directories_but_not_the_root(store):
    store.put("a/b/c/d.json", b"1")
    store.put("a/keep.json", b"2")
    store.delete("a/b/c/d.json")
    assert not (store.root / "a" / "b").exists()
    assert (store.root / "a" / "keep.json").exists()
    store.delete("a/keep.json")
    store.delete("a/keep.json")  # already gone: no error
    assert store.root.is_dir() and not (store.root / "a").exists()


def test_delete_prefix_removes_everything_under_it(store):
    for i in range(3):
        store.put(f"artifacts/m/v1/f{i}", b"x")
    store.put("artifacts/m/v10/f", b"y")
    assert store.delete_prefix("artifacts/m/v1/") == 3
    assert not (store.root / "artifacts" / "m" / "v1").exists()
    assert [i.key for i in store.list("artifacts/")] == ["artifacts/m/v10/f"]


# --------------------------------------------------------------------------- urls and paths


def test_urls_and_paths(tmp_path):
    plain = LocalStore(tmp_path / "s")
    assert LocalStore.from_url(plain.url).root == plain.root
    assert LocalStore.from_url(str(tmp_path / "s")).root == plain.root
    assert LocalStore.from_url("file://localhost" + str(tmp_path / "s")).root == plain.root
    spaced = LocalStore.from_url((tmp_path / "with space").as_uri())
    assert spaced.root == tmp_path / "with space"
    with pytest.raises(PreheatError, match="file:///absolute/path"):
        LocalStore.from_url("file://otherhost/data")
    assert plain.local_path("artifacts/m/v") == tmp_path / "s" / "artifacts" / "m" / "v"
    assert plain.uri("artifacts/m/v") == (tmp_path / "s" / "artifacts" / "m" / "v").as_uri()


def test_free_bytes_before_the_store_exists(tmp_path):
    store = LocalStore(tmp_path / "not" / "yet")
    free = store.free_bytes()
    assert (
        isinstance(free, int)
        and 0 < free <= os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    )


# --------------------------------------------------------------------------- the catalog on top


def test_catalog_publishes_a_manifest_once_and_moves_aliases_atomically(store):
    from preheat.catalog import Catalog
    from preheat.models import Manifest, Source

    catalog = Catalog(store)
    source = Source(type="hf", repo="o/m", revision="main", commit="c" * 40)

    def publish(i):
        manifest = Manifest(
            name="m", version="v1", created=f"2026-01-01T00:00:{i:02d}Z", source=source, files=()
        )
        return catalog.publish_manifest(manifest)

    assert sorted(race(8, publish)) == [False] * 7 + [True]
    race(8, lambda i: catalog.set_alias("m", "latest", f"v{i}"))
    assert catalog.alias("m", "latest") in {f"v{i}" for i in range(8)}
    assert json.loads(store.read("aliases/m/latest.json")[0])["version"] == catalog.alias(
        "m", "latest"
    )
