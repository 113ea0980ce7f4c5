"""vLLM launch arguments for an artifact: local `sharded_state`, or streaming from an object store."""

from __future__ import annotations

import json

from preheat.api import Launch, Location, Manifest, PreheatError, Resolver
from preheat_tp.launch import checked_shard

STREAMABLE = ("s3://", "gs://")


class VLLMResolver(Resolver):
    """Arguments for `vllm serve MODEL ...`."""

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
            return Launch(args=tuple(args), env=env, model=model, command=("vllm", "serve", model))
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
        return Launch(args=tuple(args), env=env, model=model, command=("vllm", "serve", model))
