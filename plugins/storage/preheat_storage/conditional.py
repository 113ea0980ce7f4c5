"""Conditional puts: the obstore mode for if-absent / if-match, checked by HEAD where needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from preheat.api import PreconditionFailed
from preheat_storage.backend import object_etag

if TYPE_CHECKING:
    from preheat_storage.store import ObstoreStore


def put_mode(store: ObstoreStore, key: str, if_absent: bool, if_match: str | None) -> Any:
    """The obstore put mode; with `conditional_writes = false`, a best-effort check first."""
    needs_head = not store.settings.conditional_writes or (
        if_match is not None and store._u.kind == "gcs"
    )
    current = store._head_meta(key) if needs_head else None
    if needs_head:
        if if_absent and current is not None:
            raise PreconditionFailed(store._scrub(f"{store.uri(key)} already exists"))
        if if_match is not None and (
            current is None or object_etag(current, store._u.kind) != if_match
        ):
            raise PreconditionFailed(
                store._scrub(f"{store.uri(key)} changed or is missing (its etag no longer matches)")
            )
    if not store.settings.conditional_writes:
        return "overwrite"
    if if_absent:
        return "create"
    if store._u.kind == "gcs":  # GCS conditions on the generation, which HEAD just gave us
        return {"e_tag": if_match, "version": current.get("version") if current else None}
    return {"e_tag": if_match}
