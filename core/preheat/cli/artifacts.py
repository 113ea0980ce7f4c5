"""`preheat artifacts list | get | rm`."""

from __future__ import annotations

from typing import Annotated

import typer

from preheat.cli.options import Command, Json, Store

app = typer.Typer(rich_markup_mode=None, help="Browse and remove artifacts.", no_args_is_help=True)


def _catalog(store):
    from preheat.catalog import Catalog
    from preheat.config import open_store

    return Catalog(open_store(store))


@app.command("list", cls=Command)
def list_artifacts(store: Store = None, as_json: Json = False) -> None:
    """List every artifact version in the store."""
    from preheat.cli.output import human, print_json, table

    catalog = _catalog(store)
    manifests = catalog.artifacts()
    latest = {m.name: catalog.alias(m.name, "latest") for m in manifests}
    rows = [
        {
            "name": m.name,
            "version": m.version,
            "latest": m.version == latest.get(m.name),
            "repo": m.source.repo,
            "commit": m.source.commit,
            "shard": f"{m.shard.engine} tp={m.shard.tensor_parallel_size}" if m.shard else None,
            "bytes": m.total_bytes,
            "created": m.created,
        }
        for m in manifests
    ]
    if as_json:
        print_json({"artifacts": rows})
        return
    table(
        [
            dict(
                r,
                latest="*" if r["latest"] else "",
                commit=r["commit"][:12],
                bytes=human(r["bytes"]),
            )
            for r in rows
        ],
        ["name", "version", "latest", "repo", "commit", "shard", "bytes", "created"],
    )


@app.command("get", cls=Command)
def get(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="NAME[:VERSION]", help="The artifact (default version: the latest)."
        ),
    ],
    store: Store = None,
    as_json: Json = False,
) -> None:
    """Show an artifact's manifest and location."""
    from preheat import serde
    from preheat.cli.output import human, print_json
    from preheat.resolve import location

    catalog = _catalog(store)
    manifest = catalog.resolve(ref)
    where = location(catalog, manifest)
    data = serde.to_dict(manifest)
    data["uri"] = where.uri
    data["path"] = where.path or where.uri
    if as_json:
        print_json(data)
        return
    print(f"artifact: {manifest.ref}")
    print(f"path: {data['path']}")
    print(f"source: {manifest.source.repo}@{manifest.source.commit} ({manifest.source.revision})")
    print(f"files: {len(manifest.files)} ({human(manifest.total_bytes)})")
    m, s = manifest.metadata, manifest.serving
    print(
        f"architecture: {m.architecture}  task: {m.task}  format: {m.format}  model_type: {m.model_type}"
    )
    if s.parameters:
        print(
            f"parameters: {s.parameters:,}  dtype: {s.dtype}  layers: {s.layers}  heads: {s.heads}/{s.kv_heads}"
        )
    if manifest.shard:
        print(
            f"shard: {manifest.shard.engine} tp={manifest.shard.tensor_parallel_size} dtype={manifest.shard.dtype}"
        )
    if manifest.lineage:
        print(f"lineage: {manifest.lineage}")


@app.command("rm", cls=Command)
def rm(
    ref: Annotated[
        str, typer.Argument(metavar="NAME:VERSION", help="The artifact version to delete.")
    ],
    store: Store = None,
    as_json: Json = False,
) -> None:
    """Delete one artifact version (its manifest first, then its files)."""
    from preheat.cli.output import note, print_json
    from preheat.errors import PreheatError

    if ":" not in ref:
        raise PreheatError(f"give the version to delete: preheat artifacts rm {ref}:VERSION")
    catalog = _catalog(store)
    manifest = catalog.resolve(ref)
    catalog.remove(manifest.name, manifest.version)
    if as_json:
        print_json({"removed": {"name": manifest.name, "version": manifest.version}})
    else:
        note(f"removed {manifest.ref}")
