"""`SGLangAppEnvironment`: serve a stored artifact with SGLang's server.

    import preheat
    from preheat_sglang import SGLangAppEnvironment

    app = SGLangAppEnvironment(
        name="qwen-serving-app",
        model_path="qwen3-0.6b",
        resources=preheat.Resources(gpu="H100:2"),
        scaling=preheat.app.Scaling(replicas=(0, 1), scaledown_after=600),
    )
    server = preheat.serve(app)

The command is `PYTHON -m sglang.launch_server --model-path DIR --served-model-name ID
--host 127.0.0.1 --port P [--load-format sharded_state --tp-size N] [EXTRA ARGS]`; PYTHON
is `$PREHEAT_SGLANG_PYTHON` when set, else the current interpreter.

- SGLang takes its API key only as a flag (`--api-key`), and a command line is visible to
  every user of the machine: preheat's proxy checks the key instead, and SGLang listens
  on loopback only.
- SGLang's `sharded_state` loader reads local directories only, so `stream_model=True`
  falls back to a verified local copy (the node cache) for remote stores.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from preheat.api import EngineCommand, EngineOptions, Location, Manifest
from preheat.app import AppEnvironment
from preheat_sglang.resolver import SGLangResolver

MODULE = "sglang.launch_server"


@attrs.define
class SGLangAppEnvironment(AppEnvironment):
    """Serve an artifact with SGLang (fields: see `preheat.app.AppEnvironment`)."""

    engine: ClassVar[str] = "sglang"
    module: ClassVar[str] = "sglang"
    python_env: ClassVar[str] = "PREHEAT_SGLANG_PYTHON"
    install_hint: ClassVar[str] = "pip install sglang (it needs CUDA)"
    api_key_env: ClassVar[str | None] = None  # flag only: the proxy checks the key
    tp_flags: ClassVar[tuple[str, ...]] = ("--tp-size", "--tensor-parallel-size", "--tp")
    managed_flags: ClassVar[dict[str, str]] = {
        "--model-path": "the model is the artifact: set model_path=",
        "--model": "the model is the artifact: set model_path=",
        "--served-model-name": "set model_id= (--model-id)",
        "--port": "set port= (--port)",
        "--host": "set host= (--host)",
        "--api-key": "requires_auth=True (--auth) makes preheat's proxy check a generated key; "
        "a key on a command line is visible to every user of the machine",
    }
    memory_fraction: ClassVar[float] = 0.88  # --mem-fraction-static on large GPUs
    memory_fraction_flag: ClassVar[str | None] = "--mem-fraction-static"

    def engine_command(
        self, manifest: Manifest, location: Location, options: EngineOptions
    ) -> EngineCommand:
        """`PYTHON -m sglang.launch_server --model-path ...` for the checked plan."""
        tp = options.tensor_parallel_size
        launch = SGLangResolver().launch(
            manifest,
            location,
            tensor_parallel_size=tp if manifest.shard is not None or tp > 1 else None,
        )
        argv = [
            options.python,
            "-m",
            MODULE,
            *launch.args,
            "--served-model-name",
            options.served_model_name,
            "--host",
            options.host,
            "--port",
            str(options.port),
            *options.extra_args,
        ]
        return EngineCommand(argv=tuple(argv), env=dict(launch.env), model=launch.model)


__all__ = ["SGLangAppEnvironment"]
