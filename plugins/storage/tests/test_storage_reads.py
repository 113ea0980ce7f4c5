"""Streaming reads over a connection that drops: S3 servers behind a proxy that resets chosen
responses part-way.

A dropped GET resumes by range from the byte where it stopped (obstore resumes a body a few
times itself; the reader resumes from the last chunk it handed on when obstore gives up),
pinned to the version HEAD saw; an object replaced meanwhile fails the read instead of
splicing two versions; a connection that keeps dropping gives up with one line.
"""

from __future__ import annotations

import os

import pytest

from preheat.api import PreconditionFailed, PreheatError
from preheat_testing.cutproxy import CuttingProxy

MiB = 1 << 20
SIZE = 12 * MiB
DATA = os.urandom(SIZE)
S3 = [pytest.param("moto", marks=pytest.mark.s3), pytest.param("seaweedfs", marks=pytest.mark.s3)]


@pytest.fixture(params=S3)
def cut_store(request, object_servers, monkeypatch):
    """(store, proxy, key): an S3 store reached through a cutting proxy, holding SIZE bytes."""
    from urllib.parse import urlsplit

    from preheat_storage.store import ObstoreStore

    server = object_servers.get(request.param)
    upstream = urlsplit(server.endpoint)
    with CuttingProxy(upstream.port, upstream.hostname) as proxy:
        for key, value in {**server.env, "AWS_ENDPOINT_URL": proxy.endpoint}.items():
            monkeypatch.setenv(key, value)
        store = ObstoreStore(server.url(f"reads-{os.urandom(4).hex()}"))
        store.put("weights.bin", DATA)
        try:
            yield store, proxy, "weights.bin"
        finally:
            store.close()


def _gets(proxy: CuttingProxy) -> list:
    return [
        r
        for r in proxy.requests
        if r.method == "GET" and r.target.split("?")[0].endswith("/weights.bin")
    ]


def test_a_dropped_stream_resumes_from_the_byte_where_it_stopped(cut_store):
    """Five drops in a row: obstore resumes the first three itself (`max_retries = 3`); the
    fourth reaches the reader, which resumes after the last chunk it handed on."""
    store, proxy, key = cut_store
    proxy.cut("GET", "/", after=2 * MiB, times=5)
    got = b"".join(bytes(c) for c in store.open_reader(key, chunk_size=MiB))
    assert got == DATA
    gets = _gets(proxy)
    assert [g.cut for g in gets] == [True] * 5 + [False], [g.headers.get("range") for g in gets]
    assert "range" not in gets[0].headers
    starts = [0] + [int(g.headers["range"].removeprefix("bytes=").split("-")[0]) for g in gets[1:]]
    ends = [start + g.body for start, g in zip(starts, gets, strict=True)]
    assert ends[-1] == SIZE
    # each resume starts where the last response stopped, or at most the chunk obstore was
    # filling before it: nothing else is fetched twice
    again = [end - start for end, start in zip(ends[:-1], starts[1:], strict=True)]
    assert all(0 <= n < MiB for n in again), again
    assert sum(g.body for g in gets) < SIZE + MiB
    # and asks for the version the first GET read
    etag = gets[0].headers.get("if-match")
    assert etag and all(g.headers.get("if-match") == etag for g in gets)


def test_an_object_replaced_while_the_stream_was_down_fails_the_read(cut_store):
    store, proxy, key = cut_store
    other = os.urandom(SIZE)
    proxy.cut("GET", "/", after=2 * MiB, then=lambda: store.put(key, other))
    got = bytearray()
    with pytest.raises(PreconditionFailed, match="changed while it was being read"):
        for chunk in store.open_reader(key, chunk_size=MiB):
            got += chunk
    assert DATA.startswith(bytes(got)) and len(got) < SIZE  # no byte of the new version


def test_a_connection_that_keeps_dropping_fails_with_one_line(cut_store):
    from preheat_storage import reader

    store, proxy, key = cut_store
    proxy.cut("GET", "/", after=64 * 1024, times=10_000)  # every GET
    with pytest.raises(PreheatError) as caught:
        b"".join(bytes(c) for c in store.open_reader(key, chunk_size=MiB))
    message = str(caught.value)
    assert "\n" not in message and store.uri(key) in message, message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
    # obstore resumes a body itself a few times; each of the reader's own resumes gets that
    gets = _gets(proxy)
    assert reader.RETRIES + 1 <= len(gets) <= 20 * (reader.RETRIES + 1), len(gets)
    assert sum(g.body for g in gets) < SIZE
