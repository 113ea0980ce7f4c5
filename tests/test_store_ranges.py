"""Ranged writes on the local store: spans of one file written by several processes at once."""

from __future__ import annotations

import os
import subprocess

import pytest

from preheat.builtin.local import LocalStore
from preheat.errors import PreheatError
from preheat.store import Span
from preheat_testing import ranges

KiB = 1 << 10


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(700 * KiB + 13)


def spans_of(size: int) -> list[Span]:
    return ranges.spans_of(size, 256 * KiB)


def piece(data: bytes, span: Span):
    return ranges.piece(data, span, 64 * KiB)


def leftovers(store: LocalStore) -> list[str]:
    partial = store.root / ".partial"
    return sorted(p.name for p in partial.iterdir()) if partial.exists() else []


def test_spans_from_two_processes_make_the_file(store, data, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    spans = spans_of(len(data))
    assert len(spans) == 3
    upload = store.begin_ranges("big/file.bin", len(data))
    assert upload

    def writer(*chosen: Span) -> subprocess.Popen:
        return ranges.write_elsewhere(
            str(store.root), "big/file.bin", upload, source, chosen, chunk=64 * KiB
        )

    procs = [writer(spans[2], spans[0]), writer(spans[1])]  # out of order, at once
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode(errors="replace")
    assert store.head("big/file.bin") is None
    assert list(store.list("")) == []

    info = store.finish_ranges("big/file.bin", upload, spans)
    assert info.size == len(data)
    assert store.read("big/file.bin")[0] == data
    assert leftovers(store) == []
    with pytest.raises(PreheatError, match="gone"):
        store.finish_ranges("big/file.bin", upload, spans)


def test_a_span_written_again_replaces_the_old_bytes(store, data):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    store.write_range("f.bin", upload, spans[1], [b"\1" * spans[1].size])
    for span in reversed(spans):
        store.write_range("f.bin", upload, span, piece(data, span))
    store.finish_ranges("f.bin", upload, spans)
    assert store.read("f.bin")[0] == data


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_wrong_byte_count_is_rejected(store, data, delta):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    with pytest.raises(PreheatError, match="span 0"):
        store.write_range("f.bin", upload, spans[0], [data[: spans[0].size + delta]])
    for span in spans:  # writing the span again is the way on
        store.write_range("f.bin", upload, span, piece(data, span))
    store.finish_ranges("f.bin", upload, spans)
    assert store.read("f.bin")[0] == data


def test_spans_that_do_not_make_the_size_fail_the_finish_and_keep_the_upload(store, data):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    for span in spans:
        store.write_range("f.bin", upload, span, piece(data, span))
    with pytest.raises(PreheatError, match="not"):
        store.finish_ranges("f.bin", upload, spans[:-1])
    assert store.head("f.bin") is None
    assert store.finish_ranges("f.bin", upload, spans).size == len(data)


def test_a_span_never_written_fails_the_finish_and_keeps_the_upload(store, data):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    for span in spans[:1] + spans[2:]:
        store.write_range("f.bin", upload, span, piece(data, span))
    with pytest.raises(PreheatError, match="span 1 .* was never written"):
        store.finish_ranges("f.bin", upload, spans)
    assert store.head("f.bin") is None
    store.write_range("f.bin", upload, spans[1], piece(data, spans[1]))
    assert store.finish_ranges("f.bin", upload, spans).size == len(data)
    assert store.read_range("f.bin", 0, len(data)) == data
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda sp: [], id="none"),
        pytest.param(lambda sp: [sp[1], sp[0], *sp[2:]], id="out-of-order"),
        pytest.param(lambda sp: [sp[0], Span(1, sp[1].start + 1, sp[1].end), *sp[2:]], id="gap"),
    ],
)
def test_spans_that_do_not_tile_the_object_are_refused_and_the_upload_kept(store, data, layout):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    for span in spans:
        store.write_range("f.bin", upload, span, piece(data, span))
    with pytest.raises(PreheatError, match="does not follow|at least one span"):
        store.finish_ranges("f.bin", upload, layout(spans))
    assert store.head("f.bin") is None
    assert store.finish_ranges("f.bin", upload, spans).size == len(data)


def test_abort_leaves_nothing(store, data):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    store.write_range("f.bin", upload, spans[0], piece(data, spans[0]))
    store.abort_ranges("f.bin", upload)
    assert store.head("f.bin") is None
    assert leftovers(store) == []
    with pytest.raises(PreheatError, match="gone"):
        store.write_range("f.bin", upload, spans[1], piece(data, spans[1]))
    with pytest.raises(PreheatError, match="gone"):
        store.finish_ranges("f.bin", upload, spans)
    store.abort_ranges("f.bin", upload)  # again, and with a bogus handle: never raises
    store.abort_ranges("f.bin", "../../etc")


def test_a_handle_that_is_not_the_store_s_is_refused(store):
    with pytest.raises(PreheatError, match="not an upload handle"):
        store.write_range("f.bin", "../x", Span(0, 0, 1), [b"x"])


def test_gc_removes_an_abandoned_ranged_upload_and_the_spans_it_noted(store, data):
    spans = spans_of(len(data))
    upload = store.begin_ranges("f.bin", len(data))
    store.write_range("f.bin", upload, spans[0], piece(data, spans[0]))
    assert leftovers(store) == [f"r-{upload}", f"r-{upload}.spans"]
    assert os.listdir(store.root / ".partial" / f"r-{upload}.spans") == [
        f"0-{spans[0].start}-{spans[0].end}"
    ]
    assert store.gc(older_than=0) == 2
    assert leftovers(store) == []
