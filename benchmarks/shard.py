"""CPU pre-sharding speed and memory, against `cp -r` of the same artifact in the same run.

A generated Llama-shaped bf16 checkpoint is prefetched once from a loopback hub into a
local store. Then, for each engine plugin installed (vllm, sglang):

- shard: `preheat prefetch hf-model REPO --shard-config tp4.yaml --wait` (start-up included);
- floor: `cp -r` of the stored unsharded artifact (every byte read and written once).

Reported: the ratio shard / floor, the peak RSS of the shard command's process tree, and
the hub bytes served during the shard command (must be 0: nothing is fetched again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from prefetch import GiB, model_dir, timed

from preheat_testing.hub import HubServer

REPO = "bench/Llama-Shard"


def remove_sharded(env: dict[str, str], store: Path) -> None:
    """Delete the sharded versions so the next repetition does the work again."""
    cli = [sys.executable, "-m", "preheat.cli.main"]
    listing = subprocess.run(
        [*cli, "artifacts", "list", "--json", "--store", str(store)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    for a in json.loads(listing.stdout)["artifacts"]:
        if a["shard"]:
            subprocess.run(
                [*cli, "artifacts", "rm", f"{a['name']}:{a['version']}", "--store", str(store)],
                env=env,
                check=True,
                capture_output=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=float, default=4, help="model size in GiB")
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--engines", default="vllm,sglang")
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    src, sums = model_dir(cache, int(args.size * GiB))
    files = {p.name: p for p in src.iterdir() if p.name != "sha256.json"}
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "bytes": sum(p.stat().st_size for p in files.values()),
    }
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=cache) as work:
        hub.add_repo(REPO, files, sha256=sums)
        work = Path(work)
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            PREHEAT_HOME=str(work / "home"),
            HF_HOME=str(work / "hf"),
        )
        store = work / "store"
        base = [
            sys.executable,
            "-m",
            "preheat.cli.main",
            "prefetch",
            "hf-model",
            REPO,
            "--wait",
            "--quiet",
            "--store",
            str(store),
        ]
        out = subprocess.run(
            [*base, "--json"], env=env, check=True, capture_output=True, text=True
        ).stdout
        artifact = json.loads(out)["artifact"]["path"]
        for engine in args.engines.split(","):
            key = "tensor_parallel_size" if engine == "vllm" else "tp"
            config = work / f"{engine}.yaml"
            config.write_text(f"engine: {engine}\nargs:\n  {key}: {args.tp}\n")
            shard_times, floor_times, peaks, served = [], [], [], []
            for _ in range(args.reps):
                dest = work / "copy"
                shutil.rmtree(dest, ignore_errors=True)
                floor_times.append(timed(["cp", "-r", artifact, str(dest)], env)[0])
                shutil.rmtree(dest, ignore_errors=True)
                hub.reset_stats()
                t, peak = timed([*base, "--shard-config", str(config)], env)
                served.append(hub.bytes_served("*.safetensors"))
                shard_times.append(t)
                peaks.append(peak)
                remove_sharded(env, store)
            shard, floor = statistics.median(shard_times), statistics.median(floor_times)
            results[engine] = {
                "tp": args.tp,
                "seconds": {"shard": shard, "cp_r": floor},
                "ratio_to_cp_r": shard / floor,
                "peak_rss_mib": max(peaks) / (1 << 20),
                "hub_weight_bytes_during_shard": max(served),
            }
            print(json.dumps({engine: results[engine]}, indent=2), flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
