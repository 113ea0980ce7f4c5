"""Running the `preheat` CLI in tests, and the result every suite asserts on.

`run_cli` runs `preheat ARGS...` as a subprocess; `CliProcess` starts one in the
background (for commands that must overlap, or a process to signal); `run_in_process`
calls the CLI's `main()` in this process (fast, for variants of a case a subprocess
already covers). All three return a `CliResult`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PREHEAT_BIN = str(Path(sys.executable).with_name("preheat"))
_RUN_NOTE = re.compile(r"^run r[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


@dataclass
class CliResult:
    """What one `preheat` invocation returned, and how long it took (seconds of wall time)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float = 0.0

    @property
    def json(self):
        """stdout parsed as one JSON object."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(
                f"stdout of preheat {' '.join(self.args)} is not JSON:\n{self}"
            ) from None

    def error_line(self) -> str:
        """The single `error:` line on stderr; fails on tracebacks or any other stderr output
        than the `run NAME` status note."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        others = [
            line for line in lines if not line.startswith("error: ") and not _RUN_NOTE.match(line)
        ]
        assert self.returncode != 0, f"expected a failure:\n{self}"
        assert "Traceback" not in self.stderr, str(self)
        assert len(errors) == 1 and not others, (
            f"expected exactly one error line on stderr:\n{self}"
        )
        return errors[0]

    def ok(self) -> CliResult:
        """This result, after asserting the command succeeded."""
        assert self.returncode == 0, f"preheat {' '.join(self.args)} failed:\n{self}"
        return self

    def __str__(self) -> str:
        return (
            f"exit {self.returncode} after {self.elapsed:.1f}s\n--- stdout\n{self.stdout}"
            f"\n--- stderr\n{self.stderr}"
        )


class CliProcess(subprocess.Popen):
    """`preheat ARGS...` started in the background, output captured as text.

    A `subprocess.Popen` (signal it, poll it, kill it) that remembers its
    arguments and start time; `finish()` waits for it and returns its `CliResult`.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
        stdin: str | None = None,
    ) -> None:
        self.cli_args = [str(a) for a in args]
        self.started = time.monotonic()
        self._input = stdin
        super().__init__(
            [PREHEAT_BIN, *self.cli_args],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout: float = 120) -> CliResult:
        """Wait for the process (raises TimeoutExpired after `timeout` s) and collect its result."""
        out, err = self.communicate(self._input, timeout=timeout)
        elapsed = time.monotonic() - self.started
        return CliResult(self.cli_args, self.returncode, out, err, elapsed)


def run_cli(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120,
    stdin: str | None = None,
) -> CliResult:
    """Run `preheat ARGS...` as a subprocess with exactly `env` as its environment.

    `stdin` is text fed to the command (None: it inherits this process's stdin).
    Past `timeout` seconds the process is killed and TimeoutExpired raised.
    """
    with CliProcess(args, env=env, cwd=cwd, stdin=stdin) as proc:
        try:
            return proc.finish(timeout)
        except BaseException:  # as subprocess.run does: no process outlives its call
            proc.kill()
            proc.wait()
            raise


def run_in_process(args: Sequence[str], *, cwd: str | os.PathLike[str] | None = None) -> CliResult:
    """Run the CLI's `main()` on `args` in this process, under the current `os.environ`.

    The caller sets the environment; sys.argv, the working directory and the
    SIGINT / SIGTERM handlers are restored afterwards.
    """
    from preheat.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv, code, started = sys.argv, 0, time.monotonic()
    where = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    sys.argv = [PREHEAT_BIN, *args]
    try:
        with where, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    elapsed = time.monotonic() - started
    return CliResult(list(args), code, out.getvalue(), err.getvalue(), elapsed)
