"""The executor interface: where a run's pipeline runs.

Executor plugins register a factory through `preheat_register_executors`.
The built-in `local` executor starts a detached worker process on this machine.
"""

from __future__ import annotations

import abc

from preheat.models import RunRecord


class Executor(abc.ABC):
    """Starts, watches and cancels runs whose records live in a store."""

    @abc.abstractmethod
    def submit(self, record: RunRecord) -> RunRecord:
        """Start the run described by `record` (already saved) and return the updated record."""

    @abc.abstractmethod
    def cancel(self, record: RunRecord) -> bool:
        """Ask the run to stop cleanly; False when it is not running anywhere this executor can reach."""

    def alive(self, record: RunRecord) -> bool | None:
        """Whether the run's worker is alive (None when this executor cannot tell)."""
        return None
