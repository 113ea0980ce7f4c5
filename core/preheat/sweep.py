"""`preheat gc`: leftovers of interrupted runs, and store objects that no manifest references.

Leftovers are removed: the store's own (partial files, open multipart uploads, see
`Store.gc`) and the staging folders of runs whose lease is gone or expired
(`staging/NAME/VERSION/`: the journal, and on a local store the staged files).
Objects under `artifacts/` that no manifest names are reported, and removed only
when asked. Nothing younger than the age threshold is touched, and nothing of a
version whose lease is live (a run is building it).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections import defaultdict

import attrs

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.publish import _holder_alive
from preheat.store import ObjectInfo, Store

log = logging.getLogger("preheat")


@attrs.frozen
class Sweep:
    """What one `gc` found and removed."""

    older_than: float
    applied: bool
    partial: int = 0
    staging: tuple[str, ...] = ()
    staging_objects: int = 0
    unreferenced: tuple[ObjectInfo, ...] = ()
    unreferenced_removed: int = 0

    @property
    def removed(self) -> int:
        """Every object removed: store leftovers, staging objects, unreferenced objects."""
        return self.partial + self.staging_objects + self.unreferenced_removed

    def to_json(self) -> dict:
        return {
            "removed": self.removed,
            "older_than": self.older_than,
            "applied": self.applied,
            "partial": self.partial,
            "staging": {"count": len(self.staging), "objects": self.staging_objects,
                        "keys": list(self.staging)},
            "unreferenced": {
                "count": len(self.unreferenced),
                "bytes": sum(i.size for i in self.unreferenced),
                "removed": self.unreferenced_removed,
                "keys": [i.key for i in self.unreferenced],
            },
        }  # fmt: skip


def _store_gc(store: Store, older_than: float | None) -> int:
    if older_than is None:
        return store.gc()
    if "older_than" not in inspect.signature(store.gc).parameters:  # a store older than the option
        log.warning("%s cannot limit gc by age: leftovers of any age are removed", store.url)
        return store.gc()
    return store.gc(older_than=older_than)


def _version_of(key: str, top: str) -> tuple[str, str] | None:
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != top or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _lease_live(store: Store, prefix: str) -> bool:
    found = store.read(prefix + "lease.json")
    if found is None:
        return False
    try:
        return _holder_alive(json.loads(found[0]))
    except (ValueError, TypeError, AttributeError):
        return False


def _young(infos: list[ObjectInfo], cutoff: float | None) -> bool:
    """Whether any object is newer than `cutoff` (an object of unknown age counts as young)."""
    if cutoff is None:
        return False
    return any(i.modified is None or i.modified > cutoff for i in infos)


def sweep(store: Store, *, older_than: float | None = None, apply: bool = False) -> Sweep:
    """Remove leftovers of interrupted runs at least `older_than` s old; find unreferenced objects.

    :param older_than: the age threshold in seconds; None means the store's default
        (`Store.gc_after`: 0 for a local store, `gc_after` in the config for the others).
    :param apply: also remove the unreferenced objects found (else only report them).
    """
    catalog = Catalog(store)
    age = store.gc_after if older_than is None else older_than
    cutoff = time.time() - age if age > 0 else None
    partial = _store_gc(store, older_than)

    # 1. staging folders: kept while their lease is live or they are young; else removed
    groups: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    for info in store.list("staging/"):
        version = _version_of(info.key, "staging")
        if version is not None:
            groups[version].append(info)
    building: set[tuple[str, str]] = set()
    removed_staging: list[str] = []
    staged_objects = 0
    for (name, version), infos in sorted(groups.items()):
        prefix = catalog.staging_prefix(name, version)
        if _young(infos, cutoff) or _lease_live(store, prefix):
            building.add((name, version))
            continue
        lease = [i for i in infos if i.key == prefix + "lease.json"]
        for info in [i for i in infos if i not in lease] + lease:  # the lease last
            store.delete(info.key)
        removed_staging.append(prefix)
        staged_objects += len(infos)
        log.info("gc: removed %s (%d objects of a dead run)", prefix, len(infos))

    # 2. what every manifest names (read after the leases: a version published meanwhile is seen)
    named: dict[tuple[str, str], set[str]] = {}
    for manifest in catalog.artifacts():
        named[(manifest.name, manifest.version)] = {f.path for f in manifest.files}

    # 3. objects under artifacts/ that no manifest names
    orphans: list[ObjectInfo] = []
    for info in store.list("artifacts/"):
        version = _version_of(info.key, "artifacts")
        if version is None:
            orphans.append(info)
            continue
        if version in named:
            rest = info.key[len(catalog.artifact_prefix(*version)) :]
            if rest not in named[version]:
                orphans.append(info)
        elif version not in building and not _young([info], cutoff):
            orphans.append(info)

    removed = 0
    if apply and orphans:
        by_version: dict[tuple[str, str] | None, list[ObjectInfo]] = defaultdict(list)
        for info in orphans:
            by_version[_version_of(info.key, "artifacts")].append(info)
        for version, infos in by_version.items():
            if version is not None and version not in named:
                # check again right before removing: a run may have started or published since
                if _lease_live(store, catalog.staging_prefix(*version)):
                    continue
                if catalog.manifest(*version) is not None:
                    continue
            for info in infos:
                try:
                    store.delete(info.key)
                    removed += 1
                except PreheatError as exc:
                    log.warning("gc: could not remove %s: %s", info.key, exc)
    return Sweep(
        older_than=age,
        applied=apply,
        partial=partial,
        staging=tuple(removed_staging),
        staging_objects=staged_objects,
        unreferenced=tuple(orphans),
        unreferenced_removed=removed,
    )
