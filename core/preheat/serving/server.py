"""`preheat.serve(app)`: start an engine on this machine and hand back a `Server`."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import subprocess
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from preheat.errors import PreheatError
from preheat.redact import register_secret
from preheat.serving.engine_slot import EngineSlot
from preheat.serving.preflight import (
    check_engine_installed,
    engine_log_path,
    port_free,
    write_key_file,
)
from preheat.serving.process import EngineFailed
from preheat.serving.reporter import Reporter
from preheat.serving.spec import ServePlan

if TYPE_CHECKING:
    from preheat.app import AppEnvironment

__all__ = ["EngineSlot", "Reporter", "Server", "check_engine_installed", "serve", "write_key_file"]

_LIVE: weakref.WeakSet[Server] = weakref.WeakSet()


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
        self.log_path = engine_log_path(plan.app_name, log_dir)
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
        if not port_free(plan.host, plan.port):
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
