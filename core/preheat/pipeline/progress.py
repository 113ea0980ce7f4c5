"""How a running pipeline reports progress and notices cancellation."""

from __future__ import annotations

import logging
import threading

from preheat.errors import Cancelled

log = logging.getLogger("preheat")


class Progress:
    """Receives byte counts from a running pipeline (the CLI draws bars, the worker saves records)."""

    def stage(self, name: str, total: int) -> None:
        """A new stage starts, with `total` bytes to move."""

    def advance(self, n: int) -> None:
        """`n` more bytes moved in the current stage."""


class Context:
    """What every stage of one run shares: its name, progress sink and cancel flag."""

    def __init__(self, run: str, progress: Progress | None, cancel: threading.Event | None):
        self.run = run
        self.progress = progress or Progress()
        self.cancel = cancel or threading.Event()

    def stage(self, name: str, total: int = 0) -> None:
        log.info("%s", name)
        self.progress.stage(name, total)

    def check(self) -> None:
        """Raise Cancelled once the run was asked to stop."""
        if self.cancel.is_set():
            raise Cancelled(f"run {self.run} was cancelled")
