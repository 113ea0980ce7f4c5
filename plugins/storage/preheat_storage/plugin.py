"""Registers the obstore-backed stores with preheat (obstore is imported only when one is used)."""

from __future__ import annotations

from preheat.api import hookimpl

SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory")


def open_store(url: str):
    """Store factory for every scheme this plugin registers."""
    from preheat_storage.store import ObstoreStore

    return ObstoreStore(url)


@hookimpl
def preheat_register_stores(register):
    for scheme in SCHEMES:
        register(scheme, open_store)
