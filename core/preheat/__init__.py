"""preheat: prepare large language models for serving before the server starts."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Resources", "__version__", "app", "prefetch", "serve"]


def serve(app: Any, **options: Any) -> Any:
    """Serve an app environment on this machine; returns the running `Server` handle.

    `preheat.serve(app)`, `app` an engine plugin's app environment: checks everything it can,
    copies the artifact here or lets the engine stream it, starts the engine (behind a
    small proxy when an API key is required or the app scales to zero) and returns once
    it answers. The handle has `.url`, `.api_key`, `.logs()`, `.wait_ready()` and
    `.stop()`, and is a context manager. See `preheat.serving.server.serve` for options.
    """
    from preheat.serving.server import serve as _serve

    return _serve(app, **options)


def __getattr__(name: str) -> Any:
    if name in ("prefetch", "app"):
        return importlib.import_module(f"preheat.{name}")
    if name == "Resources":  # what a served app asks for (not the prefetch request's)
        from preheat.app import Resources

        return Resources
    raise AttributeError(f"module 'preheat' has no attribute {name!r}")
