"""The catalog kept in the store itself: artifacts, manifests, aliases and run records.

Layout under the store root:

    artifacts/NAME/VERSION/...       the artifact's files (a directory an engine loads)
    manifests/NAME/VERSION.json      its manifest; written last, it makes the version visible
    aliases/NAME/ALIAS.json          e.g. `latest`, moved by compare-and-swap
    runs/RUN.json, runs/RUN.log      run records and logs
    staging/NAME/VERSION/...         leases and the journal of verified files while a version is built
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from preheat import serde
from preheat.errors import NotFound, PreconditionFailed, PreheatError
from preheat.models import Manifest, RunRecord
from preheat.names import parse_ref, validate_run_name
from preheat.store import Store


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Catalog:
    """Artifacts and runs in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # keys

    @staticmethod
    def artifact_prefix(name: str, version: str) -> str:
        return f"artifacts/{name}/{version}/"

    @staticmethod
    def manifest_key(name: str, version: str) -> str:
        return f"manifests/{name}/{version}.json"

    @staticmethod
    def alias_key(name: str, alias: str) -> str:
        return f"aliases/{name}/{alias}.json"

    @staticmethod
    def staging_prefix(name: str, version: str) -> str:
        return f"staging/{name}/{version}/"

    @staticmethod
    def run_key(run: str) -> str:
        return f"runs/{run}.json"

    @staticmethod
    def log_key(run: str) -> str:
        return f"runs/{run}.log"

    @staticmethod
    def cancel_key(run: str) -> str:
        return f"runs/{run}.cancel"

    # artifacts

    def manifest(self, name: str, version: str) -> Manifest | None:
        """The manifest of a published version, or None."""
        found = self.store.read(self.manifest_key(name, version))
        return None if found is None else serde.loads(found[0], Manifest)

    def resolve(self, ref: str) -> Manifest:
        """The manifest named by `NAME[:VERSION|:ALIAS]`, or NotFound."""
        name, version = parse_ref(ref)
        manifest = self.manifest(name, version)
        if manifest is None:
            target = self.alias(name, version)
            if target is not None:
                manifest = self.manifest(name, target)
        if manifest is None:
            versions = [m.version for m in self.versions(name)]
            hint = (
                f"versions: {', '.join(versions)}" if versions else "run `preheat artifacts list`"
            )
            raise NotFound(f"artifact {name}:{version} not found in {self.store.url} ({hint})")
        return manifest

    def versions(self, name: str) -> list[Manifest]:
        """Every published version of `name`, oldest first."""
        found = []
        for info in self.store.list(f"manifests/{name}/"):
            version = info.key[len(f"manifests/{name}/") : -len(".json")]
            manifest = self.manifest(name, version)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created, m.version))

    def artifacts(self) -> list[Manifest]:
        """Every published version of every artifact."""
        found = []
        for info in self.store.list("manifests/"):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                manifest = self.manifest(parts[1], parts[2][: -len(".json")])
                if manifest is not None:
                    found.append(manifest)
        return sorted(found, key=lambda m: (m.name, m.created, m.version))

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points to, or None."""
        found = self.store.read(self.alias_key(name, alias))
        return None if found is None else json.loads(found[0])["version"]

    def aliases(self, name: str) -> dict[str, str]:
        """Every alias of `name` and its version."""
        out = {}
        for info in self.store.list(f"aliases/{name}/"):
            alias = info.key.rsplit("/", 1)[-1][: -len(".json")]
            version = self.alias(name, alias)
            if version is not None:
                out[alias] = version
        return out

    def set_alias(self, name: str, alias: str, version: str, *, attempts: int = 20) -> None:
        """Point `alias` at `version` by compare-and-swap, retrying lost races."""
        key = self.alias_key(name, alias)
        body = json.dumps({"version": version, "updated": now_iso()}).encode()
        for _ in range(attempts):
            current = self.store.read(key)
            try:
                if current is None:
                    self.store.put(key, body, if_absent=True)
                else:
                    self.store.put(key, body, if_match=current[1])
                return
            except PreconditionFailed:
                time.sleep(0.05)
        raise PreheatError(f"could not move alias {name}:{alias}: too many concurrent updates")

    def publish_manifest(self, manifest: Manifest) -> bool:
        """Write a manifest once; False when the same version was already published."""
        try:
            self.store.put(
                self.manifest_key(manifest.name, manifest.version),
                serde.dumps(manifest),
                if_absent=True,
            )
            return True
        except PreconditionFailed:
            return False

    def remove(self, name: str, version: str) -> None:
        """Delete a version: its manifest first (so it vanishes at once), then its files and aliases."""
        if self.manifest(name, version) is None:
            raise NotFound(f"artifact {name}:{version} not found in {self.store.url}")
        self.store.delete(self.manifest_key(name, version))
        self.store.delete_prefix(self.artifact_prefix(name, version))
        for alias, target in self.aliases(name).items():
            if target == version:
                self.store.delete(self.alias_key(name, alias))

    # runs

    def save_run(self, record: RunRecord) -> None:
        """Write a run record (the run's single writer owns it)."""
        self.store.put(self.run_key(record.name), serde.dumps(record))

    def run(self, name: str) -> RunRecord:
        """A run record, or NotFound."""
        validate_run_name(name)
        found = self.store.read(self.run_key(name))
        if found is None:
            raise NotFound(f"run {name} not found in {self.store.url}: see `preheat runs list`")
        return serde.loads(found[0], RunRecord)

    def runs(self) -> Iterator[RunRecord]:
        """Every run record, newest first."""
        keys = sorted(
            (i.key for i in self.store.list("runs/") if i.key.endswith(".json")), reverse=True
        )
        for key in keys:
            found = self.store.read(key)
            if found is not None:
                yield serde.loads(found[0], RunRecord)

    def request_cancel(self, name: str) -> None:
        """Leave a cancel request for run `name`; its worker polls for it and stops cleanly."""
        self.store.put(self.cancel_key(name), b"cancel\n")

    def log(self, name: str) -> str | None:
        """A run's log as stored, or None."""
        found = self.store.read(self.log_key(name))
        return None if found is None else found[0].decode(errors="replace")
