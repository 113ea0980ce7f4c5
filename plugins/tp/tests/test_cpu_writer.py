"""The CPU writer: rank files byte-identical to the earlier writer's, each source byte read once.

The digests below were computed with the earlier writer (one 16 MiB block
per rank, every column-sliced tensor read once per rank, at most 4 rank
threads), before the rewrite that reads what several ranks need once for all
of them and writes every rank on its own thread. Any change of tensor order,
header or bytes changes them (multi-part sources and outputs, tp 2/4/8, dtype
conversion, tied and padded vocabularies, vLLM-like buffers).

Every request is written from a local store (reads by `pread`) and from a
store that offers no local paths (reads by range), and again with blocks of a
few KiB and read-ahead windows of 1 and 3 blocks, so every multi-block path
runs. Then: bytes read, memory, and a failing or broken write callback.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from preheat.api import FileEntry, SourceArtifact
from preheat_testing import models
from preheat_tp import cpu_writer, stream
from preheat_tp.layout import Buffer, EngineLayout, TPJob

VLLM_LIKE = EngineLayout(
    engine="vllm-like",
    engine_versions="*",
    layer_buffers=tuple(
        Buffer(f"self_attn.attn._{name}_scale", "F32", (), 1.0) for name in ("k", "v", "q", "prob")
    ),
)
SGLANG_LIKE = EngineLayout(engine="sglang-like", engine_versions="*", widen_vocab_for_tp=True)
LAYOUTS = {"vllm": VLLM_LIKE, "sglang": SGLANG_LIKE}
BIG = 40 << 20  # a make_big_model checkpoint over 3 files

# model, layout, tp, dtype, max_file_size (- for the default): the first 32 hex digits of
# the sha256 of the sorted "path size sha256" lines of every file the earlier writer wrote
GOLDEN_TABLE = """
big                      vllm    4  auto  -        d82c4bebb98346473dafdbf4bf6d10d1
big                      vllm    4  auto  3145728  54087a550916955c6177f8e255cafd61
big                      sglang  2  fp32  4194304  8c8a6674aa75f8769b0756c8a7f0a2ac
big                      vllm    8  fp16  -        230a2a50ac6811de866e8e8e4b75de24
llama_multipart          vllm    4  auto  100000   5295beff266ffa6072522d144f50f510
qwen2_small_vocab_tied   vllm    4  auto  -        0a4764199a841f044b63553a111f4e1e
qwen2_bias               sglang  4  auto  -        f9b373d63d82c8465aec96f51dc74438
mistral_subfolders_fp32  vllm    4  bf16  200000   18c89b6b21fbee61704e0633d9e22925
llama_odd_vocab_fp16     sglang  4  bf16  -        d401d5160cc025bee024b45d6fa8ed2d
qwen3_qk_norm            vllm    8  auto  -        ab4b36f86e8c9bf5c1326196e8a22dc9
llama_tied_mqa           sglang  4  fp32  -        bc22d3d91663ca9a247301e193493eb5
"""
GOLDEN = {
    (model, layout, int(tp), dtype, None if size == "-" else int(size)): digest
    for model, layout, tp, dtype, size, digest in map(str.split, GOLDEN_TABLE.strip().splitlines())
}


def _model_files(directory: Path, model: str) -> None:
    if model == "big":
        models.make_big_model(directory, BIG, 3)
        (directory / "tokenizer.json").write_text("{}\n")
    else:
        models.write_case(directory, model)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """model name -> (store root, artifact prefix, file entries), written once."""
    root = tmp_path_factory.mktemp("golden-store")
    cache: dict[str, tuple[Path, str, tuple[FileEntry, ...]]] = {}

    def get(model: str):
        if model not in cache:
            prefix = f"artifacts/{model}/v1/"
            directory = root / prefix
            _model_files(directory, model)
            files = tuple(
                FileEntry(path=str(p.relative_to(directory)), size=p.stat().st_size, sha256="")
                for p in sorted(directory.rglob("*"))
                if p.is_file()
            )
            cache[model] = (root, prefix, files)
        return cache[model]

    return get


def _source(stored, model: str, remote: bool) -> SourceArtifact:
    from preheat_testing.core import local_store_class

    LocalStore = local_store_class()

    class RemoteStore(LocalStore):
        """A local store that offers no local paths, as an object store does."""

        def local_path(self, key):
            return None

    root, prefix, files = stored(model)
    store = (RemoteStore if remote else LocalStore)(root)
    return SourceArtifact(store, prefix, SimpleNamespace(files=files, ref=f"{model}:v1"))


def shard_digests(source: SourceArtifact, layout: EngineLayout, job: TPJob) -> dict[str, tuple]:
    """path -> (size, sha256) of every file the CPU path writes, hashed by an independent writer."""
    out: dict[str, tuple] = {}
    lock = threading.Lock()
    progress: list[int] = []

    def write(path, chunks):
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
        with lock:
            assert path not in out, f"{path} written twice"
            out[path] = (size, digest.hexdigest())
        return FileEntry(path=path, size=size, sha256=digest.hexdigest())

    def count(n):
        with lock:
            progress.append(n)

    entries = cpu_writer.copy_side_files(source, job, write, count)
    entries += cpu_writer.write_ranks(layout, source, job, write, count)
    assert sorted(e.path for e in entries) == sorted(out)
    assert sum(progress) == sum(size for size, _ in out.values())
    return out


def combined(digests: dict[str, tuple]) -> str:
    lines = "".join(f"{p} {size} {sha}\n" for p, (size, sha) in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _job(tp, dtype, max_size) -> TPJob:
    return TPJob(tp=tp, dtype=dtype, **({"max_file_size": max_size} if max_size else {}))


@pytest.mark.parametrize("remote", [False, True], ids=["pread", "range-reads"])
@pytest.mark.parametrize("request_", list(GOLDEN), ids=lambda r: "-".join(map(str, r)))
def test_rank_files_match_the_digests_of_the_earlier_writer(stored, request_, remote):
    model, layout, tp, dtype, max_size = request_
    digests = shard_digests(
        _source(stored, model, remote), LAYOUTS[layout], _job(tp, dtype, max_size)
    )
    assert combined(digests)[:32] == GOLDEN[request_]


TINY = [
    ("big", "vllm", 4, "auto", None),
    ("big", "vllm", 4, "auto", 3 << 20),
    ("big", "sglang", 2, "fp32", 4 << 20),
    ("llama_multipart", "vllm", 4, "auto", 100_000),
    ("qwen2_small_vocab_tied", "vllm", 4, "auto", None),
]


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("remote", [False, True], ids=["pread", "range-reads"])
@pytest.mark.parametrize("request_", TINY, ids=lambda r: "-".join(map(str, r)))
def test_tiny_blocks_and_windows_write_the_same_bytes(
    stored, request_, remote, window, monkeypatch
):
    """Blocks of a few KiB: every tensor spans many blocks, shared tensors many windows."""
    monkeypatch.setattr(stream, "BLOCK", 12 << 10)
    monkeypatch.setattr(stream, "REMOTE_BLOCK", 20 << 10)
    monkeypatch.setattr(stream, "WINDOW", window)
    model, layout, tp, dtype, max_size = request_
    digests = shard_digests(
        _source(stored, model, remote), LAYOUTS[layout], _job(tp, dtype, max_size)
    )
    assert combined(digests)[:32] == GOLDEN[request_]


# --------------------------------------------------------------------------- reads, memory, failures


def _weight_bytes(source: SourceArtifact) -> int:
    """Bytes of every source tensor."""
    return sum(t.end - t.start for head in source.headers().values() for t in head.tensors.values())


@pytest.mark.parametrize("remote", [False, True], ids=["pread", "range-reads"])
def test_every_source_byte_is_read_once(stored, remote, monkeypatch):
    """Column-sliced tensors (o_proj, down_proj) are read once for all ranks, not once per rank,
    and so are the rows several ranks hold (norms, and kv heads: 2 of them here, at tp 4)."""
    source = _source(stored, "big", remote)
    total = _weight_bytes(source)  # headers parsed (and cached) before counting
    read = []
    if remote:
        store_read = source.store.read_range
        monkeypatch.setattr(
            source.store, "read_range", lambda k, s, n: read.append(n) or store_read(k, s, n)
        )
    else:
        preadv = stream.os.preadv

        def counted(fd, views, offset):
            n = preadv(fd, views, offset)
            read.append(n)
            return n

        monkeypatch.setattr(stream.os, "preadv", counted)
    digests = shard_digests(source, VLLM_LIKE, TPJob(tp=4))
    assert combined(digests)[:32] == GOLDEN[("big", "vllm", 4, "auto", None)]
    assert sum(read) == total


def test_memory_stays_at_a_few_blocks(stored, monkeypatch):
    """Peak Python allocations while sharding stay a few blocks, far below the model's size."""
    import tracemalloc

    monkeypatch.setattr(stream, "BLOCK", 64 << 10)
    monkeypatch.setattr(stream, "REMOTE_BLOCK", 256 << 10)
    source = _source(stored, "big", False)
    source.headers()
    tracemalloc.start()
    try:
        shard_digests(source, VLLM_LIKE, TPJob(tp=4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20 < BIG // 4


def test_a_failing_rank_fails_the_shard_with_its_own_error_and_nobody_waits(stored):
    source = _source(stored, "big", False)
    done = threading.Event()
    outcome = {}

    def write(path, chunks):
        for i, _ in enumerate(chunks):
            if path.startswith("model-rank-2-") and i == 30:
                raise OSError("disk full on rank 2")
        return FileEntry(path=path, size=0, sha256="")

    def run():
        try:
            cpu_writer.write_ranks(VLLM_LIKE, source, TPJob(tp=4), write, lambda n: None)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "write_ranks hung after a rank failed"
    assert isinstance(outcome.get("error"), OSError)
    assert "disk full on rank 2" in str(outcome["error"])


def test_a_write_callback_that_stops_reading_fails_the_shard_instead_of_hanging(stored):
    source = _source(stored, "big", False)
    done = threading.Event()
    outcome = {}

    def write(path, chunks):
        for i, _ in enumerate(chunks):
            if path.startswith("model-rank-1-") and i == 12:
                break  # a broken callback: stops early without an error
        return FileEntry(path=path, size=0, sha256="")

    def run():
        try:
            cpu_writer.write_ranks(VLLM_LIKE, source, TPJob(tp=4), write, lambda n: None)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "write_ranks hung after a rank stopped reading"
    assert isinstance(outcome.get("error"), RuntimeError)
    assert not isinstance(outcome["error"], stream.Aborted)
