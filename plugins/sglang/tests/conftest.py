"""Fixtures of the SGLang plugin tests: one loopback hub and one store for the session."""

from __future__ import annotations

import os

import pytest

# The matrices here are tiny: BLAS threads only add contention on busy machines.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The session's hub and store (repos are added under unique names and never changed)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("sglang-world"), hub)


@pytest.fixture(scope="session")
def shard(world):
    """`shard(case, tp, repo_prefix="tiny", seed=0, **args)`: the case pre-sharded for SGLang (cached)."""
    from preheat_testing.sharding import SGLANG, shard_getter

    return shard_getter(world, SGLANG)
