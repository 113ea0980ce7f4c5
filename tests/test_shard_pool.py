"""Shard pools: the parts of a shard (side files, one per rank) written elsewhere.

A pool here plays a cluster: it sends the plain `ShardJob` across a pickle boundary and
writes each part with `run_shard_part` on a fresh store and sharder, in parallel threads,
as remote tasks would. The run keeps the manifest and the publish, so the artifact is the
one the sharder writes alone in the run's process, byte for byte.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from preheat.api import PreheatError, ShardPool, run_shard_part
from preheat_testing.sharding import ENGINES

ENGINE_NAMES = sorted(ENGINES)


class Elsewhere(ShardPool):
    """Writes every part from a pickled job, each on its own thread."""

    def __init__(self, *, skip: str | None = None, fail: str | None = None) -> None:
        self.parts: list[str] = []
        self.threads: set[str] = set()
        self.skip, self.fail = skip, fail
        self.bytes = 0
        self._lock = threading.Lock()

    def shard(self, job, parts, *, done, progress=None, cancelled=None):
        payload = pickle.dumps(job)
        self.parts = list(parts)

        def one(part: str) -> None:
            if part == self.fail:
                raise PreheatError(f"part {part} died")
            with self._lock:
                self.threads.add(threading.current_thread().name)

            def counted(n: int) -> None:
                with self._lock:
                    self.bytes += n

            entries = run_shard_part(pickle.loads(payload), part, on_bytes=counted)
            if part != self.skip:
                done(part, entries)

        # one thread per part, as a cluster runs one task per part; a thread pool could
        # hand a finished part's thread to the next one
        errors: list[Exception] = []

        def guarded(part: str) -> None:
            try:
                one(part)
            except Exception as e:  # re-raised below, on the caller
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(p,), name=f"part-{p}") for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def run(store, repo, engine, tp, pool, **args):
    from preheat.models import PrefetchRequest
    from preheat.runner import execute
    from preheat.runs import create_run

    request = PrefetchRequest(repo=repo, shard=ENGINES[engine].config(tp, **args))
    created = create_run(request, str(store))
    return execute(created.store_url, created.name, shards=pool)


def tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def repo(preheat_env, hub, tiny_model):
    hub.add_repo("tiny/shardable", tiny_model("llama_multipart").files)
    preheat_env.connect(hub)
    return "tiny/shardable"


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_parts_written_apart_make_the_artifact_the_sharder_writes_alone(repo, engine, tmp_path):
    pool = Elsewhere()
    ours = run(tmp_path / "pool", repo, engine, 2, pool)
    theirs = run(tmp_path / "alone", repo, engine, 2, None)
    assert ours.status == theirs.status == "succeeded", (ours.error, theirs.error)
    assert ours.artifact == theirs.artifact
    assert pool.parts == ["side-files", "rank-0", "rank-1"]
    assert len(pool.threads) == 3 and pool.bytes > 0
    name, version = ours.artifact.name, ours.artifact.version
    a = tree(tmp_path / "pool" / "artifacts" / name / version)
    b = tree(tmp_path / "alone" / "artifacts" / name / version)
    assert a == b
    assert {"model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors"} <= set(a)


def test_a_part_the_pool_never_reports_keeps_the_version_unpublished(repo, tmp_path):
    record = run(tmp_path / "store", repo, "vllm", 2, Elsewhere(skip="rank-1"))
    assert record.status == "failed" and "did not write part(s) rank-1" in record.error
    assert not list((tmp_path / "store").glob("manifests/**/*.json"))[1:]  # the base only


def test_a_failing_part_fails_the_run_and_a_rerun_publishes(repo, tmp_path):
    record = run(tmp_path / "store", repo, "vllm", 2, Elsewhere(fail="rank-0"))
    assert record.status == "failed" and record.error == "part rank-0 died"
    again = run(tmp_path / "store", repo, "vllm", 2, Elsewhere())
    assert again.status == "succeeded", again.error


class FakeEngine:
    """The engine's save routine, faked: its probe finds GPUs only on a pool's part threads
    (machines with GPUs; none when `parts_have_gpus` is false), never on the run's own thread
    (a CPU-only head). It writes one small file per rank; `probed` lists the threads probed."""

    def __init__(self) -> None:
        self.probed: list[str] = []
        self.parts_have_gpus = True

    def problem(self, process, tp: int) -> str | None:
        here = threading.current_thread().name
        self.probed.append(here)
        if here.startswith("part-") and self.parts_have_gpus:
            return None
        return f"{process.module} needs {tp} GPU(s), found 0"

    @staticmethod
    def run(process, src: str, out: str, job) -> None:
        for rank in range(job.tp):
            Path(out, f"model-rank-{rank}-part-0.safetensors").write_bytes(b"rank %d" % rank)


@pytest.fixture
def fake_engine(monkeypatch):
    from preheat_tp.engine import EngineProcess

    fake = FakeEngine()
    monkeypatch.setattr(EngineProcess, "problem", lambda self, tp: fake.problem(self, tp))
    monkeypatch.setattr(EngineProcess, "run", FakeEngine.run)
    return fake


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_with_a_pool_the_engine_is_probed_where_its_part_runs(repo, engine, tmp_path, fake_engine):
    alone = run(tmp_path / "alone", repo, engine, 2, None, method="engine")
    assert alone.status == "failed"
    assert alone.error == f"method: engine cannot run here: {engine} needs 2 GPU(s), found 0"
    assert fake_engine.probed == ["MainThread"]

    fake_engine.probed.clear()
    pool = Elsewhere()
    ours = run(tmp_path / "pool", repo, engine, 2, pool, method="engine")
    assert ours.status == "succeeded", ours.error
    assert pool.parts == ["engine"] and fake_engine.probed == ["part-engine"]
    version = tmp_path / "pool" / "artifacts" / ours.artifact.name / ours.artifact.version
    files = tree(version)
    assert files["model-rank-1-part-0.safetensors"] == b"rank 1"
    assert "config.json" in files


def test_a_part_on_a_machine_without_the_engine_fails_before_reading(repo, tmp_path, fake_engine):
    fake_engine.parts_have_gpus = False
    pool = Elsewhere()
    record = run(tmp_path / "store", repo, "vllm", 2, pool, method="engine")
    assert record.status == "failed"
    assert record.error.startswith("method: engine cannot run on "), record.error
    assert record.error.endswith(": vllm needs 2 GPU(s), found 0")
    assert pool.bytes == 0 and fake_engine.probed == ["part-engine"]
    assert not list((tmp_path / "store").glob("manifests/**/*.json"))[1:]  # the base only


def test_the_engine_path_is_one_part_and_unknown_parts_are_refused():
    """The engine's own save routine loads the whole model: one part, on the accelerators."""
    from preheat.plugins import lookup

    sharder = lookup("sharders", "vllm").value()
    assert sharder.parts(_plan(sharder, method="engine")) == ["engine"]
    for method, part in [("cpu", "rank-9"), ("cpu", "engine"), ("engine", "rank-0")]:
        with pytest.raises(PreheatError, match=f"no shard part '{part}'"):
            sharder.shard_part(_plan(sharder, method=method), None, part, None, None)


def _plan(sharder, *, method):
    from preheat.api import ShardPlan, ShardSpec
    from preheat_tp import TPJob

    spec = ShardSpec(
        engine="vllm", tensor_parallel_size=2, dtype="auto", method=method, file_pattern="x"
    )
    return ShardPlan(spec=spec, output_bytes=0, data=TPJob(tp=2))
