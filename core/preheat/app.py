"""Referring to a run's output from serving code: `preheat.app.RunOutput(type="directory", run_name=...)`."""

from __future__ import annotations

import attrs

from preheat.errors import PreheatError


@attrs.define
class RunOutput:
    """The artifact a run produced, resolved lazily to a local directory or a store URI."""

    type: str = "directory"
    run_name: str | None = None
    store: str | None = None
    index: int = 0

    def __attrs_post_init__(self) -> None:
        if self.type != "directory":
            raise PreheatError(
                f"RunOutput type {self.type!r} is not supported: use type='directory'"
            )
        if not self.run_name:
            raise PreheatError("RunOutput needs run_name=: the name printed by `preheat prefetch`")

    def _output(self):
        from preheat.runs import Run

        outputs = Run(self.run_name, self.store).outputs()
        return outputs[self.index]

    @property
    def path(self) -> str:
        """The artifact directory (a local path for a local store, else the store URI)."""
        return self._output().path

    @property
    def uri(self) -> str:
        """The artifact's URI in its store."""
        return self._output().uri

    def __fspath__(self) -> str:
        path = self.path
        if "://" in path:
            raise PreheatError(f"{path} is not local: use `preheat resolve ... --to DIR` first")
        return path

    def __str__(self) -> str:
        return self.path


__all__ = ["RunOutput"]
