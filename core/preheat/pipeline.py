"""The prefetch pipeline: validate, pin, plan, fetch + verify, shard, publish.

Every check that can fail does so before the first weight byte moves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import attrs

from preheat.catalog import Catalog, now_iso
from preheat.errors import Cancelled, PreheatError
from preheat.fetch import Fetcher, IntegrityError, RemoteFile, Snapshot, SourceOffline, select
from preheat.metadata import (
    SafetensorsHeader,
    detect_metadata,
    parse_safetensors_header,
    serving_facts,
)
from preheat.models import FileEntry, Manifest, PrefetchRequest, Resources
from preheat.names import default_artifact_name, validate_artifact_name, validate_repo_id
from preheat.plugins import lookup
from preheat.publish import Draft
from preheat.resources import human_bytes, parse_quantity, validate_resources
from preheat.shard import (
    ModelView,
    ShardPlan,
    SourceArtifact,
    normalize_shard_config,
    shard_request,
)

log = logging.getLogger("preheat")

WORKERS = 8
MiB = 1 << 20
SMALL_FILES = ("config.json", "README.md")


class Progress:
    """Receives byte counts from a running pipeline (the CLI draws bars, the worker saves records)."""

    def stage(self, name: str, total: int) -> None:
        """A new stage starts, with `total` bytes to move."""

    def advance(self, n: int) -> None:
        """`n` more bytes moved in the current stage."""


@attrs.frozen
class Outcome:
    """What a prefetch produced: the artifact's manifest and whether it was reused as is."""

    manifest: Manifest
    reused: bool


@attrs.frozen
class Prepared:
    """A validated request: names resolved, shard config parsed."""

    request: PrefetchRequest
    name: str
    shard: tuple[str, Any] | None


def prepare(request: PrefetchRequest) -> Prepared:
    """Validate a request without touching the network or the store."""
    validate_repo_id(request.repo)
    name = validate_artifact_name(request.artifact_name or default_artifact_name(request.repo))
    validate_resources(request.resources)
    if not isinstance(request.force, int) or request.force < 0:
        raise PreheatError(f"invalid force {request.force!r}: use a non-negative integer")
    shard = normalize_shard_config(request.shard) if request.shard else None
    return Prepared(request=request, name=name, shard=shard)


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


class Pipeline:
    """One prefetch, run by one process, reporting to `progress` and stopping when `cancel` is set."""

    def __init__(
        self,
        catalog: Catalog,
        run: str,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.run = run
        self.progress = progress or Progress()
        self.cancel = cancel or threading.Event()

    def _stage(self, name: str, total: int = 0) -> None:
        log.info("%s", name)
        self.progress.stage(name, total)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"run {self.run} was cancelled")

    def prefetch(self, request: PrefetchRequest) -> Outcome:
        """Run the whole pipeline for `request`."""
        prepared = prepare(request)
        fetcher_factory = lookup("fetchers", request.source).value
        fetcher: Fetcher = fetcher_factory(token_key=request.hf_token_key)
        try:
            return self._prefetch(prepared, fetcher)
        finally:
            fetcher.close()

    def _prefetch(self, prepared: Prepared, fetcher: Fetcher) -> Outcome:
        request, name = prepared.request, prepared.name
        self._stage(f"resolving {request.repo}@{request.revision or 'main'}")
        try:
            snapshot = fetcher.snapshot(request.repo, request.revision)
        except SourceOffline:
            stored = self._stored_match(prepared)
            if stored is None:
                raise
            log.info("source offline: reusing stored %s:%s", stored.name, stored.version)
            return Outcome(stored, True)
        files = select(snapshot.files, request.include, request.exclude)
        if not files:
            raise PreheatError(
                f"no file of {request.repo}@{snapshot.source.commit[:12]} matches the include/exclude patterns"
            )
        log.info(
            "pinned %s to commit %s (%d files selected)",
            request.repo,
            snapshot.source.commit,
            len(files),
        )
        paths = [f.path for f in files]
        base_version = version_of(snapshot, paths, None, request.force)

        shard_spec = shard_request(*prepared.shard) if prepared.shard else None
        target_version = base_version
        if prepared.shard:
            engine, args = prepared.shard
            sharder = lookup("sharders", engine).value()
            target_version = version_of(snapshot, paths, shard_spec, request.force, engine)
        done = self.catalog.manifest(name, target_version)
        if done is not None:
            log.info("reusing %s:%s", name, done.version)
            self.catalog.set_alias(name, "latest", done.version)
            return Outcome(done, True)
        if not request.artifact_name:
            self._check_name_owner(name, request.repo)
        base = self.catalog.manifest(name, base_version) if prepared.shard else None
        # what the listing alone says will land: refuse before reading even a header
        self._check_capacity(request.resources, files if base is None else [], None)

        self._stage("reading config and safetensors headers")
        if base is not None:
            config, readme, headers = self._inspect_stored(base)
        else:
            config, readme, headers = self._inspect(fetcher, snapshot, files)
        metadata = detect_metadata(config, readme, paths, request.metadata)
        serving = serving_facts(config, headers)

        plan: ShardPlan | None = None
        if prepared.shard:
            view = ModelView(
                config=config or {},
                files=tuple(FileEntry(f.path, f.size, f.sha256 or "") for f in files),
                headers=headers,
                serving=serving,
            )
            plan = sharder.plan(view, args, request.resources)

        self._check_capacity(request.resources, files if base is None else [], plan)
        self._check()

        if base is None:
            base = self._fetch(
                fetcher,
                snapshot,
                files,
                name,
                base_version,
                request,
                metadata,
                serving,
                alias=plan is None,
            )
            if plan is None:
                return Outcome(base, False)
        return self._shard(sharder, plan, base, name, target_version, serving, shard_spec)

    def _check_name_owner(self, name: str, repo: str) -> None:
        """Refuse to mix two repositories under one default artifact name (and one `latest`)."""
        latest = self.catalog.alias(name, "latest")
        current = self.catalog.manifest(name, latest) if latest else None
        if current is not None and current.source.repo != repo:
            raise PreheatError(
                f"artifact name {name!r} already holds {current.source.repo}, not {repo}: "
                "pass --artifact-name (artifact_name=) to store it under another name"
            )

    def _stored_match(self, prepared: Prepared) -> Manifest | None:
        """The newest stored artifact built from exactly this request, found without the source."""
        request = prepared.request
        wanted = shard_request(*prepared.shard) if prepared.shard else None
        for manifest in reversed(self.catalog.versions(prepared.name)):
            if (
                manifest.source.repo == request.repo
                and (request.revision or "main")
                in (manifest.source.revision, manifest.source.commit)
                and manifest.include == tuple(request.include)
                and manifest.exclude == tuple(request.exclude)
                and manifest.force == request.force
                and manifest.shard_request == wanted
            ):
                return manifest
        return None

    def _inspect_stored(
        self, base: Manifest
    ) -> tuple[dict | None, str | None, dict[str, SafetensorsHeader]]:
        """Config, README and headers of an already stored artifact (nothing fetched from the source)."""
        source = SourceArtifact(
            self.store, self.catalog.artifact_prefix(base.name, base.version), base
        )
        paths = {f.path for f in base.files}
        config = json.loads(source.read("config.json")) if "config.json" in paths else None
        readme = source.read("README.md").decode(errors="replace") if "README.md" in paths else None
        return config, readme, source.headers()

    def _inspect(
        self, fetcher: Fetcher, snapshot: Snapshot, files: list[RemoteFile]
    ) -> tuple[dict | None, str | None, dict[str, SafetensorsHeader]]:
        def small(path: str) -> bytes | None:
            return fetcher.read(snapshot, path) if snapshot.file(path) is not None else None

        def header(f: RemoteFile) -> tuple[str, SafetensorsHeader]:
            return f.path, parse_safetensors_header(
                lambda start, n: fetcher.read_range(snapshot, f.path, start, n), f.path
            )

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            config_f = pool.submit(small, "config.json")
            readme_f = pool.submit(small, "README.md")
            header_fs = [pool.submit(header, f) for f in files if f.path.endswith(".safetensors")]
            raw_config = config_f.result()
            raw_readme = readme_f.result()
            headers = dict(h.result() for h in header_fs)
        config = None
        if raw_config is not None:
            try:
                config = json.loads(raw_config)
            except ValueError:
                raise PreheatError(
                    f"config.json of {snapshot.source.repo} is not valid JSON"
                ) from None
        readme = raw_readme.decode(errors="replace") if raw_readme is not None else None
        return config, readme, headers

    def _check_capacity(
        self, resources: Resources, to_fetch: list[RemoteFile], plan: ShardPlan | None
    ) -> None:
        need = sum(f.size for f in to_fetch) + (plan.output_bytes if plan else 0)
        if self.store.local_path("artifacts") is not None:
            free = self.store.free_bytes()
            margin = 128 * MiB + need // 100
            if free is not None and need + margin > free:
                raise PreheatError(
                    f"the store at {self.store.url} has {human_bytes(free)} free but this run writes {human_bytes(need)} "
                    f"(plus a {human_bytes(margin)} margin): free space or use another --store"
                )
            if resources.ephemeral_storage is not None:
                limit = parse_quantity(resources.ephemeral_storage, "ephemeral_storage")
                if need > limit:
                    raise PreheatError(
                        f"ephemeral_storage {resources.ephemeral_storage} is smaller than the {human_bytes(need)} "
                        "this run writes to local disk: raise --ephemeral-storage"
                    )

    def _fetch(
        self,
        fetcher: Fetcher,
        snapshot: Snapshot,
        files: list[RemoteFile],
        name: str,
        version: str,
        request: PrefetchRequest,
        metadata,
        serving,
        *,
        alias: bool,
    ) -> Manifest:
        draft = Draft(self.catalog, name, version, self.run)
        published = draft.acquire(
            on_wait=lambda other: log.info(
                "waiting for run %s, which is fetching %s:%s", other, name, version
            ),
            cancelled=self.cancel.is_set,
        )
        if published is not None:
            return published
        try:
            total = sum(f.size for f in files)
            self._stage(f"fetching {len(files)} files ({human_bytes(total)})", total)
            entries = self._download_all(fetcher, snapshot, files, draft)
            manifest = Manifest(
                name=name,
                version=version,
                created=now_iso(),
                source=snapshot.source,
                files=tuple(sorted(entries, key=lambda e: e.path)),
                include=tuple(request.include),
                exclude=tuple(request.exclude),
                force=request.force,
                metadata=metadata,
                serving=serving,
            )
            self._stage(f"publishing {name}:{version}")
            return draft.publish(manifest, alias="latest" if alias else None)
        finally:
            draft.release()

    def _download_all(
        self, fetcher: Fetcher, snapshot: Snapshot, files: list[RemoteFile], draft: Draft
    ) -> list[FileEntry]:
        failed = threading.Event()

        def on_bytes(n: int) -> None:
            if self.cancel.is_set() or failed.is_set():
                raise Cancelled(f"run {self.run} was cancelled")
            self.progress.advance(n)

        def one(f: RemoteFile) -> FileEntry:
            entry = draft.verified(f.path, f.size, f.sha256)
            if entry is not None:
                log.info("reusing verified %s", f.path)
                self.progress.advance(f.size)
                return entry
            draft.check()
            writer = draft.open(f.path, resume=True)
            try:
                digest = fetcher.download(snapshot, f, writer, on_bytes=on_bytes)
                info = writer.commit()
            except IntegrityError:
                writer.discard()
                raise
            except BaseException:
                writer.abort()
                raise
            entry = FileEntry(path=f.path, size=f.size, sha256=digest)
            draft.record(entry, self.store.head(draft.file_key(f.path)) or info)
            log.info("verified %s (%d bytes)", f.path, f.size)
            return entry

        ordered = sorted(files, key=lambda f: -f.size)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="preheat-fetch") as pool:
            futures = [pool.submit(one, f) for f in ordered]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                failed.set()
                for f in pending:
                    f.cancel()
                wait(pending)
                first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
                if self.cancel.is_set():
                    raise Cancelled(f"run {self.run} was cancelled")
                raise first
            return [f.result() for f in futures]

    def _shard(
        self,
        sharder,
        plan: ShardPlan,
        base: Manifest,
        name: str,
        version: str,
        serving,
        shard_spec: dict,
    ) -> Outcome:
        draft = Draft(self.catalog, name, version, self.run)
        published = draft.acquire(
            on_wait=lambda other: log.info(
                "waiting for run %s, which is sharding %s:%s", other, name, version
            ),
            cancelled=self.cancel.is_set,
        )
        if published is not None:
            return Outcome(published, True)
        try:
            source = SourceArtifact(
                self.store, self.catalog.artifact_prefix(base.name, base.version), base
            )
            self._stage(
                f"sharding for {plan.spec.engine} at tp={plan.spec.tensor_parallel_size}",
                plan.output_bytes,
            )

            def progress(n: int) -> None:
                self._check()
                self.progress.advance(n)

            entries = sharder.shard(plan, source, draft.write_stream, progress)
            manifest = Manifest(
                name=name,
                version=version,
                created=now_iso(),
                source=base.source,
                files=tuple(sorted(entries, key=lambda e: e.path)),
                include=base.include,
                exclude=base.exclude,
                force=base.force,
                metadata=base.metadata,
                serving=_sharded_serving(serving, plan),
                shard=plan.spec,
                shard_request=shard_spec,
                lineage=base.ref,
            )
            self._stage(f"publishing {name}:{version}")
            return Outcome(draft.publish(manifest, alias="latest"), False)
        finally:
            draft.release()


_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def _sharded_serving(serving, plan: ShardPlan):
    """Serving facts of a sharded artifact: per-rank bytes, and the new dtype when it was converted."""
    facts = attrs.evolve(serving, weight_bytes_per_rank=plan.weight_bytes_per_rank)
    dtype = plan.spec.dtype
    if dtype in _ITEMSIZE and dtype != serving.dtype and serving.parameters:
        size = serving.parameters * _ITEMSIZE[dtype]
        facts = attrs.evolve(facts, dtype=dtype, bytes_by_dtype={dtype: size}, weight_bytes=size)
    return facts
