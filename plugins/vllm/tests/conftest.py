"""Fixtures of the vLLM plugin tests: one loopback hub and one store for the session."""

from __future__ import annotations

import os

import pytest

from preheat_testing.vllm_python import Vllm, vllm_interpreter

# The matrices here are tiny: BLAS threads only add contention on busy machines.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: checks against the real vLLM CPU build (needs PREHEAT_VLLM_PYTHON)"
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The session's hub and store (repos are added under unique names and never changed)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("vllm-world"), hub)


@pytest.fixture(scope="session")
def shard(world):
    """`shard(case, tp, repo_prefix="tiny", seed=0, **args)`: the case pre-sharded for vLLM (cached)."""
    from preheat_testing.sharding import VLLM, shard_getter

    return shard_getter(world, VLLM)


@pytest.fixture(scope="session")
def vllm() -> Vllm:
    """The interpreter that has vLLM, or a skip (a failure under PREHEAT_REQUIRE_CONFORMANCE=1)."""
    return vllm_interpreter()
