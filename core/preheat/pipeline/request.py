"""Stage one: a validated request and the deterministic version it builds."""

from __future__ import annotations

import hashlib
import json

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.fetch import Fetcher, Snapshot
from preheat.models import Manifest, PrefetchRequest
from preheat.names import validate_artifact_name
from preheat.plugins import lookup
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
    """Validate a request without touching the network or the store.

    The repository reference is checked, and the default artifact name derived, by the
    fetcher registered for `request.source` (its factory's `check_repo` and
    `default_artifact_name`, else `Fetcher`'s); an unknown source is refused here.
    """
    factory = lookup("fetchers", request.source).value
    check_repo = getattr(factory, "check_repo", Fetcher.check_repo)
    default_name = getattr(factory, "default_artifact_name", Fetcher.default_artifact_name)
    repo = check_repo(request.repo)
    if not isinstance(repo, str) or not repo:
        raise PreheatError(
            f"the {request.source!r} fetcher's check_repo returned {repo!r} for "
            f"{request.repo!r}, not a repository reference: report it to the plugin's authors"
        )
    if repo != request.repo:
        request = attrs.evolve(request, repo=repo)
    if request.artifact_name:
        name = validate_artifact_name(request.artifact_name)
    else:
        name = default_name(repo)
        try:
            validate_artifact_name(name)
        except PreheatError:
            raise PreheatError(
                f"cannot name the artifact after {repo!r} (the default name {name!r} is not a "
                "valid artifact name): pass --artifact-name NAME (artifact_name=)"
            ) from None
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
