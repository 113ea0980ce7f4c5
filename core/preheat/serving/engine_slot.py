"""The one engine process of a served app: started, health-checked, stopped, started again."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from preheat.errors import PreheatError
from preheat.serving.preflight import port_free
from preheat.serving.process import EngineFailed, EngineProcess
from preheat.serving.spec import ServePlan

if TYPE_CHECKING:
    from preheat.serving.server import Server


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
            if not port_free(plan.engine_host, plan.engine_port):
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
