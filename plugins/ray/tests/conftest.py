"""Fixtures: a loopback hub, SeaweedFS S3 and a real two-node Ray cluster, once per session.

The cluster's nodes get the hub's endpoint, the store's credentials and the hub
token in their own environment at `ray start`, as a real cluster gets them from
its pod specs: nothing secret is ever passed with a job or a task.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    from preheat_testing import servers
except ImportError:  # preheat-testing not installed: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "testing"))
    from preheat_testing import servers

from preheat_testing.cli import CliResult
from preheat_testing.hub import HubServer

PREHEAT = str(Path(sys.executable).with_name("preheat"))
TOKEN = "hf_rayTestSecret0123456789abcdef"
TOKEN_KEY = "PREHEAT_RAY_TEST_TOKEN"
# every transfer task streams over one connection, so a capped hub shows the per-node limit;
# files over two 8 MiB spans are split by byte range across the tasks
NODE_ENV = {
    "PREHEAT_CONNECTIONS": "1",
    "PREHEAT_SPAN_SIZE": "8Mi",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
_ISOLATED = ("PREHEAT_", "HF_", "AWS_", "RAY_")
_KEEP = {"PREHEAT_WEED"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without preheat, Hub, cloud or Ray settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED) or k in _KEEP}
    env.update(extra)
    return env


@dataclass
class Machine:
    """A machine that runs the `preheat` CLI with its own PREHEAT_HOME (no token, no Ray address)."""

    home: Path
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 300, **extra: str) -> CliResult:
        proc = subprocess.run(
            [PREHEAT, *args],
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs += [proc.stdout, proc.stderr]
        return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def hub():
    with HubServer() as server:
        server.add_token(TOKEN)
        yield server


@pytest.fixture(scope="session")
def s3():
    try:
        with servers.seaweedfs_s3() as server:
            yield server
    except servers.ServerUnavailable as exc:
        pytest.skip(f"SeaweedFS unavailable: {exc}")


@pytest.fixture(scope="session")
def cluster(hub, s3, tmp_path_factory):
    from preheat_testing.raycluster import RayCluster

    env = {
        **NODE_ENV,
        **s3.env,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path_factory.mktemp("node-hf-home")),
        "PREHEAT_HOME": str(tmp_path_factory.mktemp("node-preheat-home")),
        TOKEN_KEY: TOKEN,
    }
    with RayCluster(env=env) as c:
        c.add_node()
        yield c


@pytest.fixture(scope="session")
def outputs():
    """Every CLI output of the session, checked for the token by the last test."""
    return []


@pytest.fixture
def machine(tmp_path, hub, s3, outputs):
    """Make CLI machines sharing the S3 store, each with its own PREHEAT_HOME."""
    made = []

    def make(name: str = "a", **extra: str) -> Machine:
        home = tmp_path / f"home-{name}"
        env = clean_env(
            PREHEAT_HOME=str(home),
            HF_HOME=str(tmp_path / f"hf-{name}"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            **s3.env,
            **extra,
        )
        m = Machine(home, env, outputs)
        made.append(m)
        return m

    yield make


@pytest.fixture
def throttled(hub):
    """Cap every hub connection (bytes per second) for one test."""

    @contextlib.contextmanager
    def cap(rate: int):
        hub.per_connection_bytes_per_sec = rate
        try:
            yield
        finally:
            hub.per_connection_bytes_per_sec = None

    return cap
