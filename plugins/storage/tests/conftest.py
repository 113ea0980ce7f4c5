"""Fixtures: real S3 (moto, SeaweedFS) and Azure (Azurite) servers, started once per session."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from preheat_testing import servers
except ImportError:  # preheat-testing not installed: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "testing"))
    from preheat_testing import servers

_ISOLATED = ("AWS_", "AZURE_", "AZURITE_", "GOOGLE_", "PREHEAT_")
_KEEP = {"PREHEAT_WEED", "PREHEAT_AZURITE", "PREHEAT_AZURITE_INSTALL", "PREHEAT_NODE_PREFIX"}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No cloud settings leak in from the developer's shell, ~/.aws or ~/.cache/preheat."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED) and name not in _KEEP:
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREHEAT_CONFIG", str(tmp_path / "preheat-config.toml"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))


class _Servers:
    """Servers started on first use and kept for the session; a failed start is not retried."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.started: dict[str, servers.ObjectServer | tuple[bool, str]] = {}

    def get(self, name: str) -> servers.ObjectServer:
        if name not in self.started:
            factory = {
                "moto": servers.moto_s3,
                "seaweedfs": servers.seaweedfs_s3,
                "azurite": servers.azurite_blob,
            }[name]
            try:
                self.started[name] = self.stack.enter_context(factory())
            except servers.ServerUnavailable as exc:
                self.started[name] = (True, str(exc))
            except Exception as exc:  # noqa: BLE001 - reported by every test that needs it
                self.started[name] = (False, f"{type(exc).__name__}: {exc}")
        found = self.started[name]
        if isinstance(found, tuple):
            unavailable, reason = found
            if unavailable:
                pytest.skip(f"{name} unavailable: {reason}")
            pytest.fail(f"{name} did not start: {reason}")
        return found


@pytest.fixture(scope="session")
def object_servers():
    pool = _Servers()
    with pool.stack:
        yield pool


@dataclass
class Backend:
    """One store implementation under test and how to reach it."""

    name: str
    server: servers.ObjectServer | None

    @property
    def kind(self) -> str:
        return "memory" if self.server is None else self.server.kind

    def url(self, prefix: str, bucket: str | None = None) -> str:
        if self.server is None:
            return f"memory://tests/{prefix}"
        return self.server.url(prefix, bucket)


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("moto", id="moto", marks=pytest.mark.s3),
    pytest.param("seaweedfs", id="seaweedfs", marks=pytest.mark.s3),
    pytest.param("azurite", id="azurite", marks=pytest.mark.azure),
]
REMOTE = BACKENDS[1:]


def _backend(request, object_servers, monkeypatch) -> Backend:
    name = request.param
    server = None if name == "memory" else object_servers.get(name)
    if server is not None:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
    return Backend(name, server)


@pytest.fixture(params=BACKENDS)
def backend(request, object_servers, monkeypatch) -> Backend:
    return _backend(request, object_servers, monkeypatch)


@pytest.fixture(params=REMOTE)
def remote(request, object_servers, monkeypatch) -> Backend:
    return _backend(request, object_servers, monkeypatch)


@pytest.fixture
def make_store(backend):
    """Build stores on `backend` under a fresh prefix; closes them afterwards."""
    from preheat_storage.store import ObstoreStore

    made = []
    base = f"t-{uuid.uuid4().hex[:10]}"

    def make(sub: str = "", **options):
        store = ObstoreStore(backend.url(f"{base}/{sub}".rstrip("/")), options=options or None)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store):
    return make_store()
