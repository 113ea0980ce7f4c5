"""Stage two: config.json, README and safetensors headers, read before any weight byte moves."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from preheat.catalog import Catalog
from preheat.errors import PreheatError
from preheat.fetch import Fetcher, RemoteFile, Snapshot
from preheat.metadata import SafetensorsHeader, parse_safetensors_header
from preheat.models import Manifest
from preheat.pipeline.reuse import Held
from preheat.shard import SourceArtifact
from preheat.store import Store

log = logging.getLogger("preheat")

WORKERS = 8
Inspected = tuple[dict | None, str | None, dict[str, SafetensorsHeader]]


def inspect_stored(catalog: Catalog, base: Manifest) -> Inspected:
    """Config, README and headers of an already stored artifact (nothing fetched from the source)."""
    source = SourceArtifact(catalog.store, catalog.artifact_prefix(base.name, base.version), base)
    paths = {f.path for f in base.files}
    config = json.loads(source.read("config.json")) if "config.json" in paths else None
    readme = source.read("README.md").decode(errors="replace") if "README.md" in paths else None
    return config, readme, source.headers()


def inspect_remote(
    fetcher: Fetcher,
    snapshot: Snapshot,
    files: list[RemoteFile],
    store: Store | None = None,
    held: Mapping[str, list[Held]] | None = None,
) -> Inspected:
    """Config, README and headers read from the source, in parallel, by range.

    The safetensors headers of files with a stored copy in `held` (see `reuse`) are
    read from that copy in `store` instead; the source is asked only when it cannot be.
    """
    held = held if store is not None and held else {}

    def stored(path: str) -> Held | None:
        found = held.get(path)
        return found[0] if found else None

    def small(path: str) -> bytes | None:
        # always from the source: a refusal must be based on the repository as it is now
        return fetcher.read(snapshot, path) if snapshot.file(path) is not None else None

    def header(f: RemoteFile) -> tuple[str, SafetensorsHeader]:
        copy = stored(f.path)
        if copy is not None and store is not None:
            try:
                return f.path, parse_safetensors_header(
                    lambda start, n: store.read_range(copy.key, start, n), f.path
                )
            except PreheatError as exc:
                log.info("reading the header of %s from %s failed (%s)", f.path, copy.origin, exc)
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
            raise PreheatError(f"config.json of {snapshot.source.repo} is not valid JSON") from None
    readme = raw_readme.decode(errors="replace") if raw_readme is not None else None
    return config, readme, headers
