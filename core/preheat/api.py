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

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from preheat.errors import Cancelled, NotFound, PreconditionFailed, PreheatError
from preheat.execute import Executor
from preheat.fetch import Fetcher, IntegrityError, RemoteFile, Snapshot, SourceOffline, check_path
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
from preheat.shard import ModelView, Sharder, ShardPlan, SourceArtifact
from preheat.store import ObjectInfo, ObjectWriter, Store

if TYPE_CHECKING:
    from preheat.app import RunOutput

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
    "Snapshot",
    "SourceArtifact",
    "Store",
    # records
    "Accelerator",
    "ArtifactRef",
    "FileEntry",
    "Manifest",
    "Metadata",
    "PrefetchRequest",
    "Resources",
    "RunRecord",
    "SafetensorsHeader",
    "ServingFacts",
    "ShardSpec",
    "Source",
    "TensorInfo",
    # errors
    "Cancelled",
    "IntegrityError",
    "NotFound",
    "PreconditionFailed",
    "PreheatError",
    "SourceOffline",
    # helpers
    "accelerator_info",
    "check_path",
    "execute_run",
    "human_bytes",
    "materialize",
    "open_store",
    "parse_accelerator",
    "parse_cpu",
    "parse_quantity",
    "register_secret",
    "request_cancel",
    "resolve_artifact",
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
    ref: str | RunOutput, store: str | Store | None = None
) -> tuple[Manifest, Location]:
    """The manifest and location of an artifact, pinned to the version found now.

    :param ref: `NAME`, `NAME:VERSION`, `NAME:ALIAS`, or a
        `preheat.app.RunOutput` naming the run that produced it.
    :param store: a store URL or an open `Store`; None means the default
        store (a `RunOutput` with its own `store` uses that one).
    :returns: `(manifest, location)`; `location.path` is a local directory
        for a local store, None for a remote one (then stream `location.uri`
        with `location.env`, or `materialize` it).
    :raises NotFound: no such artifact, version or run output.
    """
    from preheat.app import RunOutput
    from preheat.catalog import Catalog
    from preheat.resolve import location

    if isinstance(ref, RunOutput) and ref.store:
        store = ref.store
    catalog = Catalog(store if isinstance(store, Store) else open_store(store))
    if isinstance(ref, RunOutput):
        from preheat.runs import Run

        run = Run(ref.run_name, catalog.store.url, catalog=catalog)
        ref = str(run.outputs()[ref.index].artifact)
    manifest = catalog.resolve(ref)
    return manifest, location(catalog, manifest)


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

    opened = store if isinstance(store, Store) else open_store(store)
    return _materialize(Catalog(opened), manifest, dest, workers=workers)


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


def execute_run(store_url: str, run: str, *, cancel: threading.Event | None = None) -> RunRecord:
    """Run the pipeline of the run record `run` in this process; returns its final record.

    The record's status, progress and log are kept up to date in the store
    while it runs; setting `cancel` (or a `preheat runs cancel`) stops it
    cleanly. Errors end up in the returned record, never raised.
    """
    from preheat.runner import execute

    return execute(store_url, run, cancel=cancel)
