"""One large file split by byte range across workers, assembled and verified whole.

A pool here plays a cluster: it splits the 40 MiB weight file of a one-file model into
8 MiB spans (`PREHEAT_SPAN_SIZE`), hands them to two "workers" (threads running
`fetch_spans` from pickled records, as remote tasks would, into the local store's
ranged upload) and then calls `finish_spans`. The artifact is the default pool's, byte
for byte; a flipped byte in one span fails the file, leaving nothing behind.
"""

from __future__ import annotations

import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from preheat.api import (
    PreheatError,
    TransferPool,
    fetch_spans,
    finish_spans,
    open_store,
    plan_spans,
    run_transfers,
    splittable,
)
from preheat_testing.hub import Fault, file_sha256
from preheat_testing.models import make_big_model

MiB = 1 << 20
REPO = "big/Split"
WEIGHT = "model.safetensors"


class Spread(TransferPool):
    """Splits what is worth splitting over two workers; the rest goes whole."""

    def __init__(self) -> None:
        self.split: list[str] = []
        self.shares: list[list[int]] = []
        self.aborted = 0

    def transfer(self, job, transfers, *, fetch, done, progress=None, cancelled=None):
        store = open_store(job.store)
        for t in transfers:
            if not splittable(t):
                for result in run_transfers(*pickle.loads(pickle.dumps((job, [t])))):
                    done(result)
                continue
            upload = store.begin_ranges(t.key, t.file.size)
            assert upload is not None, "the local store takes ranged writes"
            spans = plan_spans(t.file.size)
            shares = [spans[0::2], spans[1::2]]
            self.split.append(t.file.path)
            self.shares = [[s.index for s in share] for share in shares]
            payload = pickle.dumps((job, t, upload))
            try:
                with ThreadPoolExecutor(2) as workers:
                    for f in [
                        workers.submit(fetch_spans, *pickle.loads(payload), share, connections=2)
                        for share in shares
                    ]:
                        f.result()
                done(finish_spans(job, t, upload, spans))
            except BaseException:
                store.abort_ranges(t.key, upload)
                self.aborted += 1
                raise


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("split-file")
    make_big_model(root, 40 * MiB, 1, seed=3)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture
def env(preheat_env, hub, one_file):
    hub.add_repo(REPO, one_file)
    preheat_env.set("PREHEAT_SPAN_SIZE", "8Mi")
    return preheat_env.connect(hub)


def run(env, store: Path, pool, progress=None):
    from preheat.models import PrefetchRequest
    from preheat.runner import execute
    from preheat.runs import create_run

    created = create_run(PrefetchRequest(repo=REPO), str(store))
    return execute(created.store_url, created.name, transfers=pool, progress=progress)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def ranges_served(hub) -> list[tuple[int, int]]:
    """(first, last) byte of every ranged weight answer larger than a header read."""
    out = []
    for r in hub.find_requests(WEIGHT, origin="cdn"):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", r.range or "")
        if r.method == "GET" and r.status == 206 and m and r.body_bytes > MiB:
            out.append((int(m[1]), int(m[2])))
    return sorted(out)


def test_spans_written_by_two_workers_make_the_same_artifact(env, hub, one_file, tmp_path):
    pool = Spread()
    hub.reset_stats()
    ours = run(env, tmp_path / "split", pool)
    served = ranges_served(hub)
    theirs = run(env, tmp_path / "whole", None)
    assert ours.status == theirs.status == "succeeded", (ours.error, theirs.error)
    assert pool.split == [WEIGHT] and pool.shares == [[0, 2, 4], [1, 3]]
    name, version = ours.artifact.name, ours.artifact.version
    a = tree(tmp_path / "split" / "artifacts" / name / version)
    assert a == tree(tmp_path / "whole" / "artifacts" / name / version)
    assert not list((tmp_path / "split" / ".partial").glob("r-*"))
    # every byte of the weight file once, no request across a span's end
    size = one_file[WEIGHT].stat().st_size
    assert sum(last - first + 1 for first, last in served) == size
    span = 8 * MiB
    assert all(first // span == last // span for first, last in served), served
    assert len({first // span for first, _ in served}) == 5


def test_a_corrupted_span_fails_the_file_and_leaves_nothing(
    env, hub, one_file, stage_hook, tmp_path
):
    sha = file_sha256(one_file[WEIGHT])
    bad = Fault("corrupt", path=f"/lfs/{sha}", origin="cdn", after_bytes=777, times=1)

    def arm(name: str) -> None:
        if name.startswith("fetching"):
            hub.inject(bad)

    store = tmp_path / "store"
    record = run(env, store, Spread(), progress=stage_hook(on_stage=arm))
    assert record.status == "failed"
    assert "spans fetched apart hash to" in record.error and "not the published" in record.error
    assert bad.hits == 1
    assert not list(store.glob("manifests/**/*.json"))
    assert not list(store.glob(".partial/r-*")) and not list(store.rglob(WEIGHT))


def test_a_span_of_the_wrong_size_is_refused(tmp_path):
    from preheat.api import Span

    store = open_store(str(tmp_path))
    upload = store.begin_ranges("k", 16 * MiB)
    with pytest.raises(PreheatError, match="span 0 got 1048576 of 8388608 bytes"):
        store.write_range("k", upload, Span(0, 0, 8 * MiB), [b"x" * MiB])
    store.abort_ranges("k", upload)
    assert store.head("k") is None


def test_finishing_again_checks_what_is_there_and_keeps_the_real_error(tmp_path, monkeypatch):
    import hashlib
    import os
    from types import SimpleNamespace

    from preheat.api import IntegrityError, RemoteFile, Transfer

    monkeypatch.setenv("PREHEAT_SPAN_SIZE", "8Mi")
    store = open_store(str(tmp_path))
    data = os.urandom(20 * MiB)
    t = Transfer(RemoteFile("w.bin", len(data), sha256=hashlib.sha256(data).hexdigest()), "k")
    job = SimpleNamespace(store=str(tmp_path))
    upload = store.begin_ranges("k", len(data))
    spans = plan_spans(len(data))
    for s in spans:
        store.write_range("k", upload, s, [data[s.start : s.end]])
    first = finish_spans(job, t, upload, spans)
    # a retried verify task: the upload is gone, the object there is checked instead
    assert finish_spans(job, t, upload, spans).entry == first.entry
    # an object of the right size that is not this file: the finish failure, not a mismatch
    store.put("k", b"z" * len(data))
    with pytest.raises(PreheatError, match="ranged upload of k is gone") as failed:
        finish_spans(job, t, upload, spans)
    assert not isinstance(failed.value, IntegrityError)
    assert store.head("k") is None
