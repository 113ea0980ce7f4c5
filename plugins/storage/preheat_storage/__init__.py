"""Object-store backends for preheat: s3://, gs://, az:// (azure://, abfs[s]://) and memory://."""

from __future__ import annotations

__all__ = ["ObstoreStore"]


def __getattr__(name: str):
    if name == "ObstoreStore":  # imported on use: obstore is a heavy import
        from preheat_storage.store import ObstoreStore

        return ObstoreStore
    raise AttributeError(f"module 'preheat_storage' has no attribute {name!r}")
