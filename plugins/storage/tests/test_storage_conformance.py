"""The Store contract, checked against memory://, moto, SeaweedFS and Azurite."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from preheat.api import NotFound, ObjectInfo, PreconditionFailed

MiB = 1 << 20


def test_put_read_head_delete(store):
    info = store.put("a/b.txt", b"hello")
    assert info == ObjectInfo("a/b.txt", 5, info.etag) and info.etag
    assert store.head("a/b.txt") == info
    assert store.read("a/b.txt") == (b"hello", info.etag)
    store.put("a/b.txt", b"bye")
    assert store.read("a/b.txt")[0] == b"bye"
    store.delete("a/b.txt")
    assert store.head("a/b.txt") is None
    assert store.read("a/b.txt") is None
    store.delete("a/b.txt")  # already gone: no error
    assert store.local_path("a/b.txt") is None


def test_empty_object(store):
    assert store.put("empty", b"").size == 0
    assert store.read("empty")[0] == b""
    assert store.read_range("empty", 0, 10) == b""
    assert list(store.open_reader("empty")) == []


def test_uri_and_prefix(store, backend):
    assert store.uri("x/y.bin") == f"{store.url}/x/y.bin"
    assert store.url == backend.url(store.url.split("/", 3)[3])


def test_read_range(store):
    data = bytes(range(256)) * 4
    store.put("r.bin", data)
    assert store.read_range("r.bin", 0, 10) == data[:10]
    assert store.read_range("r.bin", 1000, 100) == data[1000:]  # fewer only at the end
    assert store.read_range("r.bin", 1024, 10) == b""
    assert store.read_range("r.bin", 5000, 10) == b""
    assert store.read_range("r.bin", 7, 0) == b""
    with pytest.raises(NotFound):
        store.read_range("missing.bin", 0, 1)


def test_read_ranges(store):
    data = os.urandom(3 * MiB)
    store.put("rr.bin", data)
    ranges = [(0, 10), (MiB, 4096), (5, 5), (3 * MiB - 3, 100), (3 * MiB + 10, 4), (2 * MiB, MiB)]
    got = store.read_ranges("rr.bin", ranges)
    assert got == [data[s : s + n] for s, n in ranges]
    assert store.read_ranges("rr.bin", []) == []
    with pytest.raises(NotFound):
        store.read_ranges("missing.bin", [(0, 1)])


@pytest.fixture(params=["one GET", "ranged GETs"])
def reading(request, monkeypatch):
    """Objects read with one streaming GET (up to `STREAM_MAX`), or with ranged GETs."""
    from preheat_storage import reader

    if request.param == "ranged GETs":
        monkeypatch.setattr(reader, "STREAM_MAX", 0)
    return request.param


def test_open_reader_streams_in_chunks(store, reading):
    data = os.urandom(5 * MiB + 123)
    store.put("stream.bin", data)
    chunks = list(store.open_reader("stream.bin", chunk_size=MiB))
    if reading == "ranged GETs":
        assert [len(c) for c in chunks] == [MiB] * 5 + [123]
    else:
        assert all(len(c) >= MiB for c in chunks[:-1]) and len(chunks) <= 6
    assert b"".join(chunks) == data
    with pytest.raises(NotFound):
        store.open_reader("missing.bin")


def test_list_is_recursive_and_string_prefixed(store, make_store):
    for key in ["a/b", "a/b/c", "a/bc", "a/b.txt", "ab", "z/1"]:
        store.put(key, b"x")
    nested = make_store("sib")  # a store nested under this one: its keys show up here
    nested.put("a/b", b"y")

    def keys(prefix):
        return sorted(info.key for info in store.list(prefix))

    assert keys("") == ["a/b", "a/b.txt", "a/b/c", "a/bc", "ab", "sib/a/b", "z/1"]
    assert keys("a/b") == ["a/b", "a/b.txt", "a/b/c", "a/bc"]
    assert keys("a/b/") == ["a/b/c"]
    assert keys("a") == ["a/b", "a/b.txt", "a/b/c", "a/bc", "ab"]
    assert keys("a/bc") == ["a/bc"]
    assert keys("nothing/") == []
    assert keys("q") == []
    assert all(isinstance(i, ObjectInfo) and i.size == 1 for i in store.list("a/"))


def test_store_prefix_isolates(make_store):
    one, two = make_store("one"), make_store("one-two")
    one.put("k", b"1")
    two.put("k", b"2")
    assert [i.key for i in one.list("")] == ["k"]
    assert one.read("k")[0] == b"1" and two.read("k")[0] == b"2"


def test_etags_agree(store):
    put = store.put("e", b"etag")
    listed = next(iter(store.list("e")))
    assert put.etag == store.head("e").etag == store.read("e")[1] == listed.etag


def test_delete_prefix(store):
    for i in range(5):
        store.put(f"d/{i}", b"x")
    store.put("keep", b"x")
    assert store.delete_prefix("d/") == 5
    assert [i.key for i in store.list("")] == ["keep"]


def test_writer_visible_only_after_commit(store):
    part = os.urandom(MiB)
    digest = hashlib.sha256()
    with store.open_writer("big/model.safetensors") as writer:
        assert writer.offset == 0 and list(writer.existing()) == []
        for i in range(20):  # 20 MiB: several multipart parts
            chunk = part[i:] + part[:i]
            writer.write(memoryview(chunk))
            digest.update(chunk)
        assert store.head("big/model.safetensors") is None
        info = writer.commit()
    assert info.size == 20 * MiB and info.etag == store.head("big/model.safetensors").etag
    got = hashlib.sha256()
    for chunk in store.open_reader("big/model.safetensors"):
        got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()


def test_writer_copies_reused_buffers(store):
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    with store.open_writer("reused.bin") as writer:
        for i in range(12):  # past one part, so some parts upload while later writes land
            buffer[:] = bytes([i]) * MiB
            writer.write(view)
        writer.commit()
    data = store.read("reused.bin")[0]
    assert [data[i * MiB] for i in range(12)] == list(range(12))


def test_writers_reuse_part_buffers_only_once_released(make_store):
    """Writers share the store's part buffers: a buffer is refilled only once no upload (nor
    a memory store's object) holds it, and a store keeps a bounded number of them."""
    store = make_store(part_size="5MiB", max_concurrency=2)
    datas = {f"f{i}": os.urandom(21 * MiB + i) for i in range(6)}

    def write(names):
        chunk = bytearray(3 * MiB)
        for name in names:
            data = datas[name]
            with store.open_writer(name) as writer:
                for start in range(0, len(data), len(chunk)):
                    piece = data[start : start + len(chunk)]
                    chunk[: len(piece)] = piece  # the caller reuses its buffer too
                    writer.write(memoryview(chunk)[: len(piece)])
                writer.commit()

    write(["f0", "f1"])
    threads = [threading.Thread(target=write, args=([f"f{i}"],)) for i in range(2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, data in datas.items():
        assert store.read(name)[0] == data, name
    assert len(store._parts._buffers) <= 4


def test_writer_abort_leaves_nothing(store, backend):
    writer = store.open_writer("big/aborted.bin")
    for _ in range(20):
        writer.write(os.urandom(MiB))
    writer.abort()
    writer.abort()  # idempotent
    assert store.head("big/aborted.bin") is None
    with pytest.raises(RuntimeError), store.open_writer("big/ctx.bin") as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    assert store.head("big/ctx.bin") is None
    if backend.kind == "s3":
        assert [u.key for u in _uploads(store)] == []


def test_writer_small_and_resume(store):
    writer = store.open_writer("small", resume=True)
    assert writer.offset == 0
    writer.write(b"abc")
    assert writer.commit().size == 3
    assert store.read("small")[0] == b"abc"


def test_put_if_absent(store):
    store.put("once", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("once", b"2", if_absent=True)
    assert store.read("once")[0] == b"1"


def _race(*calls) -> list[str]:
    """Run `calls` at the same instant; each outcome is "won" or "lost" (PreconditionFailed)."""
    barrier = threading.Barrier(len(calls))
    results: list[str] = []

    def run(call):
        barrier.wait()
        try:
            call()
            results.append("won")
        except PreconditionFailed:
            results.append("lost")

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def test_put_if_absent_race(store):
    for r in range(5):
        key = f"race/{r}"
        outcome = _race(*(lambda k=key, v=v: store.put(k, v, if_absent=True) for v in (b"a", b"b")))
        assert outcome == ["lost", "won"]


def test_cas_race_has_one_winner(store):
    base = store.put("cas", b"0")
    values = (b"1", b"22", b"333")
    outcome = _race(*(lambda v=v: store.put("cas", v, if_match=base.etag) for v in values))
    assert outcome == ["lost", "lost", "won"]
    assert store.read("cas")[0] in values


def test_conditional_writes_off_is_best_effort(make_store):
    store = make_store(conditional_writes=False)
    first = store.put("k", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"2", if_absent=True)
    store.put("k", b"2", if_match=first.etag)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"3", if_match=first.etag)


def test_gc(make_store, backend):
    store = make_store(part_size="5MiB")
    if backend.kind != "s3":
        assert store.gc() == 0
        return
    orphan = store.open_writer("orphan.bin")
    orphan.write(os.urandom(6 * MiB))  # past one part: the multipart upload now exists
    assert [u.key.rsplit("/", 1)[-1] for u in _uploads(store)] == ["orphan.bin"]
    if backend.name != "moto":  # moto reports every upload as initiated in 2010
        assert store.gc() == 0  # younger than gc_after (a day by default)
    eager = make_store(gc_after=0)
    assert eager.gc() == 1
    assert _uploads(store) == []


def _uploads(store):
    from preheat_storage.s3api import S3Api

    s = store.settings
    api = S3Api(s.endpoint, s.url.bucket, s.region, s.credentials)
    return list(api.list_uploads(s.url.prefix + "/"))


def test_reader_never_mixes_two_versions_of_a_replaced_object(store, reading):
    """Ranged GETs notice the new version; one GET keeps streaming the old one whole."""
    old, new = os.urandom(16 * 64 * 1024), os.urandom(16 * 64 * 1024)
    store.put("moving.bin", old)
    reader = store.open_reader("moving.bin", chunk_size=64 * 1024)
    first = bytes(next(reader))
    store.put("moving.bin", new)
    try:
        got = first + b"".join(bytes(c) for c in reader)
    except PreconditionFailed as exc:
        assert "changed while it was being read" in str(exc)
    else:
        assert reading == "one GET" and got == old
