"""The public plugin surface of preheat: everything a plugin may import, and nothing else.

Plugins (ours and third parties') import only this module, plus the
user-facing `preheat.prefetch` and `preheat.app`; every other module of
core is private and may change without notice. See docs/plugins.md for the
hooks, the interfaces and the lifecycle of a run.

    from preheat.api import hookimpl, Store

    @hookimpl
    def preheat_register_stores(register):
        register("team", TeamStore.from_url)
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from preheat.app import RunOutput
    from preheat.errors import Cancelled, NotFound, PreconditionFailed, PreheatError
    from preheat.execute import Executor
    from preheat.fetch import (
        Fetcher,
        IntegrityError,
        RemoteFile,
        Snapshot,
        SourceOffline,
        check_path,
    )
    from preheat.hookspecs import hookimpl
    from preheat.metadata import SafetensorsHeader, TensorInfo
    from preheat.models import (
        ArtifactRef,
        FileEntry,
        Manifest,
        Metadata,
        PrefetchRequest,
        Resources,
        RunRecord,
        ServingFacts,
        ShardSpec,
        Source,
    )
    from preheat.redact import register_secret
    from preheat.resolve import Launch, Location, Resolver
    from preheat.resources import (
        Accelerator,
        accelerator_info,
        human_bytes,
        parse_accelerator,
        parse_cpu,
        parse_quantity,
    )
    from preheat.serving.spec import EngineCommand, EngineOptions, ServePlan
    from preheat.shard import ModelView, Sharder, ShardPlan, SourceArtifact
    from preheat.shard_pool import ShardJob, ShardPool, run_shard_part
    from preheat.span_transfers import fetch_spans, finish_spans, plan_spans, splittable
    from preheat.store import (
        MIN_SPAN,
        ObjectInfo,
        ObjectWriter,
        Span,
        Store,
        check_spans,
        span_chunks,
    )
    from preheat.transfers import (
        ThreadTransfers,
        Transfer,
        TransferJob,
        TransferPool,
        Transferred,
        run_transfers,
    )

# Where each re-exported name lives. They are imported on first use (PEP 562), so a plugin
# that registers a store imports what a store needs and `preheat --help` stays cheap.
_HOMES = {
    "preheat.errors": ("Cancelled", "NotFound", "PreconditionFailed", "PreheatError"),
    "preheat.execute": ("Executor",),
    "preheat.fetch": (
        "Fetcher",
        "IntegrityError",
        "RemoteFile",
        "Snapshot",
        "SourceOffline",
        "check_path",
    ),
    "preheat.hookspecs": ("hookimpl",),
    "preheat.metadata": ("SafetensorsHeader", "TensorInfo"),
    "preheat.models": (
        "ArtifactRef",
        "FileEntry",
        "Manifest",
        "Metadata",
        "PrefetchRequest",
        "Resources",
        "RunRecord",
        "ServingFacts",
        "ShardSpec",
        "Source",
    ),
    "preheat.redact": ("register_secret",),
    "preheat.resolve": ("Launch", "Location", "Resolver"),
    "preheat.resources": (
        "Accelerator",
        "accelerator_info",
        "human_bytes",
        "parse_accelerator",
        "parse_cpu",
        "parse_quantity",
    ),
    "preheat.serving.spec": ("EngineCommand", "EngineOptions", "ServePlan"),
    "preheat.shard": ("ModelView", "Sharder", "ShardPlan", "SourceArtifact"),
    "preheat.shard_pool": ("ShardJob", "ShardPool", "run_shard_part"),
    "preheat.span_transfers": ("fetch_spans", "finish_spans", "plan_spans", "splittable"),
    "preheat.store": (
        "MIN_SPAN",
        "ObjectInfo",
        "ObjectWriter",
        "Span",
        "Store",
        "check_spans",
        "span_chunks",
    ),
    "preheat.transfers": (
        "ThreadTransfers",
        "Transfer",
        "TransferJob",
        "TransferPool",
        "Transferred",
        "run_transfers",
    ),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'preheat.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # hooks
    "hookimpl",
    # interfaces
    "Executor",
    "Fetcher",
    "Launch",
    "Location",
    "ModelView",
    "ObjectInfo",
    "ObjectWriter",
    "RemoteFile",
    "Resolver",
    "Sharder",
    "ShardPlan",
    "ShardPool",
    "Snapshot",
    "SourceArtifact",
    "Store",
    "ThreadTransfers",
    "TransferPool",
    # records
    "Accelerator",
    "ArtifactRef",
    "EngineCommand",
    "EngineOptions",
    "FileEntry",
    "Manifest",
    "Metadata",
    "PrefetchRequest",
    "Resources",
    "RunRecord",
    "SafetensorsHeader",
    "ServePlan",
    "ServingFacts",
    "ShardJob",
    "ShardSpec",
    "Source",
    "Span",
    "TensorInfo",
    "Transfer",
    "TransferJob",
    "Transferred",
    # errors
    "Cancelled",
    "IntegrityError",
    "NotFound",
    "PreconditionFailed",
    "PreheatError",
    "SourceOffline",
    # helpers
    "MIN_SPAN",
    "accelerator_info",
    "cached_artifact",
    "check_path",
    "check_spans",
    "execute_run",
    "fetch_spans",
    "finish_spans",
    "human_bytes",
    "materialize",
    "open_store",
    "parse_accelerator",
    "parse_cpu",
    "parse_quantity",
    "plan_spans",
    "register_secret",
    "request_cancel",
    "resolve_artifact",
    "run_shard_part",
    "run_transfers",
    "span_chunks",
    "splittable",
    "use_artifact",
    "worker_command",
]


def open_store(url: str | None = None) -> Store:
    """The store at `url` (a path or `SCHEME://...`), opened by the plugin that owns its scheme.

    :param url: the store URL; None means the user's default (`--store`,
        `$PREHEAT_STORE`, else the local store under `$PREHEAT_HOME`).
    :raises PreheatError: no installed plugin serves the scheme (the message
        names the `pip install` line), or the URL is invalid for that store.
    """
    from preheat.config import open_store as _open

    return _open(url)


def resolve_artifact(
    ref: str | os.PathLike[str] | RunOutput, store: str | Store | None = None
) -> tuple[Manifest, Location]:
    """The manifest and location of an artifact, pinned to the version found now.

    :param ref: `NAME`, `NAME:VERSION` or `NAME:ALIAS` (`latest` by default); a
        `preheat.app.RunOutput` naming the run that produced it; or the artifact's
        directory or store URI as `preheat prefetch --wait` prints it
        (`STORE/artifacts/NAME/VERSION`, the store being the part before `artifacts/`).
    :param store: a store URL or an open `Store` for `NAME[:VERSION]` references; None
        means the default store (a `RunOutput` with its own `store` uses that one).
    :returns: `(manifest, location)`; `location.path` is a local directory
        for a local store, None for a remote one (then stream `location.uri`
        with `location.env`, or `materialize` it).
    :raises NotFound: no such artifact, version, run output or path.
    :raises PreheatError: the artifact is still being written (its run is named), or the
        run did not succeed.
    """
    from preheat.references import resolve_reference

    found = resolve_reference(ref, store)
    return found.manifest, found.location


def materialize(
    manifest: Manifest,
    dest: str | os.PathLike[str],
    *,
    store: str | Store | None = None,
    workers: int = 8,
) -> Path:
    """Copy an artifact's files into the local directory `dest`, verifying every sha256.

    Files already in `dest` with the right size and digest are kept, so a
    second call copies nothing. Safe to call from any thread.

    :returns: `dest` as an absolute path.
    :raises PreheatError: a stored file does not match its manifest (the
        partial copy is removed; nothing wrong is left under its name).
    """
    from preheat.catalog import Catalog
    from preheat.resolve import materialize as _materialize
    from preheat.store import Store

    opened = store if isinstance(store, Store) else open_store(store)
    return _materialize(Catalog(opened), manifest, dest, workers=workers)


def cached_artifact(manifest: Manifest, store: str | Store | None = None) -> Path:
    """A verified local directory holding the artifact: the store's own for a local store, else the node cache's copy.

    The first call on a node copies and verifies every byte into
    `$PREHEAT_HOME/cache` (bounded, least recently used entries evicted
    first); later calls, from any process, re-stat the files and read
    nothing from the store. Use `use_artifact` to keep the copy from being
    evicted while an engine runs on it.

    :raises PreheatError: the cache cannot hold the artifact (limit, disk,
        permissions), or the store copy is damaged.
    """
    from preheat.cache import cached_artifact as _cached

    return _cached(manifest, store if isinstance(store, Store) else open_store(store))


def use_artifact(manifest: Manifest, store: str | Store | None = None):
    """`cached_artifact` as a context manager: the directory is never evicted until the block ends."""
    from preheat.cache import use_artifact as _use

    return _use(manifest, store if isinstance(store, Store) else open_store(store))


def worker_command(record: RunRecord) -> list[str]:
    """The command that runs `record`'s pipeline to completion in a fresh process.

    An executor plugin starts it wherever the run should execute (a
    detached process, a cluster job); the process must see the same store.
    """
    return [sys.executable, "-m", "preheat.worker", record.store, record.name]


def request_cancel(record: RunRecord) -> None:
    """Ask the run of `record` to stop: the worker sees the request in the store and cancels cleanly.

    Executors call it from `Executor.cancel` before (or instead of) signalling
    the worker; it works from any machine sharing the store.
    """
    from preheat.catalog import Catalog

    Catalog(open_store(record.store)).request_cancel(record.name)


def execute_run(
    store_url: str,
    run: str,
    *,
    cancel: threading.Event | None = None,
    transfers: TransferPool | None = None,
    shards: ShardPool | None = None,
) -> RunRecord:
    """Run the pipeline of the run record `run` in this process; returns its final record.

    The record's status, progress and log are kept up to date in the store
    while it runs; setting `cancel` (or a `preheat runs cancel`) stops it
    cleanly. Errors end up in the returned record, never raised.

    :param transfers: where the files to fetch are streamed from the source
        (default: `ThreadTransfers`, threads of this process); an executor passes
        its own pool to spread them over a cluster. This process keeps the
        lease, the journal, the manifest and the publish.
    :param shards: where the parts of a shard are written (default: the sharder
        writes them all in this process); an executor passes its own pool.
    """
    from preheat.runner import execute

    return execute(store_url, run, cancel=cancel, transfers=transfers, shards=shards)
