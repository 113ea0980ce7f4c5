"""Large files over many connections, against a CDN that caps each connection.

A loopback hub caps every TCP connection at `--cap` bytes per second (48 MB/s by
default, as CDNs do: often 50-200 MB/s) and serves generated Llama-shaped bf16 models,
LFS files through its CDN origin. Each contender runs as its own process, start-up
included, alternated for `--rounds` rounds:

- one file (`--one-file`, 2 GiB, one safetensors file):
  - preheat: `preheat prefetch hf-model REPO --wait --quiet` into a fresh local store;
  - one connection: a standalone program that GETs each file over one connection,
    hashes it (sha256), writes it and fsyncs it (what a plain download does).
- many files (`--many-files`, 2 GiB over 8 safetensors files): preheat, whose
  throughput is compared with the aggregate cap, `PREHEAT_CONNECTIONS` (8) times the
  cap per connection: over the transfer (from the first weight request the hub saw to
  the last weight byte it sent) and end to end (the model's bytes over the whole run).

Reported: medians, the one-file speed-up (target >= 3x), the share of the aggregate
cap (target >= 90 %), and preheat's peak RSS (its process tree, sampled every 0.1 s;
target < 256 MiB whatever the model size).

Usage: python benchmarks/ranged.py [--one-file 2Gi] [--many-files 2Gi] [--cap 48000000]
       [--rounds 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from prefetch import timed

from preheat.ranged import CONNECTIONS
from preheat.resources import parse_quantity
from preheat_testing.hub import HubServer, file_sha256
from preheat_testing.models import make_big_model

MiB = 1 << 20

ONE_CONNECTION = """
import hashlib, json, os, sys, urllib.request
endpoint, repo, dest, files = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
for path in files:
    digest = hashlib.sha256()
    with urllib.request.urlopen(f"{endpoint}/{repo}/resolve/main/{path}") as r:
        with open(os.path.join(dest, path), "wb") as f:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    print(path, digest.hexdigest())
"""


def model(cache: Path, size: int, n_files: int) -> tuple[dict[str, Path], dict[str, str]]:
    """A cached generated model of about `size` bytes in `n_files` weight files, and its sha256s."""
    root = cache / f"ranged-llama-{size // MiB}m-{n_files}"
    sums = root / "sha256.json"
    if not sums.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_big_model(root, size, n_files)
        digests = {p.name: file_sha256(p) for p in root.iterdir() if p.suffix == ".safetensors"}
        sums.write_text(json.dumps(digests))
    files = {p.name: p for p in root.iterdir() if p.name != "sha256.json"}
    return files, json.loads(sums.read_text())


def preheat_cmd(repo: str, store: Path) -> list[str]:
    return [sys.executable, "-m", "preheat.cli.main", "prefetch", "hf-model", repo, "--wait",
            "--quiet", "--store", str(store)]  # fmt: skip


def transfer_window(hub: HubServer, repo: str) -> tuple[float, int]:
    """Seconds from the first weight request to the last weight byte sent, and the bytes sent."""
    weights = [
        r
        for r in hub.requests
        if r.repo_id == repo and r.file and r.file.endswith(".safetensors") and r.finished
    ]
    body = [r for r in weights if r.origin == "cdn" and r.body_bytes > MiB]
    if not body:
        return 0.0, 0
    return max(r.finished for r in body) - min(r.started for r in body), sum(
        r.body_bytes for r in body
    )


def one_file(hub: HubServer, cache: Path, size: int, rounds: int, work: Path) -> dict:
    files, sums = model(cache, size, 1)
    repo = f"bench/One-File-{size // MiB}m"
    hub.add_repo(repo, files, sha256=sums)
    total = sum(p.stat().st_size for p in files.values())
    times: dict[str, list[float]] = {"preheat": [], "one_connection": []}
    rss: list[int] = []
    for _ in range(rounds):
        for name in times:
            d = work / name
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            env = dict(os.environ, HF_ENDPOINT=hub.endpoint, PREHEAT_HOME=str(d / "home"),
                       HF_HOME=str(d / "hf"), HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
            if name == "preheat":
                t, peak = timed(preheat_cmd(repo, d / "store"), env)
                rss.append(peak)
            else:
                cmd = [sys.executable, "-c", ONE_CONNECTION, hub.endpoint, repo, str(d),
                       json.dumps(sorted(files))]  # fmt: skip
                t, _ = timed(cmd, env)
            times[name].append(t)
            shutil.rmtree(d, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bytes": total,
        "seconds": med,
        "all_seconds": times,
        "speedup_vs_one_connection": med["one_connection"] / med["preheat"],
        "preheat_peak_rss_mib": max(rss) / MiB,
    }


def many_files(hub: HubServer, cache: Path, size: int, rounds: int, work: Path, cap: int) -> dict:
    files, sums = model(cache, size, 8)
    repo = f"bench/Many-Files-{size // MiB}m"
    hub.add_repo(repo, files, sha256=sums)
    total = sum(p.stat().st_size for p in files.values())
    aggregate = CONNECTIONS * cap
    window, e2e, rss = [], [], []
    for _ in range(rounds):
        d = work / "many"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, PREHEAT_HOME=str(d / "home"),
                   HF_HOME=str(d / "hf"), HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
        hub.reset_stats()
        t, peak = timed(preheat_cmd(repo, d / "store"), env)
        seconds, sent = transfer_window(hub, repo)
        window.append(sent / seconds if seconds else 0.0)
        e2e.append(total / t)
        rss.append(peak)
        shutil.rmtree(d, ignore_errors=True)
    return {
        "bytes": total,
        "aggregate_cap_bytes_per_sec": aggregate,
        "transfer_bytes_per_sec": statistics.median(window),
        "end_to_end_bytes_per_sec": statistics.median(e2e),
        "share_of_cap_transfer": statistics.median(window) / aggregate,
        "share_of_cap_end_to_end": statistics.median(e2e) / aggregate,
        "preheat_peak_rss_mib": max(rss) / MiB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one-file", default="2Gi", help="size of the one-file model")
    parser.add_argument("--many-files", default="2Gi", help="size of the 8-file model")
    parser.add_argument("--cap", type=int, default=48_000_000, help="bytes/s per connection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "cap_bytes_per_sec": args.cap,
        "connections": CONNECTIONS,
    }
    with (
        HubServer(per_connection_bytes_per_sec=args.cap) as hub,
        tempfile.TemporaryDirectory(dir=cache) as work,
    ):
        size = int(parse_quantity(args.one_file, "one-file size"))
        results["one_file"] = one_file(hub, cache, size, args.rounds, Path(work))
        print(json.dumps({"one_file": results["one_file"]}, indent=2), flush=True)
        size = int(parse_quantity(args.many_files, "many-files size"))
        results["many_files"] = many_files(hub, cache, size, args.rounds, Path(work), args.cap)
        print(json.dumps({"many_files": results["many_files"]}, indent=2), flush=True)
    one, many = results["one_file"], results["many_files"]
    print(
        f"one file, {one['bytes'] / MiB:.0f} MiB at {args.cap / 1e6:.0f} MB/s per connection: "
        f"preheat {one['seconds']['preheat']:.1f} s, one connection "
        f"{one['seconds']['one_connection']:.1f} s: {one['speedup_vs_one_connection']:.1f}x "
        f"(target >= 3x); peak RSS {one['preheat_peak_rss_mib']:.0f} MiB\n"
        f"8 files, {many['bytes'] / MiB:.0f} MiB: {many['transfer_bytes_per_sec'] / 1e6:.0f} MB/s "
        f"over the transfer, {many['end_to_end_bytes_per_sec'] / 1e6:.0f} MB/s end to end, of "
        f"{many['aggregate_cap_bytes_per_sec'] / 1e6:.0f} MB/s ({CONNECTIONS} connections): "
        f"{100 * many['share_of_cap_transfer']:.0f} % / {100 * many['share_of_cap_end_to_end']:.0f} % "
        f"(target >= 90 %); peak RSS {many['preheat_peak_rss_mib']:.0f} MiB"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
