"""One way to name an artifact, resolved to a manifest and a location pinned to one version.

A reference is any of:

- `NAME` or `NAME:VERSION` (or `NAME:ALIAS`): an artifact of the given store, `latest` by
  default;
- a `preheat.app.RunOutput` (or a run name wrapped in one): the exact version that run
  published;
- the artifact's directory or store URI, as `preheat prefetch --wait` prints it:
  `/data/store/artifacts/NAME/VERSION` or `s3://bucket/prefix/artifacts/NAME/VERSION`
  (the store is the part before `artifacts/`).

`resolve_reference` reads the alias once and returns the manifest of the version it named,
so a served model never moves to a newer version behind the caller's back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs

from preheat.catalog import Catalog
from preheat.errors import NotFound, PreheatError
from preheat.models import ArtifactRef, Manifest
from preheat.resolve import Location, location
from preheat.store import Store

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ARTIFACT_TAIL_RE = re.compile(r"^(?P<root>.*?)/?artifacts/(?P<name>[^/]+)/(?P<version>[^/]+)/?$")


@attrs.frozen
class Resolved:
    """An artifact found by reference: its manifest, where it is, and the catalog of its store."""

    manifest: Manifest
    location: Location
    catalog: Catalog

    @property
    def store(self) -> Store:
        return self.catalog.store

    @property
    def ref(self) -> ArtifactRef:
        return self.manifest.ref


def _is_location(ref: str) -> bool:
    """Whether a string reference is a path or URI rather than `NAME[:VERSION]`."""
    return bool(_SCHEME_RE.match(ref)) or "/" in ref or ref.startswith((".", "~")) or ref == ""


def _open(store: str | Store | None) -> Catalog:
    from preheat.config import open_store

    return Catalog(store if isinstance(store, Store) else open_store(store))


def _still_written(catalog: Catalog, name: str, version: str | None = None) -> str | None:
    """The run building `name` (one version, or any) right now, if a lease says so."""
    import json

    prefix = f"staging/{name}/" if version is None else catalog.staging_prefix(name, version)
    try:
        leases = [i.key for i in catalog.store.list(prefix) if i.key.endswith("/lease.json")]
    except PreheatError:
        return None
    for key in leases:
        found = catalog.store.read(key)
        if found is None:
            continue
        try:
            return str(json.loads(found[0]).get("run") or "another run")
        except ValueError:
            return "another run"
    return None


def _by_name(catalog: Catalog, ref: str) -> Manifest:
    try:
        return catalog.resolve(ref)
    except NotFound:
        from preheat.names import parse_ref

        name, version = parse_ref(ref)
        run = _still_written(catalog, name, None if version == "latest" else version)
        if run is not None:
            raise PreheatError(
                f"artifact {ref} is still being written by run {run}: wait for it with "
                f"`preheat runs wait {run}`, then serve it"
            ) from None
        raise


def _by_run(output: Any, store: str | Store | None) -> Resolved:
    from preheat.runs import Run

    catalog = _open(output.store or store)
    run = Run(output.run_name, catalog.store.url, catalog=catalog)
    record = run.record
    if not record.done:
        raise PreheatError(
            f"run {record.name} is still {record.status}"
            + (f" ({record.stage})" if record.stage else "")
            + f": its artifact is still being written; wait with `preheat runs wait {record.name}` "
            "or run.wait(), then serve it"
        )
    if record.status != "succeeded" or record.artifact is None:
        detail = f": {record.error}" if record.error else ""
        raise PreheatError(
            f"run {record.name} has no artifact to serve: it {record.status}{detail}"
        )
    if output.index != 0:
        raise NotFound(
            f"run {record.name} has one output; RunOutput index {output.index} is out of range"
        )
    manifest = catalog.resolve(str(record.artifact))
    return Resolved(manifest, location(catalog, manifest), catalog)


def _by_location(ref: str) -> Resolved:
    uri = _SCHEME_RE.match(ref) is not None and not ref.startswith("file://")
    text = ref if uri else str(Path(ref.removeprefix("file://")).expanduser().resolve())
    m = _ARTIFACT_TAIL_RE.match(text.rstrip("/"))
    if m is None or not m["root"] and not uri:
        if not uri and not Path(text).exists():
            raise NotFound(
                f"{ref} does not exist: give NAME[:VERSION], a run's output, or an artifact path"
            )
        raise PreheatError(
            f"{ref} is not an artifact of a preheat store (expected STORE/artifacts/NAME/VERSION, "
            "as `preheat prefetch --wait` prints it): prefetch the model first, or give NAME[:VERSION]"
        )
    root = m["root"] or "/"
    catalog = _open(root)
    name, version = m["name"], m["version"]
    manifest = catalog.manifest(name, version)
    if manifest is None:
        run = _still_written(catalog, name, version)
        if run is not None:
            raise PreheatError(
                f"artifact {name}:{version} is still being written by run {run}: wait for it "
                f"with `preheat runs wait {run}`, then serve it"
            )
        raise NotFound(
            f"no manifest for {name}:{version} in the store {catalog.store.url}: {ref} is not a "
            "published artifact (an interrupted prefetch leaves none; rerun it)"
        )
    return Resolved(manifest, location(catalog, manifest), catalog)


def resolve_reference(ref: Any, store: str | Store | None = None) -> Resolved:
    """The artifact named by `ref` (see the module docs), pinned to the version found now.

    :param store: the store holding `NAME[:VERSION]` references (a URL or an open store;
        None: the user's default). A `RunOutput` with its own store, a path and a URI name
        their store themselves.
    :raises NotFound: no such artifact, version, run or path.
    :raises PreheatError: the artifact is still being written, or the run did not succeed.
    """
    from preheat.app import RunOutput

    if isinstance(ref, RunOutput):
        return _by_run(ref, store)
    if isinstance(ref, ArtifactRef):
        ref = str(ref)
    if isinstance(ref, os.PathLike):
        return _by_location(os.fspath(ref))
    if not isinstance(ref, str):
        raise PreheatError(
            f"cannot serve {ref!r}: give NAME[:VERSION], a preheat.app.RunOutput, or an "
            "artifact directory or store URI"
        )
    ref = ref.strip()
    if _is_location(ref):
        return _by_location(ref)
    catalog = _open(store)
    manifest = _by_name(catalog, ref)
    return Resolved(manifest, location(catalog, manifest), catalog)


__all__ = ["Resolved", "resolve_reference"]
