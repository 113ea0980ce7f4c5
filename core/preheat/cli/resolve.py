"""`preheat resolve REF [--to DIR | --cache | --hf-cache [--hf-cache-dir DIR]] [--engine NAME]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from preheat.cli.options import Json, Store
from preheat.errors import PreheatError


class _ConflictingOptions(PreheatError):
    """Options that cannot go together: a usage error (exit 2), told in one line."""

    exit_code = 2


def resolve(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF", help="NAME[:VERSION] of the artifact (default version: the latest)."
        ),
    ],
    to: Annotated[
        Path | None,
        typer.Option(
            "--to", metavar="DIR", help="Copy the artifact into this directory, verified."
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache",
            help="Use this node's cache ($PREHEAT_HOME/cache): copy the artifact there, "
            "verified, once; later resolves reuse it without reading the store.",
        ),
    ] = False,
    cache_size: Annotated[
        str | None,
        typer.Option(
            "--cache-size",
            metavar="Q",
            help="With --cache: the node cache's size limit, e.g. 200Gi (default: max_bytes "
            "in the [cache] table of $PREHEAT_HOME/config.toml, else none).",
            show_default=False,
        ),
    ] = None,
    hf_cache: Annotated[
        bool,
        typer.Option(
            "--hf-cache",
            help="Write the artifact into the Hugging Face cache under its original repo id "
            "and commit, for HF_HUB_OFFLINE=1 tools (default dir: $HF_HOME/hub).",
        ),
    ] = False,
    hf_cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--hf-cache-dir",
            metavar="DIR",
            help="The Hugging Face cache to write to (implies --hf-cache).",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Print this engine's launch arguments (e.g. vllm, sglang)."
        ),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None,
        typer.Option(
            "--tensor-parallel-size",
            "-tp",
            metavar="N",
            help="Refuse unless the artifact matches it.",
        ),
    ] = None,
    store: Store = None,
    as_json: Json = False,
) -> None:
    """Resolve an artifact into a local directory or streaming URI, and engine launch arguments."""
    import shlex

    from preheat.catalog import Catalog
    from preheat.cli.output import print_json
    from preheat.config import open_store
    from preheat.resolve import Location, engine_launch, location, materialize

    hf_cache = hf_cache or hf_cache_dir is not None
    chosen = [
        name for name, on in (("--to", to), ("--cache", cache), ("--hf-cache", hf_cache)) if on
    ]
    if len(chosen) > 1:
        raise _ConflictingOptions(
            f"{' and '.join(chosen)} cannot be combined: choose one destination"
        )
    if cache_size is not None and not cache:
        raise _ConflictingOptions("--cache-size applies to --cache only: add --cache")

    catalog = Catalog(open_store(store))
    manifest = catalog.resolve(ref)
    where = location(catalog, manifest)
    extra: dict = {}
    if to is not None:
        path = materialize(catalog, manifest, to)
        where = Location(uri=where.uri, path=str(path), env={})
    elif cache:
        from preheat.cache import fill

        result = fill(manifest, catalog.store, max_bytes=cache_size)
        where = Location(uri=where.uri, path=str(result.path), env={})
        extra["cache"] = {
            "path": str(result.path),
            "hit": result.hit,
            "in_place": result.in_place,
            "filled_files": result.filled_files,
            "filled_bytes": result.filled_bytes,
            "evicted": [e.ref for e in result.evicted],
        }
    elif hf_cache:
        from preheat.hfcache import export_hf_cache

        done = export_hf_cache(catalog, manifest, hf_cache_dir)
        where = Location(uri=where.uri, path=str(done.snapshot), env={})
        extra["hf_cache"] = {
            "dir": str(done.dir),
            "repo": done.repo,
            "commit": done.commit,
            "revision": done.revision,
            "snapshot": str(done.snapshot),
            "linked": done.linked,
            "copied": done.copied,
            "reused": done.reused,
        }
    data = {
        "artifact": {"name": manifest.name, "version": manifest.version},
        "uri": where.uri,
        "path": where.path or where.uri,
        **extra,
    }
    if engine is not None:
        launch = engine_launch(engine, manifest, where, tensor_parallel_size)
        model = launch.model or where.path or where.uri
        data.update(
            engine=engine,
            model=model,
            args=list(launch.args),
            env=launch.env,
            command=launch.argv(),
        )
    if as_json:
        print_json(data)
        return
    if engine is not None:
        for key, value in sorted(data["env"].items()):
            print(f"export {key}={shlex.quote(value)}")
        print(shlex.join(data["command"]))
    else:
        print(data["path"])
