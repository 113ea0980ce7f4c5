"""The offline demo: a loopback hub serving a generated tiny model, prefetched into the default store.

Run with `nox -s demo` (or `python scripts/demo.py` where preheat and preheat-testing are installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from preheat_testing.hub import HubServer
from preheat_testing.models import build_case

REPO = "preheat-demo/Tiny-Llama-GQA"


def run(*args: str, env: dict[str, str]) -> str:
    print("$ preheat " + " ".join(args), flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "preheat.cli.main", *args],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    print(out, end="", flush=True)
    return out


def main() -> None:
    model = build_case("llama_gqa", subfolders=True)
    with HubServer() as hub, tempfile.TemporaryDirectory() as hf_home:
        hub.add_repo(REPO, model.files, tags=["v1"])
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=hf_home, HF_HUB_DISABLE_XET="1")
        print(
            f"loopback hub at {hub.endpoint} serving {REPO} ({len(model.files)} files)\n",
            flush=True,
        )
        path = run("prefetch", "hf-model", REPO, "--wait", env=env).strip().splitlines()[-1]
        run("prefetch", "hf-model", REPO, "--wait", "--json", env=env)
        run("artifacts", "get", "tiny-llama-gqa", env=env)
        print(f"\nthe artifact directory an engine loads: {path}")
        for name in sorted(os.listdir(path)):
            print("  " + name)
        print("\npre-shard it for vLLM at tensor-parallel size 2, on CPU:", flush=True)
        shard_config = os.path.join(hf_home, "tp2.yaml")
        with open(shard_config, "w") as f:
            f.write("engine: vllm\nargs:\n  tensor_parallel_size: 2\n")
        sharded = (
            run("prefetch", "hf-model", REPO, "--shard-config", shard_config, "--wait", env=env)
            .strip()
            .splitlines()[-1]
        )
        for name in sorted(os.listdir(sharded)):
            print("  " + name)
        run("resolve", "tiny-llama-gqa", "--engine", "vllm", env=env)
        run("artifacts", "list", env=env)


if __name__ == "__main__":
    main()
