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
        # bytes of source files fetched from the source, and taken from the store instead
        self.bytes_fetched = 0
        self.bytes_reused = 0
        self._lock = threading.Lock()

    def count(self, *, fetched: int = 0, reused: int = 0) -> None:
        """Add to the run's tally of fetched and reused bytes (from any thread)."""
        with self._lock:
            self.bytes_fetched += fetched
            self.bytes_reused += reused

    def stage(self, name: str, total: int = 0) -> None:
        log.info("%s", name)
        self.progress.stage(name, total)

    def check(self) -> None:
        """Raise Cancelled once the run was asked to stop."""
        if self.cancel.is_set():
            raise Cancelled(f"run {self.run} was cancelled")
