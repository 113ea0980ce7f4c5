"""The Python API: `preheat.prefetch.hf_model(...)`, `preheat.prefetch.model(..., source=...)`
and the shard-argument classes of installed plugins."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from preheat.models import PrefetchRequest, Resources
from preheat.runs import Run, submit
from preheat.shard_config import ShardConfig, ShardRequest

__all__ = ["ShardConfig", "hf_model", "model"]


def _tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def model(
    repo: str,
    *,
    source: str = "hf",
    revision: str | None = None,
    artifact_name: str | None = None,
    hf_token_key: str = "HF_TOKEN",
    cpu: str | None = None,
    mem: str | None = None,
    ephemeral_storage: str | None = None,
    accelerator: str | None = None,
    shard_config: ShardConfig | str | Path | dict[str, Any] | None = None,
    force: int = 0,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    architecture: str | None = None,
    task: str | None = None,
    modality: str | Iterable[str] | None = ("text",),
    format: str | None = None,
    model_type: str | None = None,
    short_description: str | None = None,
    store: str | None = None,
    executor: str | None = None,
    executor_options: dict[str, str] | None = None,
) -> Run:
    """Start prefetching a model repository from any installed source; returns the run at once.

    :param repo: the repository, as the source names it (a Hub repo id for `hf`).
    :param source: the fetcher plugin to fetch from (`preheat plugins` lists them);
        the built-in one is `hf`, the Hugging Face Hub.
    :param hf_token_key: the environment variable holding the source's credentials.
    :param executor: where the run executes (`preheat plugins` lists the executors);
        default `$PREHEAT_EXECUTOR`, else `local`.
    :param executor_options: options for that executor (e.g. `{"address": ...}` for a
        cluster); saved in the run record, so never a secret.

    The other parameters are those of `hf_model`. Everything is validated before the run
    starts: the source's fetcher checks `repo` (an unknown source, a bad repository
    reference, artifact name, resource request or shard config raises PreheatError here).
    """
    shard = ShardRequest.parse(shard_config) if shard_config is not None else None
    request = PrefetchRequest(
        repo=repo,
        revision=revision,
        artifact_name=artifact_name,
        hf_token_key=hf_token_key,
        include=_tuple(include),
        exclude=_tuple(exclude),
        force=force,
        shard=shard,
        metadata={
            k: v
            for k, v in {
                "architecture": architecture,
                "task": task,
                "modality": _tuple(modality) if modality is not None else None,
                "format": format,
                "model_type": model_type,
                "short_description": short_description,
            }.items()
            if v is not None
        },
        resources=Resources(
            cpu=cpu, mem=mem, ephemeral_storage=ephemeral_storage, accelerator=accelerator
        ),
        source=source,
    )
    return submit(
        request,
        store=store,
        executor=executor or os.environ.get("PREHEAT_EXECUTOR") or "local",
        executor_options=executor_options,
    )


def hf_model(
    repo: str,
    revision: str | None = None,
    artifact_name: str | None = None,
    hf_token_key: str = "HF_TOKEN",
    cpu: str | None = None,
    mem: str | None = None,
    ephemeral_storage: str | None = None,
    accelerator: str | None = None,
    shard_config: ShardConfig | str | Path | dict[str, Any] | None = None,
    force: int = 0,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    architecture: str | None = None,
    task: str | None = None,
    modality: str | Iterable[str] | None = ("text",),
    format: str | None = None,
    model_type: str | None = None,
    short_description: str | None = None,
    *,
    store: str | None = None,
    executor: str | None = None,
    executor_options: dict[str, str] | None = None,
) -> Run:
    """Start prefetching a Hugging Face model repository into the store; returns the run at once.

    Everything is validated before the run starts (a bad repo id, artifact
    name, resource request or shard config raises PreheatError here).
    `model(repo, source="hf", ...)` does the same.
    """
    return model(
        repo,
        source="hf",
        revision=revision,
        artifact_name=artifact_name,
        hf_token_key=hf_token_key,
        cpu=cpu,
        mem=mem,
        ephemeral_storage=ephemeral_storage,
        accelerator=accelerator,
        shard_config=shard_config,
        force=force,
        include=include,
        exclude=exclude,
        architecture=architecture,
        task=task,
        modality=modality,
        format=format,
        model_type=model_type,
        short_description=short_description,
        store=store,
        executor=executor,
        executor_options=executor_options,
    )


def __getattr__(name: str) -> Any:
    """Shard-argument classes registered by installed engine plugins (e.g. `VLLMShardArgs`)."""
    if name.endswith("ShardArgs"):
        from preheat.plugins import get_registry

        for reg in get_registry().all("sharders"):
            if reg.args_class is not None and reg.args_class.__name__ == name:
                return reg.args_class
        engine = name[: -len("ShardArgs")].lower()
        raise ImportError(
            f"{name} is provided by an engine plugin that is not installed: pip install preheat-{engine}"
        )
    raise AttributeError(f"module 'preheat.prefetch' has no attribute {name!r}")
