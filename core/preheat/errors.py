"""User-facing errors: one line that says what went wrong and what to do."""

from __future__ import annotations


class PreheatError(Exception):
    """An error the user can act on; the CLI prints its message as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class NotFound(PreheatError):
    """Something named by the user (artifact, run, repo, revision, object) does not exist."""


class PreconditionFailed(PreheatError):
    """A conditional write lost a race: the object exists or changed since it was read."""


class Cancelled(PreheatError):
    """The run was cancelled."""

    exit_code = 130
