"""Fixtures of the vLLM plugin tests: one loopback hub and one store for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# helpers live in vllm_support.py beside this file (a unique name: test dirs are not packages)
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The matrices here are tiny: BLAS threads only add contention on busy machines.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: checks against the real vLLM CPU build (PREHEAT_CONFORMANCE=1)"
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The session's hub and store (repos are added under unique names and never changed)."""
    from vllm_support import World

    from preheat_testing.hub import HubServer

    with HubServer() as hub:
        yield World(tmp_path_factory.mktemp("vllm-world"), hub)


@pytest.fixture(scope="session")
def shard(world):
    """`shard(case, tp, repo_prefix="tiny", seed=0, **args)`: the case pre-sharded for vLLM (cached)."""
    from vllm_support import shard_getter

    return shard_getter(world)
