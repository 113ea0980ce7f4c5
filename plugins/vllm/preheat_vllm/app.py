"""`VLLMAppEnvironment`: the command and environment that serve a stored artifact with vLLM."""

from __future__ import annotations

import attrs

from preheat.api import Launch, resolve_artifact
from preheat.app import RunOutput


@attrs.define
class VLLMAppEnvironment:
    """Serve an artifact (`NAME[:VERSION]` or a run's `RunOutput`) with `vllm serve`."""

    model: str | RunOutput
    store: str | None = None
    tensor_parallel_size: int | None = None
    port: int = 8000
    extra_args: tuple[str, ...] = ()

    def launch(self) -> Launch:
        """The resolver's launch arguments for the artifact, checked against the requested tp.

        A `RunOutput` naming its own store is read from that store, else from `store`.
        """
        from preheat_vllm.resolver import VLLMResolver

        manifest, where = resolve_artifact(self.model, self.store)
        return VLLMResolver().launch(
            manifest, where, tensor_parallel_size=self.tensor_parallel_size
        )

    def command(self) -> list[str]:
        """The whole `vllm serve ...` command line."""
        return [*self.launch().argv(), "--port", str(self.port), *self.extra_args]

    def env(self) -> dict[str, str]:
        """Environment variables the loader needs (streaming settings; never secrets)."""
        return dict(self.launch().env)
