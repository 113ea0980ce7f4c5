"""Early writeback: each finished stretch of a growing file is queued for disk, in order."""

from __future__ import annotations

import os
import sys

import pytest

from preheat.builtin import writeback
from preheat.builtin.local import LocalStore
from preheat.builtin.writeback import Writeback


@pytest.fixture
def calls(monkeypatch):
    """The (fd, offset, length, flags) of every sync_file_range request, none of them made."""
    made = []
    monkeypatch.setattr(writeback, "EVERY", 100)
    monkeypatch.setattr(writeback, "_sync_file_range", lambda: lambda *args: made.append(args))
    return made


def test_stretches_are_queued_in_order_once_each(calls):
    wb = Writeback(7, start=30)
    for n in (50, 49, 2, 69, 250, 10):  # up to offsets 80, 129, 131, 200, 450, 460
        wb.wrote(n)
    assert [c[1:3] for c in calls] == [(30, 101), (131, 319)]
    assert all(c[0] == 7 and c[3] == 2 for c in calls)  # SYNC_FILE_RANGE_WRITE


def test_the_local_store_writer_queues_what_it_wrote(tmp_path, calls, monkeypatch):
    monkeypatch.delenv("PREHEAT_FSYNC", raising=False)
    store = LocalStore(tmp_path)
    w = store.open_writer("artifacts/x/1/files/w.bin")
    for _ in range(5):
        w.write(b"a" * 60)
    w.commit()
    assert [c[1:3] for c in calls] == [(0, 120), (120, 120)]
    assert (tmp_path / "artifacts/x/1/files/w.bin").read_bytes() == b"a" * 300


def test_a_ranged_write_queues_its_span_from_where_it_starts(tmp_path, calls, monkeypatch):
    from preheat.store import Span

    monkeypatch.delenv("PREHEAT_FSYNC", raising=False)
    store = LocalStore(tmp_path)
    upload = store.begin_ranges("k/w.bin", 600)
    store.write_range("k/w.bin", upload, Span(1, 300, 600), [b"b" * 70] * 4 + [b"b" * 20])
    assert [c[1:3] for c in calls] == [(300, 140), (440, 140)]


def test_no_writeback_without_fsync(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("PREHEAT_FSYNC", "0")
    w = LocalStore(tmp_path).open_writer("k/w.bin")
    w.write(b"a" * 500)
    w.commit()
    assert calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_real_call_is_found_and_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "EVERY", 4096)
    assert writeback._sync_file_range() is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        wb = Writeback(fd)
        os.write(fd, b"x" * 8192)
        wb.wrote(8192)
        assert wb._queued == 8192
        assert writeback._sync_file_range()(fd, 0, 8192, 2) == 0
    finally:
        os.close(fd)
