"""One engine process: started in its own process group, logged, health-checked, stopped for good.

- The engine runs in a new session (its own process group), so a terminal's Ctrl-C
  reaches preheat only, and preheat stops the whole group: SIGTERM, then SIGKILL after a
  grace period, then SIGKILL to any descendant that left the group.
- On Linux the engine is told to receive SIGTERM if preheat itself dies (even by
  SIGKILL), so no engine outlives the process that started it.
- Its stdout and stderr go through a pipe: every line is redacted (registered secrets
  become `***`) before it reaches the log file and the in-memory tail.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from preheat.errors import PreheatError
from preheat.redact import redact

#: Runs the engine with PR_SET_PDEATHSIG = SIGTERM, then execs it (the setting survives exec).
_DEATH_SIGNAL = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class EngineFailed(PreheatError):
    """The engine exited, or did not become ready in time; `log_tail` holds its last lines."""

    def __init__(self, message: str, log_tail: Sequence[str] = (), log_path: str | None = None):
        super().__init__(message)
        self.log_tail = list(log_tail)
        self.log_path = log_path


class _Spawner:
    """One long-lived thread that starts every engine process.

    Linux sends the death signal when the *thread* that forked the child ends, so engines
    are forked from a thread that lives as long as this process.
    """

    _lock = threading.Lock()
    _queue: queue.Queue | None = None

    @classmethod
    def popen(cls, *args, **kwargs) -> subprocess.Popen:
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.Queue()
                threading.Thread(
                    target=cls._run, args=(cls._queue,), name="preheat-spawner", daemon=True
                ).start()
        done: queue.Queue = queue.Queue(maxsize=1)
        cls._queue.put((args, kwargs, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _run(requests: queue.Queue) -> None:
        while True:
            args, kwargs, done = requests.get()
            try:
                done.put((True, subprocess.Popen(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.put((False, exc))


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - gone already, or no psutil
        return []


class EngineProcess:
    """An engine command run as its own process group, with a redacted log and a health check."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        log_path: Path,
        health_url: str,
        name: str = "engine",
        tail_lines: int = 200,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.health_url = health_url
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._tail_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._line_hooks: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the engine (returns at once; see `wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-S", "-c", _DEATH_SIGNAL, str(os.getpid()), *argv]
        try:
            self.proc = _Spawner.popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise PreheatError(
                f"cannot start {self.name}: {self.argv[0]}: {exc.strerror or exc}"
            ) from None
        self.started_at = time.monotonic()
        self.ready_at = None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc,), name=f"preheat-{self.name}-log", daemon=True
        )
        self._reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in iter(proc.stdout.readline, b""):
                line = redact(raw.decode("utf-8", "replace").rstrip("\r\n"))
                log.write((line + "\n").encode())
                with self._tail_lock:
                    self._tail.append(line)
                for hook in list(self._line_hooks):
                    with contextlib.suppress(Exception):
                        hook(line)
        proc.stdout.close()

    def on_line(self, hook: Callable[[str], None]) -> None:
        """Call `hook(line)` for every (redacted) line the engine writes from now on."""
        self._line_hooks.append(hook)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 20) -> list[str]:
        """The engine's last `lines` log lines (redacted)."""
        with self._tail_lock:
            return list(self._tail)[-lines:]

    def last_line(self) -> str:
        with self._tail_lock:
            for line in reversed(self._tail):
                if line.strip():
                    return line.strip()
        return ""

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether the health route answers 200 now."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(
        self,
        timeout: float,
        *,
        progress: Callable[[float, str], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        poll: float = 0.25,
    ) -> float:
        """Block until the health route answers; returns the seconds since start.

        :raises EngineFailed: the engine exited first (with its last log lines), or
            `timeout` seconds passed (the engine is stopped then).
        """
        assert self.proc is not None and self.started_at is not None
        deadline = self.started_at + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self._drain()
                tail = self.tail(15)
                last = next((t.strip() for t in reversed(tail) if t.strip()), "no output")
                raise EngineFailed(
                    f"{self.name} exited with code {code} before it was ready: {last} "
                    f"(log: {self.log_path})",
                    tail,
                    str(self.log_path),
                )
            if self.healthy(timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                self.ready_at = time.monotonic()
                return self.ready_at - self.started_at
            now = time.monotonic()
            if cancelled():
                raise EngineFailed(
                    f"{self.name} start cancelled", self.tail(15), str(self.log_path)
                )
            if now >= deadline:
                tail = self.tail(15)
                self.stop()
                raise EngineFailed(
                    f"{self.name} did not answer {self.health_url} within {timeout:.0f} s; "
                    f"stopped it (log: {self.log_path}); raise startup_timeout "
                    "(--startup-timeout) if it is just slow",
                    tail,
                    str(self.log_path),
                )
            if progress is not None:
                progress(now - self.started_at, self.last_line())
            time.sleep(poll)

    def _drain(self, timeout: float = 2.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout)

    def stop(self, grace: float = 15.0) -> int | None:
        """Stop the engine and everything it started: SIGTERM to its group, SIGKILL after `grace` s."""
        proc = self.proc
        if proc is None:
            return None
        family = _descendants(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        family += _descendants(proc.pid) if proc.poll() is None else []
        if family:  # the engine's own shutdown stops its workers: give them a moment
            with contextlib.suppress(Exception):
                import psutil

                psutil.wait_procs(family, timeout=min(grace, 3.0))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for child in family:
            with contextlib.suppress(Exception):
                if child.is_running():
                    child.kill()
        self._drain()
        return proc.returncode
