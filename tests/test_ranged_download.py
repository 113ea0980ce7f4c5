"""Large files over several connections: byte ranges fetched in parallel, written in order.

A one-file model of 64 MiB is served by the loopback hub (LFS through the CDN origin)
and fetched with `PREHEAT_RANGE_SIZE=4M` and `PREHEAT_CONNECTIONS=4`, so one file is 16
ranges. The hub records every request (its Range, its TCP connection, when it started and
ended); faults (drops, wrong bytes, refused URLs) are armed when the pipeline starts its
fetch stage, so the safetensors header reads before it are not hit.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from preheat_testing.hub import Fault, file_sha256
from preheat_testing.models import make_big_model

MiB = 1 << 20
RANGE = 4 * MiB
CONNECTIONS = 4
REPO = "big/One-File"
MULTI = "big/Four-Files"
WEIGHT = "model.safetensors"


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> dict[str, Path]:
    """A Llama-shaped model with one 64 MiB safetensors file (and its small files), on disk."""
    root = tmp_path_factory.mktemp("one-file")
    make_big_model(root, 64 * MiB, 1)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def four_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("four-files")
    make_big_model(root, 48 * MiB, 4, seed=1)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture
def env(preheat_env, hub, one_file):
    hub.add_repo(REPO, one_file)
    preheat_env.set("PREHEAT_RANGE_SIZE", str(RANGE))
    preheat_env.set("PREHEAT_CONNECTIONS", str(CONNECTIONS))
    return preheat_env.connect(hub)


def span(record) -> tuple[int, int] | None:
    """(first, last) byte of a request's `Range: bytes=a-b`, None without one."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", record.range or "")
    if m is None:
        return None
    return int(m[1]), int(m[2]) if m[2] else -1


def bodies(hub, path: str = WEIGHT, range_size: int = RANGE) -> list:
    """CDN answers that carried weight bytes of `path`: not the safetensors header reads (short
    ranges from the first bytes, read before the fetch)."""
    out = []
    for r in hub.find_requests(path, origin="cdn"):
        if r.method != "GET" or r.status not in (200, 206):
            continue
        first, last = span(r) or (0, -1)
        if first in (0, 8) and 0 <= last - first + 1 < range_size:
            continue
        out.append(r)
    return out


def most_at_once(records, slack: float = 0.02) -> int:
    """The most requests in flight at the same moment (the hub notes an answer's end a little
    after the client has read it: `slack` seconds of overlap do not count)."""
    events = sorted([(r.started, 1) for r in records] + [(r.finished - slack, -1) for r in records])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def published(env, record) -> Path:
    return env.store / "artifacts" / record.artifact.name / record.artifact.version


def assert_identical(env, record, files: dict[str, Path]) -> None:
    where = published(env, record)
    assert sorted(p.name for p in where.iterdir()) == sorted(files)
    for name, src in files.items():
        assert file_sha256(where / name) == file_sha256(src), name


def arm_at_fetch(stage_hook, hub, *faults):
    def on_stage(name: str) -> None:
        if name.startswith("fetching"):
            for fault in faults:
                hub.inject(fault)

    return stage_hook(on_stage=on_stage)


def partial_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / ".partial").glob("*") if p.is_file())


# --------------------------------------------------------------------------- ranges


def test_a_large_file_comes_in_ranges_over_several_connections(env, hub, one_file):
    hub.per_connection_bytes_per_sec = 40 * MiB  # a CDN's cap per connection
    hub.max_unranged_bytes = MiB  # and no single GET of a large file
    record = env.prefetch(REPO)
    assert record.status == "succeeded", record.error
    assert_identical(env, record, one_file)

    size = one_file[WEIGHT].stat().st_size
    got = bodies(hub)
    spans = sorted(span(r) for r in got)
    assert None not in spans, "a plain GET of the large file was sent"
    assert len(spans) == -(-size // RANGE), "one request per range"
    assert spans[0][0] == 0 and spans[-1][1] == size - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:], strict=False)), (
        "the ranges tile the file"
    )
    assert all(r.status == 206 for r in got)
    assert 2 <= len({r.connection for r in got}) <= CONNECTIONS + 1
    assert 2 <= most_at_once(got) <= CONNECTIONS, "several connections at once, within the limit"
    # the CDN URL of the file is resolved once and kept for its ranges (and header reads)
    assert hub.request_count(WEIGHT, origin="hub") == 1
    assert hub.bytes_served(WEIGHT, origin="cdn") < size + MiB


def test_the_connection_limit_holds_across_the_files_of_a_run(
    preheat_env, hub, four_files, read_tree
):
    hub.add_repo(MULTI, four_files)
    hub.per_connection_bytes_per_sec = 40 * MiB
    env = preheat_env.connect(hub)
    env.set("PREHEAT_RANGE_SIZE", str(2 * MiB))
    env.set("PREHEAT_CONNECTIONS", "3")
    record = env.prefetch(MULTI)
    assert record.status == "succeeded", record.error
    assert_identical(env, record, four_files)
    got = [
        r
        for p in four_files
        if p.endswith(".safetensors")
        for r in bodies(hub, p, range_size=2 * MiB)
    ]
    assert len(got) > 4 * 3, "the files came in ranges"
    assert most_at_once(got) <= 3


def test_dropped_connections_inside_ranges_resume_where_they_stopped(
    env, hub, one_file, stage_hook
):
    drop = Fault("drop", path=WEIGHT, origin="cdn", after_bytes=MiB + 4321, times=3)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, drop))
    assert record.status == "succeeded", record.error
    assert drop.hits == 3
    assert_identical(env, record, one_file)

    got = bodies(hub)
    starts = [span(r)[0] for r in got]
    resumed = [s for s in starts if s % RANGE]
    # each drop is resumed from the byte it stopped at (a resumed request may drop again)
    assert len(resumed) == 3 and all(s % RANGE % (MiB + 4321) == 0 for s in resumed), starts
    size = one_file[WEIGHT].stat().st_size
    assert sum(r.body_bytes for r in got) == size, "every byte once: the drops resumed by range"


def test_reset_connections_resume_too(env, hub, one_file, tiny_model, stage_hook, read_tree):
    small = tiny_model("llama_multipart")
    hub.add_repo("tiny/Resets", small.files)
    first = "model-00001-of-00003.safetensors"  # smaller than a range: one stream
    faults = (
        Fault("drop", path=WEIGHT, origin="cdn", after_bytes=MiB + 4321, times=2, reset=True),
        Fault("drop", path=first, origin="cdn", after_bytes=300_000, times=2, reset=True),
    )
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, faults[0]))
    assert record.status == "succeeded", record.error
    assert_identical(env, record, one_file)
    record = env.prefetch("tiny/Resets", progress=arm_at_fetch(stage_hook, hub, faults[1]))
    assert record.status == "succeeded", record.error
    assert read_tree(published(env, record)) == small.files
    assert [f.hits for f in faults] == [2, 2]


def test_a_cancel_mid_file_stops_every_connection_and_publishes_nothing(env, hub, stage_hook):
    import threading

    hub.per_connection_bytes_per_sec = 4 * MiB
    cancel = threading.Event()

    def on_bytes(total: int) -> None:
        if total >= 2 * RANGE:
            cancel.set()

    record = env.prefetch(REPO, cancel=cancel, progress=stage_hook(on_bytes=on_bytes))
    assert record.status == "cancelled"
    assert env.catalog().artifacts() == []
    served = hub.bytes_served(WEIGHT, origin="cdn")
    assert served < 8 * RANGE, "the other ranges stopped with the run"


def test_a_corrupted_range_fails_the_file_with_one_line_and_leaves_nothing(
    env, hub, one_file, stage_hook
):
    sha = file_sha256(one_file[WEIGHT])
    # one flipped byte in every range of the file
    bad = Fault("corrupt", path=f"/lfs/{sha}", origin="cdn", after_bytes=777, times=None)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, bad))
    assert record.status == "failed" and bad.hits > 1
    assert "\n" not in record.error
    assert WEIGHT in record.error and "sha256" in record.error, record.error
    assert "nothing was published" in record.error
    assert env.catalog().artifacts() == []
    assert not list(env.store.glob("manifests/**/*.json"))
    assert not list(env.store.glob("artifacts/**/*.safetensors"))
    assert partial_bytes(env.store) == 0, "the partial of the bad file was discarded"


def test_an_expired_cdn_url_is_resolved_again_through_the_hub(env, hub, one_file, stage_hook):
    refused = Fault("status", path=WEIGHT, origin="cdn", status=403, times=1)
    record = env.prefetch(REPO, progress=arm_at_fetch(stage_hook, hub, refused))
    assert record.status == "succeeded", record.error
    assert refused.hits == 1
    assert_identical(env, record, one_file)
    # the header reads resolved it once; the refused range went through the hub again
    assert 2 <= hub.request_count(WEIGHT, origin="hub") <= 2 + CONNECTIONS


def test_an_expired_signature_is_refused_by_the_loopback_cdn(hub, one_file):
    import time
    import urllib.error
    import urllib.request

    hub.cdn_url_ttl = 1
    hub.add_repo(REPO, one_file)
    url = hub.file_url(REPO, "config.json").replace("config.json", WEIGHT)
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        cdn = r.url
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(cdn, method="HEAD"))
    assert err.value.code == 403


@pytest.mark.parametrize("status", [400, 403, 416])
def test_files_refused_whole_are_fetched_by_ranges(preheat_env, hub, tiny_model, read_tree, status):
    model = tiny_model("llama_multipart")
    hub.add_repo("tiny/Refused", model.files)
    hub.max_unranged_bytes = 8 << 10  # far below the default range size
    hub.unranged_status = status
    env = preheat_env.connect(hub)
    record = env.prefetch("tiny/Refused")
    assert record.status == "succeeded", record.error
    assert read_tree(published(env, record)) == model.files

    big = [p for p, b in model.files.items() if len(b) > 8 << 10]
    assert any(p.endswith(".safetensors") for p in big) and any(
        not p.endswith(".safetensors") for p in big
    ), "both CDN (LFS) and hub (plain) files are refused whole"
    for path in big:
        asked = [r for r in hub.find_requests(path) if r.method == "GET" and r.status != 302]
        refused = [r for r in asked if r.status == status and r.range is None]
        served = [r for r in asked if r.status == 206 and r.body_bytes > 8 << 10]
        assert refused and served, (path, [(r.status, r.range) for r in asked])


# --------------------------------------------------------------------------- a killed worker


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_mid_range_then_a_rerun_resumes_from_the_written_prefix(env, hub, one_file):
    hub.per_connection_bytes_per_sec = 3 * MiB  # about 5 s for the file on 4 connections
    name = env.cli("prefetch", "hf-model", REPO).ok().stdout.strip()
    env.wait_for(lambda: partial_bytes(env.store) >= 3 * RANGE, what="ranges to land")
    record = env.catalog().run(name)
    assert record.status == "running"
    os.kill(record.pid, signal.SIGKILL)
    env.wait_for(lambda: gone(record.pid), what="the worker to die")
    kept = partial_bytes(env.store)
    size = one_file[WEIGHT].stat().st_size
    assert 3 * RANGE <= kept < size
    assert env.catalog().artifacts() == []

    hub.per_connection_bytes_per_sec = None
    hub.reset_stats()
    rerun = env.cli("prefetch", "hf-model", REPO, "--wait", "--json").ok().json
    assert rerun["status"] == "succeeded" and rerun["reused"] is False
    where = Path(rerun["artifact"]["path"])
    assert file_sha256(where / WEIGHT) == file_sha256(one_file[WEIGHT])

    got = bodies(hub)
    assert min(span(r)[0] for r in got) == kept, "the rerun starts at the first byte not kept"
    assert sum(r.body_bytes for r in got) == size - kept, "only the bytes not kept are served"


# --------------------------------------------------------------------------- the tail


class _Limits:
    """Connection slots and range buffers to spare; helpers recorded instead of started."""

    def __init__(self, free: int) -> None:
        from preheat.transfer import BufferPool, Slots

        self.range_size = MiB
        self.buffers = free
        self.slots = Slots(free)
        self.pool = BufferPool(free, MiB)
        self.submitted: list = []

    def submit(self, fn) -> None:
        self.submitted.append(fn)


def test_helpers_that_come_free_at_the_tail_take_the_end_of_the_heads_own_span():
    """With no range left after it, the head's span gives its last ranges to free helpers,
    never the range the head is in, and the head then stops where they start."""
    from types import SimpleNamespace

    from preheat.ranged_parts import RangedDownload

    limits = _Limits(free=2)
    job = SimpleNamespace(limits=limits, size=6 * MiB)
    download = RangedDownload(job)
    download.ranges = [(s, s + MiB) for s in range(0, 6 * MiB, MiB)]
    download.next_free = 6  # every range after the head's span is taken
    download.span = (2, 6)  # the head streams ranges 2..5 itself ...
    download.written = 2 * MiB + 12345  # ... and is inside range 2
    download._top_up(2)
    assert download.span == (2, 4) and sorted(download.parts) == [4, 5]
    assert download._span_end() == 4 * MiB and len(limits.submitted) == 2
    # with a helper free again, range 3 goes too, but never range 2, the head's own
    limits.slots.release()
    limits.pool.give(bytearray(MiB))
    download._top_up(2)
    assert download.span == (2, 3) and sorted(download.parts) == [3, 4, 5]
    limits.slots.release()
    limits.pool.give(bytearray(MiB))
    download._top_up(2)
    assert download.span == (2, 3) and len(limits.submitted) == 3
