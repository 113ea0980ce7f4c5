"""Core internals that plugin test suites need, behind one module.

Plugins import only `preheat.api`; their tests sometimes need a little
more (an engine's launch through the registry, a shard config parsed, a
pipeline run in this process). This module is that bridge, so the test
suites of plugins stay on the public surface too.
"""

from __future__ import annotations

from typing import Any

from preheat.api import Location, Manifest, ModelView, RunRecord, Store


def engine_launch(engine: str, manifest: Manifest, where: Location, tp: int | None = None):
    """The installed resolver's launch for `engine` (as `preheat resolve --engine` asks it)."""
    from preheat.resolve import engine_launch as launch

    return launch(engine, manifest, where, tp)


def parse_shard_config(config: Any):
    """A shard config (dict, YAML path, ShardConfig) parsed as the CLI and API parse it."""
    from preheat.shard_config import ShardRequest

    return ShardRequest.parse(config)


def model_view(files: dict[str, bytes]) -> ModelView:
    """What a sharder's `plan` sees for the repository `files` (path -> bytes)."""
    import json

    from preheat.api import FileEntry
    from preheat.metadata import parse_safetensors_header, serving_facts

    config = json.loads(files["config.json"])
    headers = {
        p: parse_safetensors_header(lambda s, n, d=d: d[s : s + n], p)
        for p, d in files.items()
        if p.endswith(".safetensors")
    }
    entries = tuple(FileEntry(path=p, size=len(d), sha256="") for p, d in files.items())
    return ModelView(config, entries, headers, serving_facts(config, headers))


def local_store_class() -> type[Store]:
    """The built-in local-directory store class (to subclass in tests)."""
    from preheat.builtin.local import LocalStore

    return LocalStore


def prefetch_here(store: str, *, progress: Any = None, **request: Any) -> RunRecord:
    """Create a run for `PrefetchRequest(**request)` in `store` and run it in this process.

    `progress`, if given, receives the pipeline's `stage(name, total)` and `advance(n)` calls.
    """
    from preheat.api import PrefetchRequest
    from preheat.runner import execute
    from preheat.runs import create_run

    run = create_run(PrefetchRequest(**request), store)
    return execute(store, run.name, catalog=run.catalog, progress=progress)


def registered(kind: str, plugin: object, name: str = "plugin-under-test") -> dict[str, Any]:
    """What `plugin` alone registers for `kind` (e.g. "stores"), through preheat's own registry."""
    from preheat.plugins import make_registry

    registry = make_registry(entry_points=False, extra=[(name, plugin)])
    failed = [info.error for info in registry.plugins() if info.error]
    assert not failed, failed
    return {reg.name: reg.value for reg in registry.all(kind)}
