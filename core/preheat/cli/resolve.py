"""`preheat resolve REF [--to DIR] [--engine NAME]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from preheat.cli.options import Json, Store


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

    catalog = Catalog(open_store(store))
    manifest = catalog.resolve(ref)
    where = location(catalog, manifest)
    if to is not None:
        path = materialize(catalog, manifest, to)
        where = Location(uri=where.uri, path=str(path), env={})
    data = {
        "artifact": {"name": manifest.name, "version": manifest.version},
        "uri": where.uri,
        "path": where.path or where.uri,
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
