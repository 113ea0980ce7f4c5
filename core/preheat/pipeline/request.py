"""Stage one: a validated request and the deterministic version it builds."""

from __future__ import annotations

import hashlib
import json

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.fetch import Snapshot
from preheat.models import Manifest, PrefetchRequest
from preheat.names import default_artifact_name, validate_artifact_name, validate_repo_id
from preheat.resources import validate_resources


@attrs.frozen
class Prepared:
    """A validated request and the artifact name it publishes under."""

    request: PrefetchRequest
    name: str

    @property
    def shard_dict(self) -> dict | None:
        """The shard request's plain form (what versions hash and manifests record)."""
        return self.request.shard.to_dict() if self.request.shard else None


def prepare(request: PrefetchRequest) -> Prepared:
    """Validate a request without touching the network or the store."""
    validate_repo_id(request.repo)
    name = validate_artifact_name(request.artifact_name or default_artifact_name(request.repo))
    validate_resources(request.resources)
    if not isinstance(request.force, int) or request.force < 0:
        raise PreheatError(f"invalid force {request.force!r}: use a non-negative integer")
    if request.shard is not None:
        request.shard.require()
    return Prepared(request=request, name=name)


def version_of(
    snapshot: Snapshot, paths: list[str], shard: dict | None, force: int, tag: str = ""
) -> str:
    """A deterministic version from (repo, commit, file selection, shard spec, force)."""
    payload = json.dumps(
        {
            "repo": snapshot.source.repo,
            "commit": snapshot.source.commit,
            "files": sorted(paths),
            "shard": shard,
            "force": force,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{snapshot.source.commit[:8]}-{tag + '-' if tag else ''}{digest}"


def check_name_owner(catalog: Catalog, name: str, repo: str) -> None:
    """Refuse to mix two repositories under one default artifact name (and one `latest`)."""
    latest = catalog.alias(name, "latest")
    current = catalog.manifest(name, latest) if latest else None
    if current is not None and current.source.repo != repo:
        raise PreheatError(
            f"artifact name {name!r} already holds {current.source.repo}, not {repo}: "
            "pass --artifact-name (artifact_name=) to store it under another name"
        )


def stored_match(catalog: Catalog, prepared: Prepared) -> Manifest | None:
    """The newest stored artifact built from exactly this request, found without the source."""
    request = prepared.request
    wanted = prepared.shard_dict
    for manifest in reversed(catalog.versions(prepared.name)):
        if (
            manifest.source.repo == request.repo
            and (request.revision or "main") in (manifest.source.revision, manifest.source.commit)
            and manifest.include == tuple(request.include)
            and manifest.exclude == tuple(request.exclude)
            and manifest.force == request.force
            and manifest.shard_request == wanted
        ):
            return manifest
    return None
