"""`preheat cache list | rm REF | prune [--max-size Q] [--older-than D]`: this node's cache."""

from __future__ import annotations

from typing import Annotated

import typer

from preheat.cli.options import Command, Json

app = typer.Typer(
    rich_markup_mode=None,
    help="This node's cache of artifacts from remote stores.",
    no_args_is_help=True,
)


def _cache():
    from preheat.cache import NodeCache

    return NodeCache()


@app.command("list", cls=Command)
def list_entries(as_json: Json = False) -> None:
    """List the cached artifacts, least recently used first."""
    from preheat.cli.output import human, note, print_json, table

    cache = _cache()
    entries = cache.list()
    rows = [e.to_dict() for e in entries]
    total = sum(e.bytes for e in entries)
    if as_json:
        print_json(
            {
                "dir": str(cache.dir),
                "bytes": total,
                "max_bytes": cache.settings.max_bytes,
                "entries": rows,
            }
        )
        return
    if not rows:
        note(f"no artifacts in the node cache {cache.dir}")
        return
    table(
        [dict(r, bytes=human(r["bytes"]), in_use="yes" if r["in_use"] else "") for r in rows],
        ["name", "version", "status", "in_use", "bytes", "used", "store"],
    )


@app.command("rm", cls=Command)
def rm(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF", help="NAME (every cached version) or NAME:VERSION to remove."
        ),
    ],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="Only the copies from this store (default: from any store).",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Remove cached copies of an artifact (never one in use)."""
    from preheat.cli.output import note, print_json

    url = None
    if store is not None:
        from preheat.config import open_store

        url = open_store(store).url
    removed = _cache().remove(ref, url)
    if as_json:
        print_json({"removed": [e.to_dict() for e in removed]})
    else:
        for e in removed:
            note(f"removed {e.ref} ({e.store})")


@app.command("prune", cls=Command)
def prune(
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            metavar="Q",
            help="Evict the least recently used until the cache holds at most Q (e.g. 100Gi).",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="D",
            help="Remove entries not used for D (e.g. 12h, 7d, 2w).",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Remove leftovers of interrupted fills, old entries, and the least recently used over a size.

    With no option: leftovers, then down to the low watermark if the cache is above the high
    one of its configured limit. Entries in use are never removed.
    """
    from preheat.cli.output import human, note, print_json
    from preheat.config import parse_duration
    from preheat.resources import parse_quantity

    limit = None if max_size is None else parse_quantity(max_size, "--max-size")
    age = None if older_than is None else parse_duration(older_than, "--older-than")
    result = _cache().prune(max_bytes=limit, older_than=age)
    if as_json:
        print_json(
            {
                "removed": [e.to_dict() for e in result.removed],
                "freed_bytes": sum(e.bytes for e in result.removed),
                "in_use": [e.to_dict() for e in result.in_use],
                "bytes": result.bytes,
            }
        )
        return
    for e in result.removed:
        note(f"removed {e.ref} ({human(e.bytes)})")
    for e in result.in_use:
        note(f"kept {e.ref}: in use")
    note(
        f"freed {human(sum(e.bytes for e in result.removed))}; the cache holds {human(result.bytes)}"
    )
