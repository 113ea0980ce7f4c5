"""Where things live: PREHEAT_HOME, the default store, and opening a store from a URL."""

from __future__ import annotations

import os
import re
from pathlib import Path

from preheat.errors import PreheatError
from preheat.plugins import get_registry
from preheat.store import Store

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The distribution to install for a store scheme that no installed plugin serves.
_STORE_DISTRIBUTIONS = dict.fromkeys(
    ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory"), "preheat-storage"
)


def preheat_home() -> Path:
    """`PREHEAT_HOME`, default `~/.cache/preheat`."""
    return Path(os.environ.get("PREHEAT_HOME") or Path.home() / ".cache" / "preheat").expanduser()


def default_store_url() -> str:
    """`PREHEAT_STORE`, else the local store under `PREHEAT_HOME`."""
    return os.environ.get("PREHEAT_STORE") or str(preheat_home() / "store")


def store_scheme(url: str) -> str:
    """The scheme of a store URL (`file` for a plain path)."""
    m = _SCHEME_RE.match(url)
    return m.group(1).lower() if m else "file"


def open_store(url: str | None = None) -> Store:
    """The store at `url` (default: `default_store_url()`), from the plugin that owns its scheme."""
    url = url or default_store_url()
    scheme = store_scheme(url)
    registration = get_registry().get("stores", scheme)
    if registration is None:
        known = ", ".join(f"{s}://" for s in get_registry().names("stores"))
        distribution = _STORE_DISTRIBUTIONS.get(scheme)
        install = f": pip install {distribution}" if distribution else ""
        raise PreheatError(
            f"unknown store URL scheme {scheme}:// in {url!r}{install} (supported: {known})"
        )
    return registration.value(url)
