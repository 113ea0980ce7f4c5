"""The obstore client behind an `ObstoreStore`, and how to read what it returns."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from obstore import exceptions as oe

if TYPE_CHECKING:
    from preheat_storage.settings import Settings

# What obstore raises for a missing object (or bucket): the builtin, or its own.
NOT_FOUND = (FileNotFoundError, oe.NotFoundError)

_MEMORY: dict[str, Any] = {}
_MEMORY_LOCK = threading.Lock()


def memory_backend(name: str):
    """The process-wide in-memory store called `name` (memory://NAME/...)."""
    from obstore.store import MemoryStore

    with _MEMORY_LOCK:
        if name not in _MEMORY:
            _MEMORY[name] = MemoryStore()
        return _MEMORY[name]


def build_backend(settings: Settings):
    """The obstore store for `settings` (prefixes are applied by ObstoreStore, not obstore)."""
    from obstore.store import AzureStore, GCSStore, S3Store

    url = settings.url
    if url.kind == "memory":
        return memory_backend(url.bucket)
    kwargs: dict[str, Any] = {
        "config": settings.config or None,
        "client_options": settings.client_options,
        "retry_config": settings.retry_config,
    }
    if settings.credential_provider is not None:
        kwargs["credential_provider"] = settings.credential_provider
    cls = {"s3": S3Store, "gcs": GCSStore, "azure": AzureStore}[url.kind]
    return cls(url.bucket, **kwargs)


def object_etag(meta: Mapping[str, Any], kind: str) -> str | None:
    """The object's etag in obstore's metadata, quoted the same way on every call."""
    value = meta.get("e_tag")
    # Azure's listings give bare etags where HEAD and PUT give quoted ones.
    if value and kind == "azure" and not value.startswith(('"', "W/")):
        value = f'"{value}"'
    return value
