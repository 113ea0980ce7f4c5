"""Fetch only what changed: a new revision that changes 1 of 8 weight files, against a full prefetch.

A loopback hub serves a generated Llama-shaped bf16 model (8 safetensors files, default
4 GiB) at tag `v1`, and a `main` whose one weight file (`--changed`, the 4th by default)
has new values. Contenders, each `preheat prefetch hf-model REPO --wait --quiet` of `main`
as its own process (start-up included), alternated for `--rounds` rounds:

- full: into an empty local store (every byte from the hub);
- reuse: into a local store that already holds `v1` (prepared untimed, by a prefetch of
  `v1` once and a hard-linked copy of that store per round), so the seven unchanged
  files are linked in and only the changed one is fetched.

Reported: medians of wall time and of hub bytes (body bytes both origins served, API
calls included), the reuse/full ratios, and the targets: hub bytes <= the changed file
plus 1 %, time <= 10 % of a full prefetch.

Usage: python benchmarks/reuse.py [--size 4Gi] [--rounds 3] [--out results.json]
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

from prefetch import timed

from preheat.resources import parse_quantity
from preheat_testing.hub import HubServer, file_sha256
from preheat_testing.models import make_big_model

REPO = "bench/Llama-Reuse"
MiB = 1 << 20


def models(cache: Path, size: int, changed: int) -> tuple[dict[str, Path], dict[str, Path], dict]:
    """v1 and main file sets (main differs in one weight file) and every LFS sha256."""
    base = cache / f"reuse-llama-{size // MiB}m"
    sums_path = base / "sha256.json"
    if not sums_path.exists():
        shutil.rmtree(base, ignore_errors=True)
        make_big_model(base / "v1", size, 8)
        weights = sorted(p for p in (base / "v1").iterdir() if p.suffix == ".safetensors")
        sums = {f"v1/{p.name}": file_sha256(p) for p in weights}
        for k, p in enumerate(weights, start=1):
            new = base / f"main-{k}" / p.name
            new.parent.mkdir(parents=True)
            shutil.copyfile(p, new)
            with open(new, "r+b") as f:  # new values in the last MiB; the header is intact
                f.seek(-MiB, os.SEEK_END)
                tail = f.read(MiB)
                f.seek(-MiB, os.SEEK_END)
                f.write(bytes(b ^ 0x01 for b in tail))
            sums[f"main-{k}/{p.name}"] = file_sha256(new)
        sums_path.write_text(json.dumps(sums))
    sums = json.loads(sums_path.read_text())
    v1 = {p.name: p for p in (base / "v1").iterdir()}
    changed_file = next((base / f"main-{changed}").iterdir())
    main = dict(v1, **{changed_file.name: changed_file})
    digests = {"v1": {}, "main": {}}
    for key, digest in sums.items():
        folder, name = key.split("/")
        if folder == "v1":
            digests["v1"][name] = digest
            digests["main"].setdefault(name, digest)
        elif folder == f"main-{changed}":
            digests["main"][name] = digest
    return v1, main, digests


def prefetch(store: Path, revision: str | None, env: dict[str, str]) -> list[str]:
    cmd = [sys.executable, "-m", "preheat.cli.main", "prefetch", "hf-model", REPO]
    if revision:
        cmd += ["--revision", revision]
    return [*cmd, "--wait", "--quiet", "--store", str(store)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4Gi", help="model size, e.g. 4Gi or 256Mi")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (at least 3)")
    parser.add_argument("--changed", type=int, default=4, help="which weight file changes, 1-8")
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    size = parse_quantity(args.size, "--size")
    rounds = max(3, args.rounds)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    v1, main_files, digests = models(cache, size, args.changed)
    changed = next(n for n, p in main_files.items() if p != v1.get(n))
    changed_size = main_files[changed].stat().st_size

    seconds: dict[str, list[float]] = {"full": [], "reuse": []}
    hub_bytes: dict[str, list[int]] = {"full": [], "reuse": []}
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        hub.add_repo(REPO, v1, tags=["v1"], sha256=digests["v1"])
        hub.add_revision(REPO, main_files, branch="main", sha256=digests["main"])
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PREHEAT_HOME=str(work / "home"),
            HF_HOME=str(work / "hf"),
        )
        seeded = work / "seeded"  # a store holding v1, copied (hard links) for each round
        subprocess.run(prefetch(seeded, "v1", env), env=env, check=True, stdout=subprocess.DEVNULL)
        for r in range(rounds):
            order = ("full", "reuse") if r % 2 == 0 else ("reuse", "full")
            for name in order:
                store = work / f"{name}-{r}"
                if name == "reuse":
                    subprocess.run(["cp", "-al", str(seeded), str(store)], check=True)
                hub.reset_stats()
                t, _ = timed(prefetch(store, None, env), env)
                seconds[name].append(t)
                hub_bytes[name].append(hub.total_bytes)
                shutil.rmtree(store, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in seconds.items()}
    med_bytes = {k: statistics.median(v) for k, v in hub_bytes.items()}
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "model_bytes": sum(p.stat().st_size for p in main_files.values()),
        "changed_file": changed,
        "changed_bytes": changed_size,
        "rounds": rounds,
        "seconds": seconds,
        "hub_bytes": hub_bytes,
        "median_seconds": med,
        "median_hub_bytes": med_bytes,
        "time_ratio": med["reuse"] / med["full"],
        "bytes_ratio": med_bytes["reuse"] / med_bytes["full"],
        "bytes_over_changed_file": med_bytes["reuse"] / changed_size,
        "targets": {
            "bytes <= changed file + 1%": med_bytes["reuse"] <= changed_size * 1.01,
            "time <= 10% of a full prefetch": med["reuse"] <= 0.10 * med["full"],
        },
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
