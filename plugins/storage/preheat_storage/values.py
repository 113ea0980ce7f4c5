"""Setting values as people write them in the config file or the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from preheat.api import PreheatError

_TRUE = {"1", "true", "yes", "on"}


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a string such as `90s`, `500ms`, `5m`, `1h`, `2d`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in {"", *units}:
        raise PreheatError(f"{what} must be a duration such as 30s, 5m or 1h, not {value!r}")
    return float(match.group(1)) * units.get(match.group(2) or "s", 1)


def parse_size(value: Any, what: str) -> int:
    """Bytes from a number or a string such as `8MiB`, `16MB`, `1GiB`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6}
    units.update({"mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30})
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in units:
        raise PreheatError(f"{what} must be a size such as 8MiB or 16MB, not {value!r}")
    return int(float(match.group(1)) * units[match.group(2)])


def is_true(value: Any) -> bool:
    """Whether a flag is on: True, or `1`, `true`, `yes`, `on` in any case."""
    return value is True or str(value).strip().lower() in _TRUE


def first_set(env: Mapping[str, str], *names: str) -> str | None:
    """The value of the first of `names` that is set, and not empty, in `env`."""
    for name in names:
        if env.get(name):
            return env[name]
    return None
