"""The `ray` executor: each run a Ray job whose driver fans the file transfers out.

With a cluster address (`--ray-address` / `RAY_ADDRESS`, saved in the run record as
the executor option `address`), `submit` checks that the cluster answers and that
one of its nodes can satisfy the run's requests, then submits the job
`python -m preheat_ray.driver STORE RUN` through the Jobs API: the job outlives the
submitting machine, and `alive` / `cancel` work from any machine that shares the
store and can reach the cluster. Without an address the driver runs as a detached
process on this machine that starts a local Ray instance (`ray.init()`), for trying
it out.

Nothing secret goes into the job: its entrypoint holds the store URL and the run
name, its metadata the run name; the source's token is read by the cluster's own
processes from the environment variable the request names.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import attrs

from preheat.api import Executor, PreheatError, RunRecord, request_cancel
from preheat_ray.cluster import (
    Requests,
    address_of,
    check_reachable,
    check_satisfiable,
    list_nodes,
    requests,
)

# how long a job status answer is trusted (waiters poll `alive` several times a second)
STATUS_TTL = 1.0
_status_cache: dict[str, tuple[float, bool | None]] = {}
_status_lock = threading.Lock()
# seconds after its job ended within which a run's final record may still be on its way
FINISH_GRACE = 10.0


def job_id(record: RunRecord) -> str:
    """The submission id of a run's job (stable, so any machine can find it)."""
    return f"preheat-{record.name}"


def client(address: str):
    """A Jobs API client for `address` (GCS or http), after a fast reachability check."""
    check_reachable(address)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise PreheatError(
            f"cannot reach the Jobs API of the Ray cluster at {address}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def entrypoint(record: RunRecord, python: str = "python") -> str:
    """The job's command line: the store URL and the run name, nothing else."""
    return shlex.join([python, "-m", "preheat_ray.driver", record.store, record.name])


class RayExecutor(Executor):
    """Runs a record as a Ray job (or, without an address, a local Ray driver process)."""

    def submit(self, record: RunRecord) -> RunRecord:
        """Submit the run's job after checking the cluster answers and can satisfy the run."""
        address = address_of(record.executor_options)
        if address is None:
            return self._submit_local(record)
        jobs = client(address)
        nodes = list_nodes(address)
        request = record.request
        check_satisfiable(address, nodes, requests(request.resources), "a transfer task")
        engine = self.engine_shard_requests(record)
        if engine is not None:
            check_satisfiable(address, nodes, engine, "the engine's shard task")
        python = record.executor_options.get("python", "python")
        options: dict = {}  # the driver asks for nothing: it waits on tasks
        try:
            jobs.submit_job(
                entrypoint=entrypoint(record, python),
                submission_id=job_id(record),
                metadata={"preheat_run": record.name},
                **options,
            )
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise PreheatError(
                f"the Ray cluster at {address} refused the job of run {record.name}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        return attrs.evolve(record, host=None, pid=None)

    @staticmethod
    def engine_shard_requests(record: RunRecord) -> Requests | None:
        """What the shard task asks for when the request names the engine's own save routine
        (`method: engine`): the run's cpu and mem, and its `accelerator` as GPUs; else None
        (CPU shard parts ask for the transfer tasks' cpu and mem, no GPU)."""
        shard = record.request.shard
        if shard is None or getattr(shard.args, "method", None) != "engine":
            return None
        return requests(record.request.resources, gpu=True)

    def _submit_local(self, record: RunRecord) -> RunRecord:
        command = [sys.executable, "-m", "preheat_ray.driver", record.store, record.name]
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise PreheatError(f"cannot start the local Ray driver: {exc.strerror}") from None
        return attrs.evolve(record, pid=proc.pid, host=socket.gethostname())

    def alive(self, record: RunRecord) -> bool | None:
        """The job's status: PENDING or RUNNING is alive; anything else while the record is
        not finished means the driver died. None when the cluster cannot be asked."""
        address = address_of(record.executor_options)
        if address is None:
            return self._alive_local(record)
        key = f"{address}|{job_id(record)}"
        with _status_lock:
            cached = _status_cache.get(key)
            if cached is not None and time.monotonic() - cached[0] < STATUS_TTL:
                return cached[1]
        try:
            from ray.job_submission import JobStatus

            jobs = client(address)
            status = jobs.get_job_status(job_id(record))
            answer = status in (JobStatus.PENDING, JobStatus.RUNNING)
            if not answer:
                # the driver saves its final record just before it exits (a stopped job has
                # seconds for that): only a job that ended a while ago without it is dead
                ended = jobs.get_job_info(job_id(record)).end_time
                if ended is None or time.time() - ended / 1000 < FINISH_GRACE:
                    answer = None
        except Exception:  # noqa: BLE001 - cannot tell (cluster unreachable, job unknown)
            answer = None
        with _status_lock:
            _status_cache[key] = (time.monotonic(), answer)
        return answer

    @staticmethod
    def _alive_local(record: RunRecord) -> bool | None:
        if record.host != socket.gethostname() or record.pid is None:
            return None
        import psutil

        try:
            proc = psutil.Process(record.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(psutil.TimeoutExpired):
                    proc.wait(0)
                return False
            return True
        except psutil.NoSuchProcess:
            return False

    def cancel(self, record: RunRecord) -> bool:
        """Leave a cancel request in the store, then stop the job (its tasks die with it).

        The driver turns the job's stop signal into a clean cancel, so the record ends
        `cancelled`.
        """
        request_cancel(record)
        address = address_of(record.executor_options)
        if address is None:
            if self._alive_local(record):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGTERM)
                    return True
            return False
        try:
            return bool(client(address).stop_job(job_id(record)))
        except PreheatError:
            return False
        except Exception:  # noqa: BLE001 - unknown job: nothing to stop
            return False
