"""The built-in local executor: each run in a detached worker process on this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import attrs

from preheat.execute import Executor
from preheat.hookspecs import hookimpl
from preheat.models import RunRecord


class LocalExecutor(Executor):
    """Starts `python -m preheat.worker` detached from the caller's session."""

    def submit(self, record: RunRecord) -> RunRecord:
        from preheat.config import preheat_home

        logs = preheat_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{record.name}.out", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "preheat.worker", record.store, record.name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return attrs.evolve(record, pid=proc.pid, host=socket.gethostname())

    def alive(self, record: RunRecord) -> bool | None:
        if record.host != socket.gethostname() or record.pid is None:
            return None
        import psutil

        try:
            proc = psutil.Process(record.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                proc.wait(0)
                return False
            return True
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            return False

    def cancel(self, record: RunRecord) -> bool:
        from preheat.catalog import Catalog
        from preheat.config import open_store

        Catalog(open_store(record.store)).request_cancel(record.name)
        if self.alive(record):
            try:
                os.kill(record.pid, signal.SIGTERM)
            except ProcessLookupError:
                return False
            return True
        return False


@hookimpl
def preheat_register_executors(register):
    register("local", LocalExecutor)
