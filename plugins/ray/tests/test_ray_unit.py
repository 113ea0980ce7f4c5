"""The ray executor without a cluster: registration, requests as Ray resources, addresses, batches."""

from __future__ import annotations

import socket
import time

import pytest
from preheat_ray import plugin
from preheat_ray.cluster import (
    Node,
    Requests,
    check_reachable,
    check_satisfiable,
    host_port,
    requests,
)
from preheat_ray.transfers import batches

from preheat.api import PreheatError, RemoteFile, Resources, Transfer


def test_registers_the_ray_executor():
    seen = {}
    plugin.preheat_register_executors(register=lambda name, factory: seen.update({name: factory}))
    assert list(seen) == ["ray"]
    from preheat_ray.executor import RayExecutor

    assert isinstance(seen["ray"](), RayExecutor)


def test_cpu_and_mem_become_num_cpus_and_memory():
    need = requests(Resources(cpu="500m", mem="1Gi"))
    assert need.task_options() == {"num_cpus": 0.5, "memory": 1 << 30}
    assert requests(Resources()).task_options() == {"num_cpus": 1.0}


def test_accelerator_becomes_gpus_only_for_steps_that_need_them():
    resources = Resources(cpu="4", accelerator="L40s:4")
    assert requests(resources).task_options() == {"num_cpus": 4.0}
    assert requests(resources, gpu=True).task_options() == {
        "num_cpus": 4.0,
        "num_gpus": 4.0,
        "accelerator_type": "L40S",
    }
    with pytest.raises(PreheatError):
        requests(Resources(accelerator="L40s:many"))


def test_only_the_engine_shard_step_asks_for_the_accelerator():
    from types import SimpleNamespace

    from preheat_ray.executor import RayExecutor

    def record(method: str | None) -> SimpleNamespace:
        """The fields of a run record the executor reads (no engine plugin needed here)."""
        shard = None if method is None else SimpleNamespace(args=SimpleNamespace(method=method))
        resources = Resources(cpu="2", accelerator="H100:2")
        return SimpleNamespace(request=SimpleNamespace(shard=shard, resources=resources))

    assert RayExecutor.engine_shard_requests(record(None)) is None
    assert RayExecutor.engine_shard_requests(record("cpu")) is None
    assert RayExecutor.engine_shard_requests(record("auto")) is None
    need = RayExecutor.engine_shard_requests(record("engine"))
    assert need.task_options() == {"num_cpus": 2.0, "num_gpus": 2.0, "accelerator_type": "H100"}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.2:6379", ("127.0.0.2", 6379)),
        ("http://head:8265", ("head", 8265)),
        ("https://ray.example.com", ("ray.example.com", 443)),
    ],
)
def test_both_kinds_of_address(address, expected):
    assert host_port(address) == expected


@pytest.mark.parametrize("address", ["head", "ftp://head:21", "http://:80", "head:port"])
def test_bad_addresses_are_refused_in_one_line(address):
    with pytest.raises(PreheatError, match="Ray address"):
        host_port(address)


def test_an_unreachable_cluster_fails_within_seconds():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PreheatError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_a_request_no_node_offers_names_what_the_cluster_has():
    nodes = [
        Node("10.0.0.1", "a", {"CPU": 8.0, "memory": 32.0 * (1 << 30)}),
        Node("10.0.0.2", "b", {"CPU": 4.0, "memory": 16.0 * (1 << 30), "GPU": 1.0}),
    ]
    assert check_satisfiable("X", nodes, Requests(num_cpus=6), "a task") == nodes[:1]
    with pytest.raises(PreheatError) as err:
        check_satisfiable("X", nodes, Requests(num_cpus=16, memory=1 << 30), "a task")
    message = str(err.value)
    assert "asking for 16 CPU, 1.0 GiB memory" in message
    assert "10.0.0.1: 8 CPU, 32.0 GiB memory" in message and "10.0.0.2: 4 CPU" in message
    gpu = Requests(num_cpus=1, num_gpus=1, accelerator_type="H100")
    with pytest.raises(PreheatError, match="1 H100"):
        check_satisfiable("X", nodes, gpu, "a task")


def test_batches_balance_bytes_largest_first():
    files = [Transfer(RemoteFile(f"f{i}", size), f"k{i}") for i, size in enumerate([9, 1, 5, 4, 3])]
    parts = batches(files, 2)
    assert sorted(sum(t.file.size for t in p) for p in parts) == [10, 12]
    assert [t.file.path for t in parts[0]][0] == "f0"
    assert len(batches(files, 10)) == 5 and batches(files[:1], 0) == [files[:1]]


def test_the_job_entrypoint_holds_only_the_store_and_the_run(tmp_path):
    from preheat_ray.executor import entrypoint, job_id

    from preheat.api import PrefetchRequest, RunRecord

    record = RunRecord(
        name="r20260101-000000-abcdef",
        status="queued",
        request=PrefetchRequest(repo="org/model", hf_token_key="MY_SECRET"),
        created="now",
        store="s3://bucket/models",
        executor="ray",
    )
    assert entrypoint(record) == (
        "python -m preheat_ray.driver s3://bucket/models r20260101-000000-abcdef"
    )
    assert job_id(record) == "preheat-r20260101-000000-abcdef"
