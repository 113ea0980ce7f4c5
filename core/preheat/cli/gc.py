"""`preheat gc [--older-than D] [--apply]`."""

from __future__ import annotations

from typing import Annotated

import typer

from preheat.cli.options import Json, Store

OlderThan = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        metavar="D",
        help="Only leftovers at least D old, e.g. 30m, 2h, 1d "
        "(default: the store's gc_after; 0 for a local store).",
        show_default=False,
    ),
]
Apply = Annotated[
    bool,
    typer.Option(
        "--apply", help="Also remove the store objects no manifest references (else list them)."
    ),
]


def gc(
    store: Store = None, older_than: OlderThan = None, apply: Apply = False, as_json: Json = False
) -> None:
    """Remove leftovers of interrupted runs: partial files, open multipart uploads, staging
    folders of dead runs; report (with --apply remove) objects that no manifest references."""
    from preheat.cli.output import human, note, print_json
    from preheat.config import open_store, parse_duration
    from preheat.sweep import sweep

    age = None if older_than is None else parse_duration(older_than, "--older-than")
    if age is not None and age < 0:
        from preheat.errors import PreheatError

        raise PreheatError(
            f"invalid --older-than {older_than!r}: use a duration like 30m, 2h or 1d"
        )
    opened = open_store(store)
    try:
        found = sweep(opened, older_than=age, apply=apply)
    finally:
        opened.close()
    if as_json:
        print_json(found.to_json())
        return
    note(f"removed {found.removed} leftover(s)")
    orphans = found.unreferenced
    if orphans:
        size = human(sum(i.size for i in orphans))
        if apply:
            note(f"removed {found.unreferenced_removed} unreferenced object(s) ({size})")
        else:
            for info in orphans:
                print(info.key)
            note(
                f"found {len(orphans)} object(s) ({size}) that no manifest references: "
                "rerun with --apply to remove them"
            )
