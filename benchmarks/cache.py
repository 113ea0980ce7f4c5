"""Node cache: time to a ready directory on a cache hit against a fresh `resolve --to`.

A loopback hub serves a generated Llama-shaped bf16 model (8 weight files); it is
prefetched into an S3 server on loopback (SeaweedFS, or moto with `--server moto`). One
`preheat resolve --cache` fills the node cache; then, alternating, each contender runs as
its own process, start-up included:

- hit: `preheat resolve NAME:VERSION --store s3://... --cache` (reads the manifest, re-stats
  every cached file, reads no object);
- fresh: `preheat resolve NAME:VERSION --store s3://... --to DIR` into an empty DIR (every
  byte fetched and sha256-verified);
- start-up: `preheat --version`, the floor any preheat command pays.

Reported: medians over the rounds and the ratio fresh / hit.

Usage: python benchmarks/cache.py [--size-mib 256] [--rounds 3] [--server seaweedfs|moto]
       [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from preheat_testing import servers
from preheat_testing.hub import HubServer, file_sha256
from preheat_testing.models import make_big_model

MiB = 1 << 20
REPO = "bench/Llama-cache"


def model_dir(cache: Path, size: int) -> tuple[Path, dict[str, str]]:
    """A cached generated model of `size` bytes and its LFS sha256s."""
    path = cache / f"llama-{size // MiB}m"
    digests = path / "sha256.json"
    if not digests.exists():
        shutil.rmtree(path, ignore_errors=True)
        make_big_model(path, size, 8)
        sums = {p.name: file_sha256(p) for p in path.iterdir() if p.suffix == ".safetensors"}
        digests.write_text(json.dumps(sums))
    return path, json.loads(digests.read_text())


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[3:6]} failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout


def bench(hub: HubServer, server, cache: Path, size: int, rounds: int, work: Path) -> dict:
    src, sums = model_dir(cache, size)
    files = {p.name: p for p in src.iterdir() if p.name != "sha256.json"}
    total = sum(p.stat().st_size for p in files.values())
    hub.add_repo(REPO, files, sha256=sums)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "PREHEAT_", "HF_", "HUGGING"))
    }
    env.update(
        server.env,
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PREHEAT_HOME=str(work / "home"),
    )
    cli = [sys.executable, "-m", "preheat.cli.main"]
    url = server.url("bench/cache")
    _, out = timed([*cli, "prefetch", "hf-model", REPO, "--store", url, "--wait", "--json"], env)
    artifact = json.loads(out)["artifact"]
    ref = f"{artifact['name']}:{artifact['version']}"

    fill, out = timed([*cli, "resolve", ref, "--store", url, "--cache", "--json"], env)
    filled = json.loads(out)
    assert filled["cache"]["hit"] is False, filled
    contenders = {
        "hit": [*cli, "resolve", ref, "--store", url, "--cache"],
        "fresh": [*cli, "resolve", ref, "--store", url, "--to", str(work / "fresh")],
        "startup": [*cli, "--version"],
    }
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    for rnd in range(rounds):
        order = list(contenders) if rnd % 2 == 0 else list(reversed(contenders))
        for name in order:
            elapsed, out = timed(contenders[name], env)
            seconds[name].append(elapsed)
            if name == "hit" and out.strip() != filled["path"]:
                raise SystemExit(f"the hit resolved to {out.strip()}, not {filled['path']}")
            if name == "fresh":
                got = sum(p.stat().st_size for p in (work / "fresh").rglob("*") if p.is_file())
                if got != total:
                    raise SystemExit(f"--to wrote {got} bytes, expected {total}")
                shutil.rmtree(work / "fresh")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "bytes": total,
        "files": len(files),
        "server": server.name,
        "first_fill_seconds": round(fill, 3),
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "fresh_over_hit": round(med["fresh"] / med["hit"], 2),
        "hit_over_startup": round(med["hit"] / med["startup"], 2),
        "all_seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="model size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    start = servers.seaweedfs_s3 if args.server == "seaweedfs" else servers.moto_s3
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(HubServer())
        server = stack.enter_context(start())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=cache)))
        size = args.size_mib * MiB
        results[f"{args.size_mib}MiB"] = bench(hub, server, cache, size, args.rounds, work)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
