"""Progress lines for people on stderr while an app is served."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any


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
