"""preheat: prepare large language models for serving before the server starts."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "app", "prefetch"]


def __getattr__(name: str) -> Any:
    if name in ("prefetch", "app"):
        return importlib.import_module(f"preheat.{name}")
    raise AttributeError(f"module 'preheat' has no attribute {name!r}")
