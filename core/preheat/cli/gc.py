"""`preheat gc`."""

from __future__ import annotations

from preheat.cli.options import Json, Store


def gc(store: Store = None, as_json: Json = False) -> None:
    """Remove leftovers of interrupted runs: partial files and open multipart uploads."""
    from preheat.cli.output import note, print_json
    from preheat.config import open_store

    removed = open_store(store).gc()
    if as_json:
        print_json({"removed": removed})
    else:
        note(f"removed {removed} leftover(s)")
