"""Serving a stored artifact on this machine: `preheat.serve(app)` and `preheat serve REF`.

Engine-neutral: an engine plugin contributes an app environment (a subclass of
`preheat.app.AppEnvironment`, registered with `preheat_register_apps`) that turns a
checked plan into its command line; everything else lives here:

- `plan`: the checks made before anything starts, and the `ServePlan`;
- `process`: the engine process (own process group, redacted log, health check, stop);
- `proxy`: the aiohttp front (API keys, scale-to-zero, streaming, Prometheus metrics);
- `server`: `serve()` and the `Server` handle.
"""

from __future__ import annotations

from preheat.serving.process import EngineFailed
from preheat.serving.server import Server, serve
from preheat.serving.spec import EngineCommand, EngineOptions, ServePlan

__all__ = ["EngineCommand", "EngineFailed", "EngineOptions", "ServePlan", "Server", "serve"]
