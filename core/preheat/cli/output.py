"""Printing: JSON on stdout, tables for people, progress bars on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from preheat.pipeline import Progress
from preheat.resources import human_bytes


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def note(message: str, quiet: bool = False) -> None:
    """A status line for people, on stderr."""
    if not quiet:
        sys.stderr.write(message + "\n")


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table on stdout (stable for scripts that grep it)."""
    if not rows:
        return
    widths = {c: max(len(c), *(len(str(r.get(c, "") or "")) for r in rows)) for c in columns}
    sys.stdout.write("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip() + "\n")
    for r in rows:
        sys.stdout.write(
            "  ".join(str(r.get(c, "") or "").ljust(widths[c]) for c in columns).rstrip() + "\n"
        )


def human(n: int | None) -> str:
    """Bytes for people ("" for unknown)."""
    return "" if n is None else human_bytes(n)


class Bars(Progress):
    """Rich progress bars on stderr, one per stage (bytes, rate, ETA)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = None

    def __enter__(self) -> Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total or 0)
        self._task = self._progress.add_task(name, total=total or None)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


def want_bars(quiet: bool) -> bool:
    """Progress bars only for a person watching stderr."""
    return not quiet and sys.stderr.isatty()


def fail_run(record: Any) -> None:
    """End the command for a run that did not succeed.

    Writes one `error:` line on stderr (with `--json` too: the object on stdout keeps its
    `error` field) and exits 130 if the run was cancelled, else 1.
    """
    import typer

    from preheat.redact import redact

    error = " ".join(str(record.error or "").split())
    reason = f": {redact(error)}" if error and error != record.status else ""
    sys.stderr.write(f"error: run {record.name} {record.status}{reason}\n")
    raise typer.Exit(130 if record.status == "cancelled" else 1)
