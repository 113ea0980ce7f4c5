"""Ranged writes on S3: spans of one object uploaded as multipart parts by several processes."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from preheat.api import PreheatError, Span
from preheat_storage.errors import AccessDenied
from preheat_storage.store import ObstoreStore
from preheat_testing import ranges, servers

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part but for the last


def spans_of(size: int) -> list[Span]:
    return ranges.spans_of(size, PART)


def piece(data: bytes, span: Span):
    return ranges.piece(data, span, MiB)


@pytest.fixture(
    params=[
        pytest.param("seaweedfs", marks=pytest.mark.s3),
        pytest.param("moto", marks=pytest.mark.s3),
    ]
)
def s3(request, object_servers, monkeypatch):
    server = object_servers.get(request.param)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    store = ObstoreStore(server.url(f"t-{uuid.uuid4().hex[:10]}"))
    yield store
    store.close()


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(2 * PART + MiB + 7)


def open_uploads(store: ObstoreStore) -> list:
    return list(store._s3api().list_uploads(store._u.prefix + "/"))


def test_spans_from_two_processes_make_the_object(s3, data, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    spans = spans_of(len(data))
    assert len(spans) == 3
    upload = s3.begin_ranges("big/file.bin", len(data))
    assert upload

    def writer(*chosen: Span) -> subprocess.Popen:
        return ranges.write_elsewhere(s3.url, "big/file.bin", upload, source, chosen, chunk=MiB)

    procs = [writer(spans[2], spans[0]), writer(spans[1])]  # out of order, at once
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode(errors="replace")
    assert s3.head("big/file.bin") is None
    assert list(s3.list("big/")) == []

    info = s3.finish_ranges("big/file.bin", upload, spans)
    assert info.size == len(data)
    assert s3.read("big/file.bin")[0] == data
    assert open_uploads(s3) == []


def test_a_missing_span_fails_the_finish_and_keeps_the_upload(s3, data):
    spans = spans_of(len(data))
    upload = s3.begin_ranges("f.bin", len(data))
    for span in (spans[0], spans[2]):
        s3.write_range("f.bin", upload, span, piece(data, span))
    with pytest.raises(PreheatError, match="span 1 .*never written") as info:
        s3.finish_ranges("f.bin", upload, spans)
    assert "\n" not in str(info.value)
    assert s3.head("f.bin") is None

    s3.write_range("f.bin", upload, spans[1], piece(data, spans[1]))
    assert s3.finish_ranges("f.bin", upload, spans).size == len(data)
    assert s3.read("f.bin")[0] == data


def test_a_span_written_again_replaces_the_old_bytes(s3, data):
    spans = spans_of(len(data))
    upload = s3.begin_ranges("f.bin", len(data))
    s3.write_range("f.bin", upload, spans[1], [b"\0" * spans[1].size])
    for span in spans:
        s3.write_range("f.bin", upload, span, piece(data, span))
    s3.finish_ranges("f.bin", upload, spans)
    assert s3.read("f.bin")[0] == data


def test_chunks_may_reuse_one_buffer(s3, data):
    spans = spans_of(len(data))
    upload = s3.begin_ranges("f.bin", len(data))

    def refilled(span: Span):
        buffer = bytearray(MiB)
        for start in range(span.start, span.end, MiB):
            n = min(MiB, span.end - start)
            buffer[:n] = data[start : start + n]
            yield memoryview(buffer)[:n]

    for span in spans:
        s3.write_range("f.bin", upload, span, refilled(span))
    s3.finish_ranges("f.bin", upload, spans)
    assert s3.read("f.bin")[0] == data


def test_abort_leaves_nothing(s3, data):
    spans = spans_of(len(data))
    upload = s3.begin_ranges("f.bin", len(data))
    s3.write_range("f.bin", upload, spans[0], piece(data, spans[0]))
    s3.abort_ranges("f.bin", upload)
    assert s3.head("f.bin") is None
    assert open_uploads(s3) == []
    with pytest.raises(PreheatError):  # "gone" on SeaweedFS; moto answers HTTP 500
        s3.write_range("f.bin", upload, spans[1], piece(data, spans[1]))
    with pytest.raises(PreheatError, match="gone"):
        s3.finish_ranges("f.bin", upload, spans)
    s3.abort_ranges("f.bin", upload)  # again, and with a bogus handle: never raises
    s3.abort_ranges("f.bin", "no-such-upload")


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_wrong_byte_count_is_rejected(s3, data, delta):
    spans = spans_of(len(data))
    upload = s3.begin_ranges("f.bin", len(data))
    span = spans[0]
    with pytest.raises(PreheatError, match="span 0") as info:
        s3.write_range("f.bin", upload, span, [data[: span.size + delta]])
    assert "\n" not in str(info.value)
    with pytest.raises(PreheatError, match="span 0 .*never written"):
        s3.finish_ranges("f.bin", upload, spans)
    s3.abort_ranges("f.bin", upload)


def test_small_or_misplaced_spans_are_refused_before_completing(s3):
    upload = s3.begin_ranges("f.bin", 20)
    small = [Span(0, 0, 10), Span(1, 10, 20)]
    for span in small:
        s3.write_range("f.bin", upload, span, [b"x" * span.size])
    with pytest.raises(PreheatError, match="5 MiB"):
        s3.finish_ranges("f.bin", upload, small)
    with pytest.raises(PreheatError, match="does not follow"):
        s3.finish_ranges("f.bin", upload, [Span(0, 0, 10), Span(1, 11, 20)])
    one = [Span(0, 0, 10)]
    assert s3.finish_ranges("f.bin", upload, one).size == 10  # a lone last span may be small
    assert s3.read("f.bin")[0] == b"x" * 10


def test_gc_aborts_an_unfinished_ranged_upload(s3):
    upload = s3.begin_ranges("f.bin", 3)
    s3.write_range("f.bin", upload, Span(0, 0, 3), [b"abc"])
    assert s3.gc(older_than=0) >= 1
    with pytest.raises(PreheatError, match="gone"):
        s3.finish_ranges("f.bin", upload, [Span(0, 0, 3)])


@pytest.mark.s3
def test_a_wrong_secret_is_a_clear_error_without_the_secret(object_servers, monkeypatch):
    server = object_servers.get("seaweedfs")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-42")
    store = ObstoreStore(server.url("denied"))
    with pytest.raises(AccessDenied) as info:
        store.begin_ranges("f.bin", 10)
    assert "not-the-secret-42" not in str(info.value)
    assert servers.SECRET_KEY not in str(info.value)


def test_stores_without_s3_multipart_do_not_take_ranges(monkeypatch):
    assert ObstoreStore("memory://tests/ranges").begin_ranges("f.bin", 10) is None
    conn = "AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;BlobEndpoint=http://127.0.0.1:9/acct"
    azure = ObstoreStore("az://container/p", options={"connection_string": conn})
    assert azure.begin_ranges("f.bin", 10) is None
    unsigned = ObstoreStore("s3://bucket/p", options={"skip_signature": True})
    assert unsigned._s3api() is None
    assert unsigned.begin_ranges("f.bin", 10) is None
