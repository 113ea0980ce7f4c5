"""`VLLMAppEnvironment`: the command and environment that serve a stored artifact with vLLM."""

from __future__ import annotations

import attrs

from preheat.app import RunOutput
from preheat.catalog import Catalog
from preheat.config import open_store
from preheat.resolve import Launch, engine_launch, location


@attrs.define
class VLLMAppEnvironment:
    """Serve an artifact (`NAME[:VERSION]` or a run's `RunOutput`) with `vllm serve`."""

    model: str | RunOutput
    store: str | None = None
    tensor_parallel_size: int | None = None
    port: int = 8000
    extra_args: tuple[str, ...] = ()

    def launch(self) -> Launch:
        """The resolver's launch arguments for the artifact, checked against the requested tp."""
        if isinstance(self.model, RunOutput):
            from preheat.runs import Run

            output = Run(self.model.run_name, self.model.store or self.store).outputs()[
                self.model.index
            ]
            ref, store = str(output.artifact), self.model.store or self.store
        else:
            ref, store = self.model, self.store
        catalog = Catalog(open_store(store))
        manifest = catalog.resolve(ref)
        return engine_launch(
            "vllm", manifest, location(catalog, manifest), self.tensor_parallel_size
        )

    def command(self) -> list[str]:
        """The whole `vllm serve ...` command line."""
        return [*self.launch().argv(), "--port", str(self.port), *self.extra_args]

    def env(self) -> dict[str, str]:
        """Environment variables the loader needs (streaming settings; never secrets)."""
        return dict(self.launch().env)
