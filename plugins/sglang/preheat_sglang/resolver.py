"""SGLang launch arguments for an artifact."""

from __future__ import annotations

import json

from preheat.api import Launch, Location, Manifest, PreheatError, Resolver
from preheat_sglang.layout import FILE_PATTERN
from preheat_tp.launch import checked_shard

COMMAND = ("python", "-m", "sglang.launch_server")


class SGLangResolver(Resolver):
    """Arguments for `python -m sglang.launch_server --model-path MODEL ...`."""

    def launch(
        self, manifest: Manifest, location: Location, *, tensor_parallel_size: int | None = None
    ) -> Launch:
        if location.path is None:
            raise PreheatError(
                f"SGLang loads {manifest.ref} from a local directory only: "
                "use `preheat resolve ... --to DIR --engine sglang`"
            )
        shard = manifest.shard
        if shard is None:
            args = ["--model-path", location.path]
            if tensor_parallel_size:
                args += ["--tp-size", str(tensor_parallel_size)]
            return Launch(args=tuple(args), model=location.path, command=COMMAND)
        tp = checked_shard(
            manifest, "sglang", tensor_parallel_size, "--tp-size", "tp"
        ).tensor_parallel_size
        args = [
            "--model-path",
            location.path,
            "--load-format",
            "sharded_state",
            "--tp-size",
            str(tp),
        ]
        if shard.file_pattern != FILE_PATTERN:
            args += ["--model-loader-extra-config", json.dumps({"pattern": shard.file_pattern})]
        if shard.dtype != "auto":
            args += ["--dtype", shard.dtype]
        if shard.args.get("context_length"):
            args += ["--context-length", str(shard.args["context_length"])]
        return Launch(args=tuple(args), model=location.path, command=COMMAND)
