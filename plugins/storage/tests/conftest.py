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
            if unavailable and os.environ.get("PREHEAT_REQUIRE_SERVERS") != "1":
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


# ================================================================================================
# End-to-end fixtures (test_storage_e2e*.py): the real `preheat` CLI and detached workers against
# the session's servers and a loopback Hugging Face Hub. Every "machine" is a fresh PREHEAT_HOME
# and HF_HOME; subprocess environments are built from scratch, so the tests' monkeypatched
# os.environ never leaks into them.
# ================================================================================================

import hashlib  # noqa: E402
import subprocess  # noqa: E402
from itertools import count  # noqa: E402

from preheat_testing.cli import CliProcess, CliResult, run_cli, run_in_process  # noqa: E402

_E2E_DROPPED = ("AWS_", "AZURE_", "AZURITE_", "GOOGLE_", "PREHEAT_", "HF_", "HUGGING", "PYTEST_")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Machine:
    """A host with no local preheat state: its own PREHEAT_HOME, HF_HOME and working directory."""

    def __init__(self, e2e: E2E, root: Path, server, env: dict) -> None:
        self.e2e = e2e
        self.root = root
        self.home = root / "preheat-home"
        self.cwd = root / "cwd"
        for d in (self.home, self.cwd, root / "hf-home"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_E2E_DROPPED)}
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(root / "hf-home"),
            HF_ENDPOINT=e2e.hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_RETRY_BACKOFF="0.01",
            # the CPU slicer, even where an engine happens to be installed
            PREHEAT_VLLM_PYTHON=str(e2e.no_engine),
            PREHEAT_SGLANG_PYTHON=str(e2e.no_engine),
        )
        if server is not None:
            self.env.update(server.env)
        self.env.update(env)

    def start(self, *args: str, env: dict | None = None) -> CliProcess:
        """`preheat ARGS...` started in the background; collect it with `finish`."""
        proc = CliProcess(args, env={**self.env, **(env or {})}, cwd=self.cwd)
        self.e2e.procs.append(proc)
        return proc

    def finish(self, proc: CliProcess, timeout: float = 120) -> CliResult:
        result = proc.finish(timeout)
        self.e2e.check_output(result)
        return result

    def cli(self, *args: str, env: dict | None = None, timeout: float = 120) -> CliResult:
        """`preheat ARGS...` as a subprocess."""
        result = run_cli(args, env={**self.env, **(env or {})}, cwd=self.cwd, timeout=timeout)
        self.e2e.check_output(result)
        return result

    def many(self, *commands) -> list[CliResult]:
        """Several independent `preheat` commands at once (each a tuple of arguments)."""
        procs = [self.start(*args) for args in commands]
        return [self.finish(p) for p in procs]

    def in_process(self, *args: str) -> CliResult:
        """The CLI's `main()` in this process under this machine's environment (for quick reads)."""
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key not in self.env:
                    mp.delenv(key)
            for key, value in self.env.items():
                mp.setenv(key, value)
            result = run_in_process(args, cwd=self.cwd)
        self.e2e.check_output(result)
        return result

    def many_in_process(self, *commands) -> list[CliResult]:
        return [self.in_process(*args) for args in commands]


class E2E:
    """The session's end-to-end world: a loopback hub, the object servers, machines, secrets."""

    def __init__(self, root: Path, hub, pool: _Servers) -> None:
        self.root = root
        self.hub = hub
        self.pool = pool
        self.base = f"e2e-{uuid.uuid4().hex[:8]}"
        self.secrets = {servers.SECRET_KEY, servers.AZURITE_KEY}
        self.machines: list[Machine] = []
        self.procs: list[subprocess.Popen] = []
        self._raw: dict[str, object] = {}
        self._ids = count(1)
        self.no_engine = root / "no-engine-python"
        self.no_engine.write_text("#!/bin/sh\nexit 1\n")
        self.no_engine.chmod(0o755)

    # servers and stores

    def server(self, name: str) -> servers.ObjectServer:
        return self.pool.get(name)

    def url(self, server, sub: str) -> str:
        """A store URL under this session's prefix."""
        return server.url(f"{self.base}/{sub}")

    @staticmethod
    def key_prefix(url: str) -> str:
        """The bucket-relative object prefix of a store URL, with a trailing slash."""
        rest = url.split("://", 1)[1]
        return rest.split("/", 1)[1].rstrip("/") + "/" if "/" in rest else ""

    def raw(self, server, bucket: str | None = None):
        """An obstore store on the server's bucket, configured directly (not through preheat)."""
        key = f"{server.name}/{bucket or server.bucket}"
        if key not in self._raw:
            from obstore.store import AzureStore, S3Store

            if server.kind == "azure":
                self._raw[key] = AzureStore(
                    bucket or server.bucket,
                    account_name=servers.AZURITE_ACCOUNT,
                    account_key=servers.AZURITE_KEY,
                    endpoint=server.endpoint,
                    client_options={"allow_http": True},
                )
            else:
                self._raw[key] = S3Store(
                    bucket or server.bucket,
                    endpoint=server.endpoint,
                    access_key_id=servers.ACCESS_KEY,
                    secret_access_key=servers.SECRET_KEY,
                    region=servers.REGION,
                    virtual_hosted_style_request=False,
                    client_options={"allow_http": True},
                )
        return self._raw[key]

    def objects(self, server, url: str) -> dict[str, int]:
        """{key relative to the store URL: size} of every object under it, read with obstore."""
        import obstore

        prefix = self.key_prefix(url)
        found = {}
        for batch in obstore.list(self.raw(server), prefix.rstrip("/") or None):
            for meta in batch:
                if meta["path"].startswith(prefix):
                    found[meta["path"][len(prefix) :]] = int(meta["size"])
        return found

    def read(self, server, url: str, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.raw(server), self.key_prefix(url) + key).bytes())

    def uploads(self, server, url: str) -> list:
        """Open multipart uploads under the store URL (ListMultipartUploads, S3 only)."""
        from preheat_storage.s3api import S3Api

        api = S3Api(
            server.endpoint,
            server.bucket,
            servers.REGION,
            (servers.ACCESS_KEY, servers.SECRET_KEY, None),
        )
        return list(api.list_uploads(self.key_prefix(url)))

    # hub

    def repo(self, case: str, **overrides):
        """A fresh hub repo holding the named tiny model: (repo id, TinyModel)."""
        from preheat_testing.models import build_case

        model = build_case(case, **overrides)
        repo = f"e2e/{case.replace('_', '-')}-{next(self._ids)}"
        self.hub.add_repo(repo, model.files)
        return repo, model

    def mark(self) -> int:
        return len(self.hub.requests)

    def weight_requests(self, repo: str, since: int = 0) -> list:
        """Hub and CDN requests for the repo's safetensors files that returned content."""
        return [
            r
            for r in self.hub.requests[since:]
            if r.repo_id == repo
            and r.file
            and r.file.endswith(".safetensors")
            and r.status in (200, 206)
        ]

    def repo_requests(self, repo: str, since: int = 0) -> list:
        return [r for r in self.hub.requests[since:] if r.repo_id == repo]

    # machines and secrets

    def machine(self, server=None, **env: str) -> Machine:
        m = Machine(self, self.root / f"machine-{next(self._ids)}", server, env)
        self.machines.append(m)
        return m

    def check_output(self, result: CliResult) -> None:
        for secret in self.secrets:
            assert secret not in result.stdout and secret not in result.stderr, (
                f"a secret was printed by preheat {' '.join(result.args)}"
            )

    def assert_no_secrets(self) -> list[str]:
        """No secret in any file under any machine's PREHEAT_HOME or any object of the session."""
        import obstore

        needles = [s.encode() for s in self.secrets]
        scanned = []
        for m in self.machines:
            for path in m.home.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    assert not any(n in data for n in needles), f"a secret is in {path}"
                    scanned.append(str(path))
        for name, started in self.pool.started.items():
            if isinstance(started, tuple):
                continue
            store = self.raw(started)
            for batch in obstore.list(store, self.base):
                for meta in batch:
                    data = bytes(obstore.get(store, meta["path"]).bytes())
                    assert not any(n in data for n in needles), (
                        f"a secret is in {name}:{meta['path']}"
                    )
                    scanned.append(f"{name}:{meta['path']}")
        return scanned

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.communicate(timeout=10)


@pytest.fixture(scope="session")
def e2e_hub():
    """A loopback Hugging Face Hub for the end-to-end tests (repos get unique names)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from preheat_testing.hub import HubServer

    with HubServer() as hub:
        yield hub


@pytest.fixture(scope="session")
def e2e(tmp_path_factory, e2e_hub, object_servers):
    world = E2E(tmp_path_factory.mktemp("e2e"), e2e_hub, object_servers)
    try:
        yield world
    finally:
        world.close()


# ================================================================================================
# End of the end-to-end fixtures.
# ================================================================================================
