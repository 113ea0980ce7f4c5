"""The ray executor on a real two-node Ray cluster, a loopback hub and SeaweedFS S3.

Every run is submitted with the `preheat` CLI as a Ray job through the Jobs API and
followed from another PREHEAT_HOME that knows nothing but the store. The hub token
lives only in the nodes' environment; the last test looks for it everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from conftest import TOKEN, TOKEN_KEY

pytestmark = pytest.mark.cluster

MiB = 1 << 20
GATED = "tiny/gated-llama"
SLOW = "tiny/slow"
LARGE = "tiny/one-large-file"
BLOB = 4 * MiB  # four of them: two per task, several seconds each on a capped hub


@pytest.fixture(scope="module")
def repos(hub):
    """A gated multi-part Llama (needs the token) and a repo of large blobs for slow runs."""
    from preheat_testing.models import build_case

    model = build_case("llama_gqa", parts=3)
    hub.add_repo(GATED, model.files)
    hub.set_gated(GATED, True)
    blobs = {f"blob-{i}.bin": os.urandom(BLOB) for i in range(4)}
    hub.add_repo(SLOW, {"config.json": '{"model_type": "none"}', **blobs})
    large = os.urandom(40 * MiB)
    hub.add_repo(LARGE, {"config.json": '{"model_type": "none"}', "large.bin": large})
    return {"model": model, "blobs": blobs, "large": large}


def url(s3, name: str) -> str:
    return s3.url(f"{name}-{uuid.uuid4().hex[:8]}")


def ray_args(cluster, store: str, *more: str) -> list[str]:
    return ["--store", store, "--executor", "ray", "--ray-address", cluster.dashboard_url, *more]


def files_of(m, ref: str, store: str, dest: Path) -> dict[str, bytes]:
    m.cli("resolve", ref, "--store", store, "--to", str(dest)).ok()
    return {
        p.relative_to(dest).as_posix(): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


def manifest(m, ref: str, store: str) -> dict:
    return m.cli("artifacts", "get", ref, "--store", store, "--json").ok().json


def comparable(m: dict) -> dict:
    """A manifest without what differs between two stores: where, when, the store's etags."""
    files = [{k: v for k, v in f.items() if k != "stored_etag"} for f in m["files"]]
    kept = {k: v for k, v in m.items() if k not in ("created", "uri", "path")}
    return {**kept, "files": files}


def wait_for(predicate, timeout: float = 60.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def record(m, run: str, store: str) -> dict:
    return m.cli("runs", "get", run, "--store", store, "--json").ok().json


def stall_second_blobs(hub, seconds: float = 20.0) -> None:
    """Each task's second blob (of SLOW) stalls once on the CDN after its first MiB."""
    from preheat_testing.hub import Fault

    for name in ("blob-2.bin", "blob-3.bin"):
        hub.inject(Fault("hang", path=f"*{name}", origin="cdn", after_bytes=MiB, seconds=seconds))


def first_blobs_verified(m, run: str, store: str) -> bool:
    """Both tasks of a SLOW run verified their first blob (and are stalled in their second)."""
    return record(m, run, store)["bytes_done"] >= 2 * BLOB


def test_prefetch_through_ray_is_byte_identical_to_the_local_executor(
    cluster, s3, machine, repos, tmp_path
):
    """Fanned out over both nodes, followed from a second home, reused by a second run."""
    a, b = machine("a"), machine("b")
    store = url(s3, "ray")
    started = a.cli(
        "prefetch", "hf-model", GATED, *ray_args(cluster, store, "--hf-token-key", TOKEN_KEY),
        "--json",
    ).ok().json  # fmt: skip
    run = started["run"]
    # a second machine sharing only the store follows the run to the end
    waited = b.cli("runs", "wait", run, "--store", store, "--json").ok().json
    assert waited["status"] == "succeeded" and waited["reused"] is False
    got = record(b, run, store)
    assert got["executor"] == "ray"
    assert got["executor_options"] == {"address": cluster.dashboard_url}
    log = b.cli("runs", "logs", run, "--store", store).ok().stdout
    assert "fanning" in log and "over 2 nodes" in log
    nodes = {line.split("[ray ", 1)[1].split()[0] for line in log.splitlines() if "[ray " in line}
    assert nodes == {"127.0.0.2", "127.0.0.3"}, "the tasks did not spread over both nodes"

    # the local executor, same request, another store: the same version and the same bytes
    local_store = url(s3, "local")
    local = a.cli(
        "prefetch", "hf-model", GATED, "--store", local_store, "--hf-token-key", TOKEN_KEY,
        "--wait", "--json", **{TOKEN_KEY: TOKEN},
    ).ok().json  # fmt: skip
    assert local["artifact"]["version"] == waited["artifact"]["version"]
    ref = f"{waited['artifact']['name']}:{waited['artifact']['version']}"
    ours, theirs = manifest(b, ref, store), manifest(b, ref, local_store)
    assert comparable(ours) == comparable(theirs)
    assert files_of(b, ref, store, tmp_path / "ray") == files_of(
        b, ref, local_store, tmp_path / "local"
    )
    for entry in ours["files"]:
        want = repos["model"].files.get(entry["path"])
        if isinstance(want, bytes):
            assert entry["sha256"] == hashlib.sha256(want).hexdigest()

    # the same request again is the same artifact, nothing fetched
    again = a.cli(
        "prefetch", "hf-model", GATED,
        *ray_args(cluster, store, "--hf-token-key", TOKEN_KEY, "--wait", "--json"),
    ).ok().json  # fmt: skip
    assert again["reused"] is True and again["bytes_fetched"] == 0
    assert again["artifact"] == waited["artifact"]


def test_a_tp2_shard_through_ray_matches_the_local_one(cluster, s3, machine, repos, tmp_path):
    """The driver shards on the cluster (CPU, no GPU requested); the result is the local one's."""
    a = machine("a")
    config = tmp_path / "shard.yaml"
    config.write_text("engine: vllm\nargs:\n  tensor_parallel_size: 2\n")
    common = ["--hf-token-key", TOKEN_KEY, "--shard-config", str(config), "--wait", "--json"]
    store, local_store = url(s3, "ray-tp"), url(s3, "local-tp")
    ours = a.cli("prefetch", "hf-model", GATED, *ray_args(cluster, store, *common)).ok().json
    theirs = (
        a.cli("prefetch", "hf-model", GATED, "--store", local_store, *common, **{TOKEN_KEY: TOKEN})
        .ok()
        .json
    )
    assert ours["artifact"]["version"] == theirs["artifact"]["version"]
    ref = f"{ours['artifact']['name']}:{ours['artifact']['version']}"
    got = files_of(a, ref, store, tmp_path / "ray")
    assert {"model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors"} <= set(got)
    assert got == files_of(a, ref, local_store, tmp_path / "local")
    # each rank's files written by a task of its own, the tasks spread over both nodes
    log = a.cli("runs", "logs", ours["run"], "--store", store).ok().stdout
    assert "writing 3 shard parts as Ray tasks over 2 nodes: side-files, rank-0, rank-1" in log
    wrote = {
        line.split("] wrote ", 1)[1].split(":")[0]: line.split("[ray ", 1)[1].split()[0]
        for line in log.splitlines()
        if "] wrote " in line
    }
    assert set(wrote) == {"side-files", "rank-0", "rank-1"}
    assert wrote["rank-0"] != wrote["rank-1"], wrote


def split_log(m, run: str, store: str) -> dict[str, set[str]]:
    """The nodes that wrote spans of each split file, from the run's log."""
    log = m.cli("runs", "logs", run, "--store", store).ok().stdout
    nodes: dict[str, set[str]] = {}
    for line in log.splitlines():
        if "task done: " in line and " spans of " in line:
            path = line.split(" spans of ", 1)[1].split(",")[0]
            nodes.setdefault(path, set()).add(line.split("[ray ", 1)[1].split()[0])
    return nodes


def running_pids(cluster, name: str) -> list[int]:
    """The worker pids of the tasks named `name` running now (Ray's state API: a worker that
    ran one before may still carry its process title)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(
        address=cluster.dashboard_url,
        filters=[("name", "=", name), ("state", "=", "RUNNING")],
        detail=True,
        raise_on_missing_output=False,
    )
    return sorted({t.worker_pid for t in tasks if t.worker_pid})


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_a_large_file_is_split_by_byte_range_across_the_nodes(
    cluster, s3, machine, repos, tmp_path, kind
):
    """40 MiB in 8 MiB spans (`PREHEAT_SPAN_SIZE` on the nodes): both nodes write spans of
    one upload (an S3 multipart upload, a file every node sees), verified whole."""
    a = machine("a")
    store = url(s3, "split") if kind == "s3" else f"file://{tmp_path / 'shared-store'}"
    out = a.cli("prefetch", "hf-model", LARGE, *ray_args(cluster, store, "--wait", "--json"))
    out = out.ok().json
    assert out["status"] == "succeeded" and out["bytes_fetched"] == len(repos["large"]) + 22
    assert split_log(a, out["run"], store) == {"large.bin": {"127.0.0.2", "127.0.0.3"}}
    log = a.cli("runs", "logs", out["run"], "--store", store).ok().stdout
    assert "1 of them split by byte range" in log and "(41943040 bytes in 5 spans)" in log
    ref = f"{out['artifact']['name']}:{out['artifact']['version']}"
    got = files_of(a, ref, store, tmp_path / "got")
    assert got["large.bin"] == repos["large"]
    files = {f["path"]: f["sha256"] for f in manifest(a, ref, store)["files"]}
    assert files["large.bin"] == hashlib.sha256(repos["large"]).hexdigest()


def test_killed_span_tasks_are_retried_and_skip_the_spans_they_wrote(
    cluster, s3, hub, machine, repos, throttled
):
    a, b = machine("a"), machine("b")
    store = url(s3, "killed-span")
    sha = hashlib.sha256(repos["large"]).hexdigest()

    def spans_served() -> list:
        return [
            r
            for r in hub.find_requests(f"/lfs/{sha}*", origin="cdn")
            if r.method == "GET" and r.status == 206 and r.body_bytes > MiB
        ]

    hub.reset_stats()
    with throttled(2 * MiB):  # four seconds a span
        run = a.cli("prefetch", "hf-model", LARGE, *ray_args(cluster, store, "--json")).ok()
        run = run.json["run"]
        # two spans written and both span tasks busy with their next ones: kill both
        victims = wait_for(
            lambda: (
                len([r for r in spans_served() if r.finished]) >= 2
                and len(found := running_pids(cluster, "fetch_share")) == 2
                and found
            ),
            timeout=90,
            poll=0.1,
        )
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        done = b.cli("runs", "wait", run, "--store", store, "--json", timeout=180).ok().json
    assert done["status"] == "succeeded"
    log = b.cli("runs", "logs", run, "--store", store).ok().stdout
    assert "spans already written" in log
    ref = f"{done['artifact']['name']}:{done['artifact']['version']}"
    assert manifest(b, ref, store)["files"][1]["sha256"] == sha
    # what was written was not fetched again: at most the two spans in flight
    served = sum(r.body_bytes for r in spans_served())
    assert served <= len(repos["large"]) + 2 * 8 * MiB, served


def test_requests_become_task_resources(cluster, s3, machine, repos):
    """`--cpu 500m --mem 64Mi` is what each transfer task asked Ray for."""
    from ray.util.state import list_tasks

    a = machine("a")
    store = url(s3, "resources")
    out = a.cli(
        "prefetch", "hf-model", SLOW,
        *ray_args(cluster, store, "--cpu", "500m", "--mem", "64Mi", "--wait", "--json"),
    ).ok().json  # fmt: skip
    assert out["status"] == "succeeded"
    tasks = list_tasks(
        address=cluster.dashboard_url, filters=[("name", "=", "fetch_batch")], detail=True
    )
    asked = {json.dumps(t.required_resources, sort_keys=True) for t in tasks}
    assert json.dumps({"CPU": 0.5, "memory": 64.0 * MiB}, sort_keys=True) in asked
    # half a CPU per task: four slots on two one-CPU nodes
    log = a.cli("runs", "logs", out["run"], "--store", store).ok().stdout
    assert "to 4 Ray tasks over 2 nodes" in log


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [("--cpu", "64", "64 CPU"), ("--mem", "4Ti", "1 CPU, 4.0 TiB memory")],
)
def test_a_request_the_cluster_cannot_satisfy_fails_fast(
    cluster, s3, machine, repos, option, value, says
):
    a = machine("a")
    store = url(s3, "unsatisfiable")
    started = time.monotonic()
    result = a.cli("prefetch", "hf-model", SLOW, *ray_args(cluster, store, option, value))
    line = result.error_line()
    assert f"asking for {says}" in line and "127.0.0.2: 1 CPU" in line and "127.0.0.3" in line
    assert time.monotonic() - started < 30  # not the 900 s a pending job would wait
    runs = a.cli("runs", "list", "--store", store, "--json").ok().json["runs"]
    assert [r["status"] for r in runs] == ["failed"]


def test_ephemeral_storage_is_checked_against_what_the_nodes_report(cluster, s3, machine, repos):
    a = machine("a")
    args = ray_args(cluster, url(s3, "disk"), "--ephemeral-storage", "1000Ti", "--wait")
    line = a.cli("prefetch", "hf-model", SLOW, *args).error_line()
    assert "ephemeral_storage 1000Ti is more than Ray node(s) offer (127.0.0.2: " in line
    assert "; 127.0.0.3: " in line and "free" in line


def test_an_unreachable_cluster_fails_fast_with_one_line(s3, machine, repos):
    a = machine("a")
    line = a.cli(
        "prefetch", "hf-model", SLOW, "--store", url(s3, "x"), "--executor", "ray",
        RAY_ADDRESS="127.0.0.1:9",
    ).error_line()  # fmt: skip
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in line


def test_a_secret_missing_on_the_nodes_fails_before_any_transfer(cluster, s3, machine, repos):
    """The preflight asks every node whether the secret is set (never its value)."""
    a = machine("a")
    store = url(s3, "nosecret")
    args = ray_args(cluster, store, "--hf-token-key", "NOT_ON_THE_NODES", "--wait")
    line = a.cli("prefetch", "hf-model", SLOW, *args).error_line()
    assert "NOT_ON_THE_NODES is not set on Ray node(s) 127.0.0.2, 127.0.0.3" in line
    # a gated repo fails even earlier, on the driver's listing, naming the same secret
    line = a.cli("prefetch", "hf-model", GATED, *args).error_line()
    assert "set $NOT_ON_THE_NODES" in line


def _driver(cluster, run: str):
    for proc in cluster.processes():
        try:
            cmd = proc.cmdline()
        except Exception:  # noqa: BLE001
            continue
        if "preheat_ray.driver" in cmd and run in cmd:
            return proc
    return None


def test_a_killed_worker_is_retried_and_resumes_from_verified_files(
    cluster, s3, hub, machine, repos
):
    a, b = machine("a"), machine("b")
    store = url(s3, "killed-worker")
    stall_second_blobs(hub)
    try:
        run = a.cli("prefetch", "hf-model", SLOW, *ray_args(cluster, store, "--json")).ok()
        run = run.json["run"]
        wait_for(lambda: first_blobs_verified(b, run, store), timeout=90)
        time.sleep(1.5)  # the driver journals what the tasks report, several times a second
        victims = wait_for(
            lambda: len(found := running_pids(cluster, "fetch_batch")) == 2 and found, timeout=10
        )
        os.kill(victims[0], signal.SIGKILL)
        done = b.cli("runs", "wait", run, "--store", store, "--json", timeout=180).ok().json
    finally:
        hub.clear_faults()
    assert done["status"] == "succeeded"
    log = b.cli("runs", "logs", run, "--store", store).ok().stdout
    assert "resuming after 1 files already verified" in log
    ref = f"{done['artifact']['name']}:{done['artifact']['version']}"
    files = {f["path"]: f["sha256"] for f in manifest(b, ref, store)["files"]}
    for path, data in repos["blobs"].items():
        assert files[path] == hashlib.sha256(data).hexdigest()


def test_a_killed_driver_leaves_no_artifact_and_the_rerun_resumes(cluster, s3, hub, machine, repos):
    a, b = machine("a"), machine("b")
    store = url(s3, "killed-driver")
    stall_second_blobs(hub)
    try:
        run = a.cli("prefetch", "hf-model", SLOW, *ray_args(cluster, store, "--json")).ok()
        run = run.json["run"]
        wait_for(lambda: first_blobs_verified(b, run, store), timeout=90)
        time.sleep(1.5)
        driver = wait_for(lambda: _driver(cluster, run))
        driver.send_signal(signal.SIGKILL)
        failed = b.cli("runs", "wait", run, "--store", store, "--json", timeout=120)
    finally:
        hub.clear_faults()
    assert failed.returncode == 1 and failed.json["status"] == "failed"
    assert a.cli("artifacts", "list", "--store", store, "--json").ok().json["artifacts"] == []
    again = a.cli("prefetch", "hf-model", SLOW, *ray_args(cluster, store, "--wait", "--json"))
    again = again.ok().json
    assert again["status"] == "succeeded"
    assert again["bytes_reused"] >= 2 * BLOB, "the rerun fetched the verified files again"
    log = a.cli("runs", "logs", again["run"], "--store", store).ok().stdout
    assert "reusing verified" in log


def test_cancel_from_another_machine_stops_the_job_and_its_tasks(
    cluster, s3, machine, repos, throttled
):
    from ray.job_submission import JobStatus, JobSubmissionClient

    a, b = machine("a"), machine("b")
    store = url(s3, "cancel")
    with throttled(256 * 1024):
        run = a.cli("prefetch", "hf-model", SLOW, *ray_args(cluster, store, "--json")).ok()
        run = run.json["run"]
        wait_for(
            lambda: record(b, run, store)["bytes_done"] > 0 or cluster.task_processes("fetch_batch")
        )
        b.cli("runs", "cancel", run, "--store", store).ok()
        done = b.cli("runs", "wait", run, "--store", store, "--json", timeout=120)
    log = b.cli("runs", "logs", run, "--store", store).stdout
    assert done.json["status"] == "cancelled", (done.json, log)
    assert done.returncode == 130
    jobs = JobSubmissionClient(cluster.dashboard_url)
    wait_for(lambda: jobs.get_job_status(f"preheat-{run}") in (JobStatus.STOPPED, JobStatus.FAILED))
    wait_for(lambda: not cluster.task_processes("fetch_batch"), timeout=30)
    assert a.cli("artifacts", "list", "--store", store, "--json").ok().json["artifacts"] == []


def test_the_token_is_nowhere(cluster, s3, machine, outputs, tmp_path_factory):
    """Not in any object, record, log, job description, job log, Ray log or CLI output."""
    from ray.job_submission import JobSubmissionClient

    from preheat.api import open_store

    os.environ.update(s3.env)
    secret = TOKEN.encode()
    store = open_store(s3.url())
    objects = list(store.list(""))
    assert any(o.key.endswith(".json") and "/runs/" in f"/{o.key}" for o in objects)
    for info in objects:
        assert secret not in store.read(info.key)[0], info.key
    jobs = JobSubmissionClient(cluster.dashboard_url)
    listed = jobs.list_jobs()
    assert listed, "no job was submitted"
    for job in listed:
        assert TOKEN not in repr(job)
        assert TOKEN not in repr(jobs.get_job_info(job.submission_id))
        assert TOKEN not in jobs.get_job_logs(job.submission_id)
    assert all(TOKEN not in text for text in outputs)
    roots = [cluster.temp, tmp_path_factory.getbasetemp()]
    checked = 0
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                checked += 1
                assert secret not in data, path
    assert checked > 50
