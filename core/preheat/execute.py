"""The executor interface: where a run's pipeline runs.

Executor plugins register a factory through `preheat_register_executors`.
The built-in `local` executor starts a detached worker process on this machine.
"""

from __future__ import annotations

import abc

from preheat.models import RunRecord


class Executor(abc.ABC):
    """Starts, watches and cancels runs whose records live in a store.

    Made by the registered factory in the process that submits, waits on or
    cancels a run (not necessarily the one that submitted it: any machine
    sharing the store may call `alive` and `cancel`). The user's options for
    the executor (`--executor-option KEY=VALUE`, e.g. a cluster address) are
    in `record.executor_options`, saved with the run, never secrets.
    """

    @abc.abstractmethod
    def submit(self, record: RunRecord) -> RunRecord:
        """Start the run described by `record` (already saved as `queued`) and return at once.

        The started process runs `preheat.api.worker_command(record)` (or
        calls `preheat.api.execute_run`), which keeps the record up to date.

        :returns: `record` with `pid` / `host` set where they mean something.
        :raises PreheatError: the run could not be started (the record is saved
            as failed with the message, which says why).
        """

    @abc.abstractmethod
    def cancel(self, record: RunRecord) -> bool:
        """Ask the run to stop cleanly.

        :returns: False when it is not running anywhere this executor can
            reach (the run also sees the cancel request in the store).
        """

    def alive(self, record: RunRecord) -> bool | None:
        """Whether the run's worker is alive: False makes waiters mark the run failed; None when this executor cannot tell."""
        return None
