"""Transfer pools: the download stage hands the files to fetch to an executor's pool.

A pool here plays a cluster: it sends the plain records across a pickle boundary and runs
them with `run_transfers` on a fresh store and fetcher, as a remote task would. The run
keeps the journal and the publish, so the artifact is the default pool's, byte for byte.
"""

from __future__ import annotations

import pickle

import pytest

from preheat.api import PreheatError, TransferPool, run_transfers

SECRET = "hf_poolSecretValue0123456789"


class Elsewhere(TransferPool):
    """Runs every transfer from pickled records, as another machine would."""

    def __init__(self, report: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.report = report  # report only this many files (a broken pool)

    def transfer(self, job, transfers, *, fetch, done, progress=None, cancelled=None):
        payload = pickle.dumps((job, list(transfers)))
        self.sent.append(payload)
        job, transfers = pickle.loads(payload)
        for i, result in enumerate(run_transfers(job, transfers, on_bytes=progress)):
            if self.report is None or i < self.report:
                done(result)


class Failing(TransferPool):
    def transfer(self, job, transfers, *, fetch, done, progress=None, cancelled=None):
        raise PreheatError("the cluster is gone")


def run(env, repo, pool, store):
    from preheat.models import PrefetchRequest
    from preheat.runner import execute
    from preheat.runs import create_run

    created = create_run(PrefetchRequest(repo=repo, hf_token_key="POOL_TOKEN"), str(store))
    return execute(created.store_url, created.name, transfers=pool)


@pytest.fixture
def gated(preheat_env, hub, tiny_model):
    hub.add_repo("tiny/multipart", tiny_model("llama_multipart").files)
    hub.set_gated("tiny/multipart", True)
    hub.add_token(SECRET)
    preheat_env.connect(hub)
    preheat_env.set("POOL_TOKEN", SECRET)
    return preheat_env


def tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_pool_that_fetches_elsewhere_publishes_the_same_artifact(gated, tmp_path):
    pool = Elsewhere()
    ours = run(gated, "tiny/multipart", pool, tmp_path / "pool")
    theirs = run(gated, "tiny/multipart", None, tmp_path / "threads")
    assert ours.status == theirs.status == "succeeded", (ours.error, theirs.error)
    assert ours.artifact == theirs.artifact
    name, version = ours.artifact.name, ours.artifact.version
    a = tree(tmp_path / "pool" / "artifacts" / name / version)
    b = tree(tmp_path / "threads" / "artifacts" / name / version)
    assert a == b and len(a) >= 5
    assert ours.bytes_fetched == theirs.bytes_fetched > 0
    # the records that crossed the boundary name the secret, never hold it
    (payload,) = pool.sent
    assert b"POOL_TOKEN" in payload and SECRET.encode() not in payload
    # the same request again is reused without asking the pool
    again = Elsewhere()
    assert run(gated, "tiny/multipart", again, tmp_path / "pool").reused is True
    assert again.sent == []


def test_a_failing_pool_fails_the_run_with_its_message(gated, tmp_path):
    record = run(gated, "tiny/multipart", Failing(), tmp_path / "store")
    assert record.status == "failed" and record.error == "the cluster is gone"
    assert not list((tmp_path / "store").glob("manifests/**/*.json"))


def test_files_a_pool_does_not_report_are_never_published(gated, tmp_path):
    record = run(gated, "tiny/multipart", Elsewhere(report=2), tmp_path / "store")
    assert record.status == "failed" and "did not report" in record.error
    # what was reported is journaled: the rerun with a working pool fetches only the rest
    pool = Elsewhere()
    again = run(gated, "tiny/multipart", pool, tmp_path / "store")
    assert again.status == "succeeded" and again.bytes_reused > 0
    _, transfers = pickle.loads(pool.sent[0])
    published = tree(
        tmp_path / "store" / "artifacts" / again.artifact.name / again.artifact.version
    )
    assert len(transfers) == len(published) - 2
