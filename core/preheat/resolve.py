"""Resolving an artifact into what an engine needs: a location, launch arguments and environment.

Engine plugins register a `Resolver` through `preheat_register_resolvers`.
"""

from __future__ import annotations

import abc
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.models import FileEntry, Manifest
from preheat.plugins import get_registry


@attrs.frozen
class Launch:
    """How to start an engine on an artifact.

    `command` is the launch command prefix (e.g. `python -m ...` with the
    model), `args` the engine arguments after it, `env` the variables the
    engine needs (never secrets), `model` what the engine loads (a local
    directory or a store URI).
    """

    args: tuple[str, ...] = ()
    env: dict[str, str] = attrs.Factory(dict)
    model: str | None = None
    command: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The whole command line: command prefix, then arguments."""
        return [*self.command, *self.args]


@attrs.frozen
class Location:
    """Where an artifact can be read: its store URI, a local directory (`path`, None when remote), and the environment a streaming loader needs to read `uri`."""

    uri: str
    path: str | None
    env: dict[str, str] = attrs.Factory(dict)


class Resolver(abc.ABC):
    """Turns a manifest and its location into an engine's launch arguments.

    Made by the registered factory wherever an artifact is resolved (the
    CLI's `resolve`, serving code); it must not touch the store.
    """

    @abc.abstractmethod
    def launch(
        self, manifest: Manifest, location: Location, *, tensor_parallel_size: int | None = None
    ) -> Launch:
        """The engine command, arguments and environment for `manifest` at `location`.

        :param manifest: the published artifact; `manifest.shard` is None
            for an unsharded one.
        :param location: where it is; `location.path` is None for a remote
            store (stream `location.uri`, or refuse).
        :param tensor_parallel_size: the size the user asked for, if any.
        :raises PreheatError: the artifact cannot serve this way (sharded
            for another engine or another tensor-parallel size, a store the
            engine cannot stream from), with what to do instead.
        """


def location(catalog: Catalog, manifest: Manifest) -> Location:
    """Where the artifact is in its store (a local path for a local store)."""
    prefix = catalog.artifact_prefix(manifest.name, manifest.version).rstrip("/")
    local = catalog.store.local_path(prefix)
    env = getattr(catalog.store, "streaming_env", lambda: {})()
    return Location(
        uri=catalog.store.uri(prefix), path=str(local) if local is not None else None, env=env
    )


def _file_ok(path: Path, entry: FileEntry) -> bool:
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest() == entry.sha256


def materialize(
    catalog: Catalog, manifest: Manifest, dest: str | os.PathLike[str], *, workers: int = 8
) -> Path:
    """Copy an artifact's files into `dest`, verifying sha256 and reusing files already there intact."""
    dest = Path(dest).expanduser().resolve()
    prefix = catalog.artifact_prefix(manifest.name, manifest.version)
    store = catalog.store

    def copy(entry: FileEntry) -> None:
        target = dest / entry.path
        if _file_ok(target, entry):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.preheat-partial")
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            for chunk in store.open_reader(prefix + entry.path):
                f.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            tmp.unlink(missing_ok=True)
            raise PreheatError(
                f"{entry.path} in {manifest.ref} does not match its manifest sha256: the store copy is damaged"
            )
        os.replace(tmp, target)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(copy, sorted(manifest.files, key=lambda e: -e.size)))
    return dest


def engine_launch(
    engine: str, manifest: Manifest, where: Location, tensor_parallel_size: int | None
) -> Launch:
    """Ask the engine's resolver plugin for launch arguments."""
    reg = get_registry().get("resolvers", engine)
    if reg is None:
        known = ", ".join(get_registry().names("resolvers")) or "none installed"
        raise PreheatError(
            f"no resolver for engine {engine!r} (available: {known}): pip install preheat-{engine}"
        )
    return reg.value().launch(manifest, where, tensor_parallel_size=tensor_parallel_size)
