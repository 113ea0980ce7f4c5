"""The result of one `preheat` CLI call, with the assertions every suite makes on it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_RUN_NOTE = re.compile(r"^run r[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


@dataclass
class CliResult:
    """What one `preheat` invocation returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

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
        assert self.returncode == 0, f"preheat {' '.join(self.args)} failed:\n{self}"
        return self

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
