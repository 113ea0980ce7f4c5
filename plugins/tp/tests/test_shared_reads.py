"""Shared reads: pieces several ranks need, read once and handed to each, checked against numpy.

Synthetic plans cover what model plans do not: column slices with gaps or
overlaps, replicated rows in groups of ranks, dtype conversion of shared
pieces, ranks meeting shared sources in different orders (sharing is then
off), through `pread` and through range reads, with blocks of a few rows.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from preheat_tp import stream
from preheat_tp.dtypes import NUMPY, convert
from preheat_tp.plan import OutputTensor, Slice, Zeros
from preheat_tp.stream import SharedReads, TensorSource, tensor_chunks

SHAPES = {"a": (37, 24), "b": (19, 40), "v": (29,)}


@pytest.fixture
def tensors(tmp_path):
    """name -> bf16 bit patterns, laid out in one file; and a TensorSource factory."""
    rng = np.random.default_rng(3)
    arrays = {n: rng.integers(0, 1 << 16, size=s, dtype=np.uint16) for n, s in SHAPES.items()}
    # keep the values finite so conversions compare exactly
    arrays = {n: (a & 0x807F) | 0x3C00 for n, a in arrays.items()}
    offsets, blob = {}, b"\0" * 13
    for name, a in arrays.items():
        offsets[name] = len(blob)
        blob += a.tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(blob)

    def source(remote: bool) -> TensorSource:
        return TensorSource(
            lambda name: ("weights.bin", offsets[name]),
            lambda p: None if remote else path,
            lambda p, start, n: blob[start : start + n],
        )

    return arrays, source


def cols(name, start, stop):
    return Slice(name, 1, start, stop, "BF16", SHAPES[name])


def rows(name, start, stop):
    return Slice(name, 0, start, stop, "BF16", SHAPES[name])


def out(name, dtype, *pieces):
    rows_ = sum(p.rows if isinstance(p, Zeros) else p.shape[0] for p in pieces)
    first = next(p for p in pieces if isinstance(p, Slice))
    return OutputTensor(name, dtype, (rows_, *first.shape[1:]), tuple(pieces))


def expected(tensor: OutputTensor, arrays) -> bytes:
    parts = []
    for p in tensor.pieces:
        if isinstance(p, Zeros):
            parts.append(
                bytes(p.rows * int(np.prod(tensor.shape[1:])) * NUMPY[tensor.dtype].itemsize)
            )
            continue
        a = arrays[p.source]
        a = a[p.start : p.stop] if p.axis == 0 else a[:, p.start : p.stop]
        parts.append(np.ascontiguousarray(convert(a, "BF16", tensor.dtype)).tobytes())
    return b"".join(parts)


def stream_all(source, plans, shared):
    """Every rank's tensors streamed on the rank's own thread: rank -> list of tensor bytes."""
    got: dict[int, list[bytes]] = {}
    errors = []

    def one(rank):
        try:
            got[rank] = [
                b"".join(bytes(c) for c in tensor_chunks(t, source, shared=shared, rank=rank))
                for t in plans[rank]
            ]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            if shared is not None:
                shared.abort()

    threads = [threading.Thread(target=one, args=(r,)) for r in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank's stream hung"
    assert not errors, errors
    return got


PLANS = {
    "tiled columns": {
        r: [
            out("a", "BF16", cols("a", 6 * r, 6 * r + 6)),
            out("b", "BF16", cols("b", 10 * r, 10 * r + 10)),
        ]
        for r in range(4)
    },
    "columns with gaps": {
        0: [out("a", "BF16", cols("a", 2, 5))],
        1: [out("a", "BF16", cols("a", 7, 13))],
        2: [out("a", "BF16", cols("a", 13, 14))],
    },
    "overlapping columns": {
        0: [out("a", "BF16", cols("a", 0, 10))],
        1: [out("a", "BF16", cols("a", 5, 15))],
        2: [out("a", "BF16", cols("a", 5, 15))],
    },
    "converted columns and rows": {
        r: [
            out("a", "F32", cols("a", 12 * r, 12 * r + 12)),
            out("v", "F16", rows("v", 0, 29)),
            out("b", "F32", rows("b", 5, 11)),
        ]
        for r in range(2)
    },
    "replicated rows in groups": {
        r: [
            out("a", "BF16", rows("a", 4 * r, 4 * r + 4), rows("a", 30, 33)),
            out("v", "BF16", rows("v", 0, 29)),
            out("b", "BF16", rows("b", 6 * (r // 2), 6 * (r // 2) + 6), Zeros(3)),
        ]
        for r in range(4)
    },
}


@pytest.mark.parametrize("window", [1, 2, 4])
@pytest.mark.parametrize("remote", [False, True], ids=["pread", "range-reads"])
@pytest.mark.parametrize("case", list(PLANS))
def test_shared_pieces_are_the_numpy_slices(tensors, case, remote, window, monkeypatch):
    monkeypatch.setattr(stream, "BLOCK", 100)  # a few rows per block
    monkeypatch.setattr(stream, "REMOTE_BLOCK", 150)
    arrays, make = tensors
    source = make(remote)
    plans = PLANS[case]
    shared = SharedReads(source, plans, window=window)
    assert shared.keys, "nothing shared"
    got = stream_all(source, plans, shared)
    for rank, ts in plans.items():
        assert got[rank] == [expected(t, arrays) for t in ts], (rank, case)


def test_block_buffers_are_reused_across_tensors_of_other_shapes(tensors, monkeypatch):
    """`a` and `b` have other row widths; their blocks still come from the same few buffers."""
    from preheat_tp import shared_tensor

    monkeypatch.setattr(stream, "BLOCK", 100)
    made, real = [], bytearray

    def counted(n):
        made.append(n)
        return real(n)

    monkeypatch.setattr(shared_tensor, "bytearray", counted, raising=False)
    arrays, make = tensors
    source = make(False)
    plans = {
        r: [
            out("a", "BF16", cols("a", 6 * r, 6 * r + 6)),
            out("b", "BF16", cols("b", 10 * r, 10 * r + 10)),
        ]
        for r in range(4)
    }
    window = 2
    shared = SharedReads(source, plans, window=window)
    blocks = sum(shared.lookup(p, "BF16").nblocks for p in (cols("a", 0, 6), cols("b", 0, 10)))
    got = stream_all(source, plans, shared)
    for rank, ts in plans.items():
        assert got[rank] == [expected(t, arrays) for t in ts]
    # at most the blocks in flight at once (a window in each of the two tensors) are ever made
    assert blocks > 2 * window
    assert 0 < len(made) <= 2 * window, (made, blocks)
    assert len(set(made)) == 1  # one size whatever the tensor's shape


def test_what_is_shared(tensors):
    source = tensors[1](False)
    plans = PLANS["replicated rows in groups"]
    keys = SharedReads(source, plans).keys
    assert ("v", "BF16", "rows", 0, 29) in keys  # every rank
    assert ("b", "BF16", "rows", 0, 6) in keys and ("b", "BF16", "rows", 6, 12) in keys  # pairs
    assert ("a", "BF16", "rows", 30, 33) in keys  # the second piece of a tensor
    assert not any(k[0] == "a" and k[3] < 30 for k in keys)  # each rank its own rows
    # the same rows twice in one rank's plan are read per rank (one consumer per rank and block)
    twice = {
        r: [out("v", "BF16", rows("v", 0, 29)), out("w", "BF16", rows("v", 0, 29))]
        for r in range(2)
    }
    assert SharedReads(source, twice).keys == []


def test_ranks_meeting_shared_sources_in_different_orders_read_their_own(tensors, monkeypatch):
    monkeypatch.setattr(stream, "BLOCK", 100)
    arrays, make = tensors
    source = make(False)
    plans = {
        0: [out("a", "BF16", cols("a", 0, 12)), out("b", "BF16", cols("b", 0, 20))],
        1: [out("b", "BF16", cols("b", 20, 40)), out("a", "BF16", cols("a", 12, 24))],
    }
    shared = SharedReads(source, plans, window=1)
    assert shared.keys == []
    got = stream_all(source, plans, shared)
    for rank, ts in plans.items():
        assert got[rank] == [expected(t, arrays) for t in ts]


def test_a_rank_stopping_early_releases_the_others(tensors, monkeypatch):
    monkeypatch.setattr(stream, "BLOCK", 100)
    _, make = tensors
    source = make(False)
    plans = PLANS["tiled columns"]
    shared = SharedReads(source, plans, window=1)
    outcome: dict[int, object] = {}

    def one(rank):
        try:
            for i, _ in enumerate(tensor_chunks(plans[rank][0], source, shared=shared, rank=rank)):
                if rank == 1 and i == 1:
                    raise OSError("rank 1 failed")
            outcome[rank] = "done"
        except BaseException as e:  # noqa: BLE001
            outcome[rank] = e

    threads = [threading.Thread(target=one, args=(r,)) for r in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert isinstance(outcome[1], OSError)
    assert all(isinstance(outcome[r], stream.Aborted) or outcome[r] == "done" for r in (0, 2, 3))


def test_short_reads_are_finished(tensors, monkeypatch):
    """`preadv` may return fewer bytes than asked: the views are filled by further reads."""
    monkeypatch.setattr(stream, "BLOCK", 300)
    preadv = stream.os.preadv

    def short(fd, views, offset):
        return preadv(fd, [memoryview(views[0])[: max(1, len(views[0]) // 3)]], offset)

    monkeypatch.setattr(stream.os, "preadv", short)
    arrays, make = tensors
    source = make(False)
    for case in ("tiled columns", "columns with gaps", "replicated rows in groups"):
        plans = PLANS[case]
        got = stream_all(source, plans, SharedReads(source, plans))
        for rank, ts in plans.items():
            assert got[rank] == [expected(t, arrays) for t in ts], case


def test_reading_past_the_end_of_a_file_fails(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    source = TensorSource(lambda n: ("short.bin", 0), lambda p: path, None)
    with pytest.raises(OSError, match="short read of short.bin"):
        source.read("t", 50, 80, memoryview(bytearray(80)))
