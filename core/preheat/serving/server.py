"""`preheat.serve(app)`: start an engine on this machine and hand back a `Server`."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from preheat.errors import PreheatError
from preheat.redact import register_secret
from preheat.serving.process import EngineFailed, EngineProcess
from preheat.serving.spec import ServePlan

if TYPE_CHECKING:
    from preheat.app import AppEnvironment

_PROBE = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
_LIVE: weakref.WeakSet[Server] = weakref.WeakSet()


class Reporter:
    """Progress for people on stderr: notes, and a waiting line (redrawn on a terminal)."""

    def __init__(self, quiet: bool = False, stream: Any = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._open = False
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.stream.write(text)
            self.stream.flush()

    def note(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._write(("\r\x1b[K" if self._open else "") + message + "\n")
            self._open = False

    def waiting(self, what: str, elapsed: float, line: str) -> None:
        if self.quiet:
            return
        line = line or "waiting for its health check"
        now = time.monotonic()
        with self._lock:
            if not self._last:
                self._last = now  # the first line after a few seconds, not at once
                return
            if self.tty:
                if now - self._last < 0.2:
                    return
                width = 100
                with contextlib.suppress(OSError):
                    width = os.get_terminal_size(self.stream.fileno()).columns - 1
                text = f"{what} ({elapsed:.0f} s) {line}"[: max(20, width)]
                self._write("\r\x1b[K" + text)
                self._open = True
            else:
                if now - self._last < 10:
                    return
                self._write(f"{what} ({elapsed:.0f} s): {line[:160]}\n")
            self._last = now


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise PreheatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return True


def check_engine_installed(plan: ServePlan) -> None:
    """Fail fast, in one line, when the engine's interpreter lacks the engine."""
    python = plan.command.argv[0]
    try:
        done = subprocess.run([python, "-c", _PROBE, plan.module], capture_output=True, timeout=120)
    except OSError as exc:
        raise PreheatError(
            f"cannot run {python} for {plan.engine}: {exc.strerror or exc}"
            + (f" (check {plan.python_env})" if os.environ.get(plan.python_env) else "")
        ) from None
    except subprocess.TimeoutExpired:
        raise PreheatError(f"{python} did not answer within 120 s: is it a Python?") from None
    if done.returncode != 0:
        raise PreheatError(
            f"{plan.module} is not installed for {python}: {plan.install_hint}, or set "
            f"{plan.python_env} to an interpreter that has it"
        )


def write_key_file(path: str | os.PathLike[str], key: str) -> Path:
    """Write `key` to `path`, readable by its owner only (mode 0600, also when it existed)."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise PreheatError(f"cannot write the API key to {path}: {exc.strerror or exc}") from None
    return path


def _log_path(name: str, log_dir: str | os.PathLike[str] | None) -> Path:
    from preheat.config import preheat_home

    folder = Path(log_dir) if log_dir is not None else preheat_home() / "serve" / "logs"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return folder / f"{name}-{stamp}-{os.getpid()}.log"


class EngineSlot:
    """The one engine of a served app: started, health-checked, stopped, started again."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.current: EngineProcess | None = None
        self.starts = 0
        self.grace = 15.0
        self._lock = threading.RLock()

    @property
    def plan(self) -> ServePlan:
        return self.server.plan

    @property
    def engine_url(self) -> str:
        return self.plan.engine_url

    def state(self) -> str:
        proc = self.current
        if proc is None:
            return "stopped"
        if not proc.alive():
            return "exited"
        return "ready" if proc.ready_at is not None else "starting"

    def ready(self) -> bool:
        return self.state() == "ready"

    def spawn(self) -> EngineProcess:
        """Start a new engine process (what is left of the previous one is stopped first)."""
        with self._lock:
            if self.current is not None:
                self.current.stop(self.grace)
            plan = self.plan
            if not _port_free(plan.engine_host, plan.engine_port):
                if not plan.proxy:
                    raise PreheatError(
                        f"port {plan.engine_port} on {plan.engine_host} is in use: pick another "
                        "with --port / port="
                    )
                plan = self.server.replan()
            proc = EngineProcess(
                plan.command.argv,
                self.server.engine_env(),
                log_path=self.server.log_path,
                health_url=plan.engine_url + plan.health_path,
                name=plan.engine,
            )
            proc.start()
            self.current = proc
            self.starts += 1
            return proc

    def start_and_wait(self) -> float:
        """Start the engine and wait until it is healthy; returns the seconds it took."""
        proc = self.spawn()
        what = f"starting {self.plan.engine} for {self.plan.served_model_name}"
        reporter = self.server.reporter
        try:
            took = proc.wait_ready(
                self.plan.startup_timeout,
                progress=lambda elapsed, line: reporter.waiting(what, elapsed, line),
                cancelled=self.server.stopping.is_set,
            )
        except EngineFailed as exc:
            self.server.failure = exc
            with contextlib.suppress(Exception):
                proc.stop()
            raise
        reporter.note(
            f"{self.plan.engine} ready in {took:.1f} s (pid {proc.pid}, log: {self.server.log_path})"
        )
        return took

    def stop(self) -> None:
        with self._lock:
            if self.current is not None:
                self.current.stop(self.grace)

    def forget(self) -> None:
        with self._lock:
            self.current = None


class Server:
    """A served app on this machine: `url`, `api_key`, `logs()`, `wait_ready()`, `stop()`.

    Also a context manager (`with preheat.serve(app) as server: ...` stops it on exit).
    With a proxy in front (an API key, or scale-to-zero), `url` is the proxy's and the
    engine may come and go behind it; `pid` is the engine's while one runs.
    """

    def __init__(
        self,
        app: AppEnvironment,
        plan: ServePlan,
        *,
        reporter: Reporter,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.app = app
        self.plan = plan
        self.reporter = reporter
        self.api_key: str | None = None
        self.api_key_file: Path | None = None
        self.log_path = _log_path(plan.app_name, log_dir)
        self.slot = EngineSlot(self)
        self.proxy = None
        self.failure: EngineFailed | None = None
        self.stopping = threading.Event()
        self._stack = contextlib.ExitStack()
        self._warm = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"Server(url={self.url!r}, model={self.model!r}, engine={self.engine!r})"

    # ------------------------------------------------------------------ facts

    @property
    def url(self) -> str:
        """What clients use, e.g. `http://127.0.0.1:8000` (OpenAI routes under `/v1`)."""
        return self.plan.url

    @property
    def model(self) -> str:
        """The served model name (what clients send as `"model"`)."""
        return self.plan.served_model_name

    @property
    def engine(self) -> str:
        return self.plan.engine

    @property
    def artifact(self) -> str:
        """`NAME:VERSION` being served (pinned when the app was resolved)."""
        return str(self.plan.manifest.ref)

    @property
    def command(self) -> list[str]:
        return list(self.plan.command.argv)

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs."""
        proc = self.slot.current
        return proc.pid if proc is not None and proc.alive() else None

    @property
    def ready(self) -> bool:
        if self.plan.proxy and self.plan.min_replicas == 0:
            return self.proxy is not None and not self._stopped
        return self.slot.ready()

    # ------------------------------------------------------------------ plumbing

    def replan(self) -> ServePlan:
        """A fresh loopback port for the engine behind the proxy (same artifact, same checks)."""
        from preheat.serving.plan import build_plan

        self.plan = build_plan(self.app, local_copy=self.plan.local_copy)
        return self.plan

    def engine_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.plan.command.env)
        if self.plan.api_key_env and self.api_key:
            env[self.plan.api_key_env] = self.api_key
        return env

    def _start(self, *, wait: bool, api_key_file: str | os.PathLike[str] | None) -> None:
        plan = self.plan
        if not _port_free(plan.host, plan.port):
            raise PreheatError(
                f"port {plan.port} on {plan.host} is in use: pick another with --port / port="
            )
        if plan.auth:
            self.api_key = secrets.token_urlsafe(32)
            register_secret(self.api_key)
            if api_key_file is not None:
                self.api_key_file = write_key_file(api_key_file, self.api_key)
        for note in plan.notes:
            self.reporter.note(note)
        if plan.local_copy is not None:
            self.reporter.note(
                f"copying {plan.manifest.ref} to this machine (verified; reused when already there)"
            )
            from preheat.cache import use_artifact

            path = self._stack.enter_context(use_artifact(plan.manifest, self.app._resolved.store))
            if str(path) != plan.local_copy:
                from preheat.serving.plan import build_plan

                self.plan = plan = build_plan(
                    self.app, local_copy=str(path), engine_port=plan.engine_port
                )
        _LIVE.add(self)
        if plan.proxy:
            from preheat.serving.proxy import Proxy

            self.proxy = Proxy(
                self.slot,
                host=plan.host,
                port=plan.port,
                api_key=self.api_key,
                min_replicas=plan.min_replicas,
                scaledown_after=plan.scaledown_after,
                startup_timeout=plan.startup_timeout,
                note=self.reporter.note,
            )
            self.proxy.start()
            if plan.min_replicas == 0:
                self.reporter.note(
                    f"listening on {self.url}; the engine starts on the first request and "
                    f"stops after {plan.scaledown_after:g} s without one"
                )
            else:
                self._warm = self.proxy.warm()
        else:
            self.slot.spawn()
        if wait:
            self.wait_ready()

    # ------------------------------------------------------------------ the handle

    def wait_ready(self, timeout: float | None = None) -> Server:
        """Block until clients can use `url` (for scale-to-zero: until the proxy listens).

        :raises EngineFailed: the engine exited or did not answer its health check in time
            (`log_tail` holds its last lines); nothing is left running then.
        """
        try:
            if self._warm is not None:
                try:
                    self._warm.result(timeout=timeout)
                except TimeoutError:
                    raise PreheatError(f"{self.engine} not ready after {timeout:.0f} s") from None
            elif not self.plan.proxy:
                proc = self.slot.current
                if proc is None:
                    raise PreheatError(f"{self.engine} is not running")
                if proc.ready_at is None:
                    limit = self.plan.startup_timeout if timeout is None else timeout
                    what = f"starting {self.engine} for {self.model}"
                    took = proc.wait_ready(
                        limit,
                        progress=lambda elapsed, line: self.reporter.waiting(what, elapsed, line),
                        cancelled=self.stopping.is_set,
                    )
                    self.reporter.note(
                        f"{self.engine} ready in {took:.1f} s (pid {proc.pid}, log: {self.log_path})"
                    )
        except BaseException:
            self.stop()
            raise
        return self

    def logs(self, lines: int | None = None) -> str:
        """The engine's log so far (every start appends to it; secrets are `***`)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if lines is not None:
            text = "\n".join(text.splitlines()[-lines:]) + "\n"
        return text

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the engine exits by itself (without a proxy) or `stop()` is called.

        :returns: the engine's exit code, or None when it still runs after `timeout`
            seconds, or when served behind the proxy.
        """
        if self.plan.proxy:
            self.stopping.wait(timeout)
            return None
        proc = self.slot.current
        if proc is None or proc.proc is None:
            return None
        try:
            return proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 15.0) -> None:
        """Stop the engine and everything it started (and the proxy); safe to call twice.

        The engine's process group gets SIGTERM, then SIGKILL after `grace` seconds.
        """
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        self.slot.grace = grace
        try:
            if self.proxy is not None:
                self.proxy.stop()
            else:
                self.slot.stop()
        finally:
            self._stack.close()
            _LIVE.discard(self)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def serve(
    app: AppEnvironment,
    *,
    wait: bool = True,
    api_key_file: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Server:
    """Serve `app` on this machine: check, copy or stream, start the engine, wait until ready.

    :param app: an engine plugin's app environment (a `preheat.app.AppEnvironment`).
    :param wait: return only when clients can use `server.url` (default); with False,
        return once started and call `server.wait_ready()`.
    :param api_key_file: also write the generated API key there (mode 0600).
    :param quiet: no progress lines on stderr.
    :param log_dir: where the engine's log goes (default `$PREHEAT_HOME/serve/logs`).
    :returns: the running `Server`; stop it with `server.stop()` (or a `with` block).
    :raises PreheatError: a check failed (nothing was started), the engine is not
        installed, the port is in use, or the engine died while starting (`EngineFailed`,
        with its last log lines).
    """
    from preheat.app import AppEnvironment

    if not isinstance(app, AppEnvironment):
        raise PreheatError(
            "preheat.serve needs an engine plugin's app environment (a "
            f"preheat.app.AppEnvironment), not {type(app).__name__}"
        )
    plan = app.plan()
    if api_key_file is not None and not plan.auth:
        raise PreheatError("api_key_file= needs requires_auth=True: no key is made without it")
    check_engine_installed(plan)
    reporter = Reporter(quiet=quiet)
    if progress is not None:
        reporter.note = progress  # type: ignore[method-assign]
    server = Server(app, plan, reporter=reporter, log_dir=log_dir)
    try:
        server._start(wait=wait, api_key_file=api_key_file)
    except BaseException:
        server.stop()
        raise
    return server
