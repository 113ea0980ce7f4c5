"""The records between preheat's serving core and an engine plugin's app environment."""

from __future__ import annotations

import attrs

from preheat.models import Manifest
from preheat.resolve import Location


@attrs.frozen
class EngineOptions:
    """What preheat decided before asking the engine plugin for its command line.

    :param python: the interpreter that runs the engine (`$PREHEAT_<ENGINE>_PYTHON`, else
        the current one).
    :param host: the address the engine listens on (loopback when preheat's proxy is in
        front of it).
    :param port: the port the engine listens on.
    :param served_model_name: the model name clients send.
    :param tensor_parallel_size: the checked tensor-parallel size (the shard's, for a
        pre-sharded artifact).
    :param stream: `location` is a store URI the engine streams weights from itself.
    :param extra_args: the user's extra engine arguments, tensor-parallel flags removed
        (preheat checked them and passes the size as `tensor_parallel_size`).
    """

    python: str
    host: str
    port: int
    served_model_name: str
    tensor_parallel_size: int = 1
    stream: bool = False
    extra_args: tuple[str, ...] = ()


@attrs.frozen
class EngineCommand:
    """An engine plugin's answer: the whole command line and the variables preheat adds.

    `argv` starts with the interpreter; `env` holds only what preheat sets on top of the
    caller's environment (endpoints, regions, loader settings), never a secret. `model` is
    what the engine loads (a local directory or a store URI).
    """

    argv: tuple[str, ...]
    env: dict[str, str] = attrs.Factory(dict)
    model: str | None = None


@attrs.frozen
class ServePlan:
    """Everything `preheat.serve` runs for one app, checked, before anything starts.

    - `command`: the engine's command line and added environment;
    - `manifest`, `source`: the pinned artifact and where it lives in its store;
      `local_copy` is the directory the artifact is copied to first (None when the engine
      loads it in place or streams it);
    - `url`: what clients use; `engine_url`: where the engine itself answers (the same
      unless preheat's proxy is in front: `proxy`);
    - `auth`: an API key is required; `api_key_env`: the variable that hands it to the
      engine (None: only the proxy checks it);
    - `notes`: what preheat decided on the user's behalf, for people.
    """

    app_name: str
    engine: str
    module: str
    python_env: str
    install_hint: str
    manifest: Manifest
    source: Location
    store_url: str
    command: EngineCommand
    served_model_name: str
    tensor_parallel_size: int
    stream: bool
    local_copy: str | None
    host: str
    port: int
    engine_host: str
    engine_port: int
    proxy: bool
    auth: bool
    api_key_env: str | None
    health_path: str
    min_replicas: int
    scaledown_after: float
    startup_timeout: float
    notes: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}"

    @property
    def engine_url(self) -> str:
        return f"http://{_client_host(self.engine_host)}:{self.engine_port}"

    def shown_env(self) -> dict[str, str]:
        """`command.env` plus the API key's variable, its value redacted (for `--dry-run`)."""
        env = dict(self.command.env)
        if self.auth and self.api_key_env:
            env[self.api_key_env] = "***"
        return env


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


__all__ = ["EngineCommand", "EngineOptions", "ServePlan"]
