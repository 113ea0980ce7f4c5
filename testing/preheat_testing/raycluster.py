"""A real Ray cluster on loopback for tests and benchmarks: a head and worker nodes.

Each node listens on its own loopback address (127.0.0.2, 127.0.0.3, ...) and free
ports, so it clashes with no other cluster on the machine. Every process a
`ray start` leaves behind carries a tag in its environment; `stop()` kills exactly
those (never `ray stop`, which kills every Ray process on the machine by name).

    with RayCluster(env={"HF_ENDPOINT": hub.endpoint}) as cluster:
        cluster.add_node()                 # a second node
        cluster.gcs_address               # for ray.init
        cluster.dashboard_url             # for the Jobs API

Needs `ray[default]` installed beside the running interpreter (its `ray` script).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from preheat_testing.servers import ServerUnavailable, free_ports

TAG = "PREHEAT_TEST_RAY_CLUSTER"
# a first start on a fresh machine compiles and imports the dashboard's modules: about
# 15 s here, more on a loaded 2-vCPU machine
START_TIMEOUT = 120.0


def ray_binary() -> str:
    """The `ray` script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise ServerUnavailable("ray is not installed: pip install 'ray[default]==2.60.*'")
    return found


class RayCluster:
    """A head node (127.0.0.2) plus `add_node()` workers (127.0.0.3, ...), stopped by PID.

    :param env: extra environment of every node (and so of every task and job it runs):
        endpoints, and secrets, which reach tasks this way without appearing in any job.
    :param cpus: `--num-cpus` of each node.
    :param cores: pin node i to CPU core `cores[i]` with `taskset` (None: no pinning).
    """

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        cpus: int = 1,
        cores: list[int] | None = None,
        object_store_bytes: int = 150_000_000,
    ) -> None:
        self.tag = uuid.uuid4().hex
        self.env = dict(env or {})
        self.cpus = cpus
        self.cores = cores
        self.object_store_bytes = object_store_bytes
        self.temp = Path(tempfile.mkdtemp(prefix="preheat-ray-", dir="/tmp"))
        self.nodes: list[str] = []
        self.port = 0
        self.dashboard_port = 0
        self.ray = ray_binary()

    @property
    def head_ip(self) -> str:
        return "127.0.0.2"

    @property
    def gcs_address(self) -> str:
        """What `ray.init(address=...)` and `ray start --address` take."""
        return f"{self.head_ip}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The Jobs API (and state API) address."""
        return f"http://{self.head_ip}:{self.dashboard_port}"

    def _environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.env)
        env[TAG] = self.tag
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # explicit: with RAY_AUTH_MODE unset, Ray turns token auth on for every node once a
        # ~/.ray/auth_token exists (a local `ray.init()` writes one), and clients then get 401
        env["RAY_AUTH_MODE"] = "disabled"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(self, args: list[str]) -> None:
        index = len(self.nodes)
        prefix = []
        if self.cores is not None:
            prefix = ["taskset", "-c", str(self.cores[index % len(self.cores)])]
        cmd = [*prefix, self.ray, "start", *args, "--num-cpus", str(self.cpus)]
        cmd += ["--temp-dir", str(self.temp), "--disable-usage-stats"]
        # run from the cluster's own folder: a `ray.py` in the caller's folder (benchmarks/)
        # would shadow the ray package in the processes Ray spawns
        proc = subprocess.run(
            cmd, env=self._environ(), capture_output=True, text=True, cwd=self.temp
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            failure = f"ray start failed ({proc.returncode}):\n{tail}{self.log_tails()}"
            self.stop()
            raise RuntimeError(failure)

    def log_tails(self, lines: int = 10) -> str:
        """The last lines of the head's dashboard, GCS and raylet error logs, for a failure."""
        tails = ""
        logs = self.temp / "session_latest" / "logs"
        for pattern in ("dashboard*.err", "dashboard.log", "gcs_server*.err", "raylet*.err"):
            for log in sorted(logs.glob(pattern)):
                text = log.read_text(errors="replace").strip()
                if text:
                    tails += f"\n--- {log.name}:\n" + "\n".join(text.splitlines()[-lines:])
        return tails

    def start(self) -> RayCluster:
        """Start the head and wait until its Jobs API answers."""
        self.port, self.dashboard_port, client, agent, metrics = free_ports(5)
        self._start(
            [
                "--head",
                "--node-ip-address", self.head_ip,
                "--port", str(self.port),
                "--include-dashboard", "true",
                "--dashboard-host", self.head_ip,
                "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(client),
                "--dashboard-agent-listen-port", str(agent),
                "--metrics-export-port", str(metrics),
                "--object-store-memory", str(self.object_store_bytes),
            ]
        )  # fmt: skip
        self.nodes.append(self.head_ip)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    failure = f"the Ray dashboard did not answer within {START_TIMEOUT:g} s"
                    failure += self.log_tails()
                    self.stop()
                    raise RuntimeError(failure) from None
                time.sleep(0.5)
        return self

    def add_node(self, *, wait: float = START_TIMEOUT) -> str:
        """Start one more worker node; returns its address once the cluster lists it alive."""
        ip = f"127.0.0.{len(self.nodes) + 2}"
        agent, metrics = free_ports(2)
        self._start(
            [
                "--address", self.gcs_address,
                "--node-ip-address", ip,
                "--dashboard-agent-listen-port", str(agent),
                "--metrics-export-port", str(metrics),
                "--object-store-memory", str(self.object_store_bytes),
            ]
        )  # fmt: skip
        self.nodes.append(ip)
        self.wait_nodes(len(self.nodes), wait)
        return ip

    def alive_nodes(self) -> int:
        import json

        try:
            with urllib.request.urlopen(
                f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=5
            ) as r:
                data = json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for n in rows if n.get("state") == "ALIVE")

    def wait_nodes(self, count: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < count:
            if time.monotonic() > deadline:
                failure = f"the cluster did not reach {count} alive nodes in {timeout:g} s"
                raise RuntimeError(failure + self.log_tails())
            time.sleep(0.5)

    def processes(self):
        """Every live process carrying this cluster's tag."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get(TAG) == self.tag:
                    found.append(proc)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
                continue
        return found

    def task_processes(self, name: str):
        """The worker processes running a task or actor whose title holds `name` (`ray::NAME`)."""
        import psutil

        found = []
        for proc in self.processes():
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if title.startswith("ray::") and name in title:
                found.append(proc)
        return found

    def stop(self) -> None:
        """SIGTERM then SIGKILL every tagged process (gcs_server and raylets ignore SIGTERM a while)."""
        import psutil

        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        # stragglers started meanwhile (workers forked while stopping)
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
