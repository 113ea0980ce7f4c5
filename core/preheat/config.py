"""Where things live: PREHEAT_HOME, the default store, opening a store from a URL, the config file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

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


# --- the preheat config file -------------------------------------------------------------------
#
# $PREHEAT_CONFIG, else $PREHEAT_HOME/config.toml (TOML). Core reads the `[cache]` table; store
# plugins read their own tables (`[stores."URL"]`) from the same file.
#
#     [cache]
#     dir = "/mnt/nvme/preheat-cache"   # default: $PREHEAT_HOME/cache
#     max_bytes = "200Gi"               # default: no limit (the disk's free space still counts)
#     high_watermark = 0.95             # a fill that would pass max_bytes * high ...
#     low_watermark = 0.8               # ... first evicts the least recently used down to * low

CACHE_KEYS = ("dir", "max_bytes", "high_watermark", "low_watermark")


def config_path() -> Path:
    """`$PREHEAT_CONFIG`, else `$PREHEAT_HOME/config.toml`."""
    explicit = os.environ.get("PREHEAT_CONFIG")
    return Path(explicit).expanduser() if explicit else preheat_home() / "config.toml"


def load_config(path: Path | None = None) -> dict:
    """The preheat config file as a dict (empty when there is none); a bad file is a one-line error."""
    import tomllib

    path = path or config_path()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise PreheatError(f"cannot read the preheat config file {path}: {exc}") from None


@attrs.frozen
class CacheSettings:
    """The node cache's directory, size limit (None: unbounded) and eviction watermarks."""

    dir: Path
    max_bytes: int | None = None
    high_watermark: float = 0.95
    low_watermark: float = 0.8


def cache_settings(max_bytes: str | int | None = None) -> CacheSettings:
    """The node cache settings from the config file's `[cache]` table; `max_bytes` overrides its limit."""
    from preheat.resources import parse_quantity

    path = config_path()
    table = load_config(path).get("cache", {})
    if not isinstance(table, dict):
        raise PreheatError(f"`cache` in {path} must be a table: [cache]")
    unknown = sorted(set(table) - set(CACHE_KEYS))
    if unknown:
        raise PreheatError(
            f"unknown key(s) {', '.join(unknown)} in [cache] of {path} (known: {', '.join(CACHE_KEYS)})"
        )
    home = preheat_home()
    directory = Path(str(table.get("dir") or home / "cache")).expanduser()
    if not directory.is_absolute():
        directory = home / directory
    limit = max_bytes if max_bytes is not None else table.get("max_bytes")
    what = "--cache-size" if max_bytes is not None else f"cache.max_bytes in {path}"
    if isinstance(limit, bool | float):
        raise PreheatError(f"invalid {what} {limit!r}: use a quantity like 200Gi or 500G")
    parsed = None if limit is None else parse_quantity(limit, what)
    if parsed is not None and parsed <= 0:
        raise PreheatError(f"invalid {what} {limit!r}: it must be more than 0")
    marks = {}
    for key, default in (("high_watermark", 0.95), ("low_watermark", 0.8)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise PreheatError(
                f"invalid cache.{key} {value!r} in {path}: use a fraction in (0, 1], e.g. {default}"
            )
        marks[key] = float(value)
    if marks["low_watermark"] > marks["high_watermark"]:
        raise PreheatError(
            f"cache.low_watermark ({marks['low_watermark']}) is above cache.high_watermark "
            f"({marks['high_watermark']}) in {path}"
        )
    return CacheSettings(dir=directory, max_bytes=parsed, **marks)


def parse_duration(value: str | float, what: str) -> float:
    """Seconds in a duration like `90s`, `30m`, `12h`, `7d`, `2w` (a bare number is seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)?\s*", str(value))
    if not m:
        raise PreheatError(f"invalid {what} {value!r}: use a duration like 90s, 30m, 12h, 7d or 2w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2) or "s"]
    return float(m.group(1)) * unit
