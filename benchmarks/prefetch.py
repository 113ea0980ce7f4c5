"""Prefetch speed and memory, as ratios against baselines measured in the same run.

A loopback hub serves a generated Llama-shaped bf16 model (8 files). Contenders:

- preheat: `preheat prefetch hf-model REPO --wait` into a fresh local store (start-up included);
- snapshot+copy: `huggingface_hub.snapshot_download(local_dir=..., max_workers=8)`, then a copy into a
  store directory (the usual script);
- floor: a standalone program doing only what a verified prefetch must: 8 threads, each
  GETting a file with `readinto` a reused buffer, hashing it with sha256, writing it and
  fsyncing it (no retries, no resume, no store, no records).

Each contender runs as its own process, in alternation (each round in another order, after
one untimed pass that puts the hub's files in the page cache, with a `sync` before every
run so none pays for the previous one's writeback); peak RSS is its maximum resident
set (summed over its process tree, sampled every 0.1 s, and at least the kernel's peak of its
largest process); CPU seconds are the process
tree's user + system time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from preheat_testing.hub import HubServer, file_sha256
from preheat_testing.models import make_big_model

GiB = 1 << 30


def compiled_bytecode() -> None:
    """Run every contender with compiled bytecode, as an installed CLI does (pip compiles it).

    Where the environment sets PYTHONDONTWRITEBYTECODE, an editable install would
    otherwise compile preheat's modules on every start (about 0.1-0.2 s); they are
    compiled here once, and the contenders may read and write bytecode.
    """
    import compileall
    import importlib.util

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("preheat", "preheat_tp", "preheat_vllm", "preheat_sglang", "preheat_storage"):
        spec = importlib.util.find_spec(name)
        for where in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(where, quiet=1)


compiled_bytecode()
REPO = "bench/Llama-Big"

SNAPSHOT_COPY = """
import shutil, sys
from huggingface_hub import snapshot_download
src = snapshot_download(sys.argv[1], local_dir=sys.argv[2], max_workers=8, endpoint=sys.argv[4])
shutil.copytree(src, sys.argv[3], ignore=shutil.ignore_patterns(".cache"))
"""

FLOOR = """
import hashlib, json, os, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
endpoint, repo, dest, files = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def get(path):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    digest = hashlib.sha256()
    with urllib.request.urlopen(f"{endpoint}/{repo}/resolve/main/{path}") as r, open(f"{dest}/{path}", "wb") as f:
        while n := r.readinto(buf):
            digest.update(view[:n])
            f.write(view[:n])
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(get, files))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# sampling a process tree with psutil scans every process on the machine: every 10 ms
# it took 19 % of a core here, which the contenders (on 2 vCPUs) then lacked
SAMPLE_EVERY = 0.1


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds of one command and the peak RSS of its process tree (see `measured`)."""
    elapsed, peak, _ = measured(cmd, env)
    return elapsed, peak


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS and CPU seconds (user + system of every process it waited for).

    The peak is the larger of the summed RSS of the process tree, sampled every
    `SAMPLE_EVERY` seconds, and the kernel's exact peak of the largest single process.
    """
    cpu0 = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    exited = os.pidfd_open(proc.pid)  # readable once the process exits: no sleep overshoots it
    peak = 0
    try:
        while not select.select([exited], [], [], SAMPLE_EVERY)[0]:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
    finally:
        os.close(exited)
    elapsed = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(peak, usage.ru_maxrss * 1024)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, peak, _children_cpu() - cpu0


def model_dir(cache: Path, size: int) -> tuple[Path, dict[str, str]]:
    """A cached generated model of `size` bytes and its LFS sha256s."""
    path = cache / f"llama-{size // GiB}g"
    digests = path / "sha256.json"
    if not digests.exists():
        shutil.rmtree(path, ignore_errors=True)
        make_big_model(path, size, 8)
        sums = {p.name: file_sha256(p) for p in path.iterdir() if p.suffix == ".safetensors"}
        digests.write_text(json.dumps(sums))
    return path, json.loads(digests.read_text())


def bench_size(hub: HubServer, cache: Path, size: int, reps: int, work: Path) -> dict:
    src, sums = model_dir(cache, size)
    repo = f"{REPO}-{size // GiB}g"
    files = {p.name: p for p in src.iterdir() if p.name != "sha256.json"}
    hub.add_repo(repo, files, sha256=sums)
    env = dict(
        os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1"
    )
    times: dict[str, list[float]] = {"preheat": [], "snapshot_copy": [], "floor": []}
    rss: dict[str, list[int]] = {k: [] for k in times}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    names = list(times)
    # an untimed pass first: the hub's source files are then in the page cache for everyone
    for rep in range(-1, reps):
        # each round in another order, so no contender always follows the same one
        for name in (
            names[rep % len(names) :] + names[: rep % len(names)] if rep >= 0 else ["floor"]
        ):
            d = work / f"{name}-{rep}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            run_env = dict(env, PREHEAT_HOME=str(d / "home"), HF_HOME=str(d / "hf"))
            if name == "preheat":
                cmd = [
                    sys.executable,
                    "-m",
                    "preheat.cli.main",
                    "prefetch",
                    "hf-model",
                    repo,
                    "--wait",
                    "--quiet",
                    "--store",
                    str(d / "store"),
                ]
            elif name == "snapshot_copy":
                cmd = [
                    sys.executable,
                    "-c",
                    SNAPSHOT_COPY,
                    repo,
                    str(d / "dl"),
                    str(d / "store"),
                    hub.endpoint,
                ]
            else:
                cmd = [
                    sys.executable,
                    "-c",
                    FLOOR,
                    hub.endpoint,
                    repo,
                    str(d),
                    json.dumps(sorted(files)),
                ]
            os.sync()  # no contender pays for the previous one's writeback
            t, peak, used = measured(cmd, run_env)
            shutil.rmtree(d, ignore_errors=True)
            if rep < 0:
                continue
            times[name].append(t)
            rss[name].append(peak)
            cpu[name].append(used)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(p.stat().st_size for p in files.values())
    return {
        "bytes": total,
        "seconds": med,
        "all_seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "cpu_seconds_per_gib": {k: statistics.median(v) / (total / GiB) for k, v in cpu.items()},
        "peak_rss_mib": {k: max(v) / (1 << 20) for k, v in rss.items()},
        "speedup_vs_snapshot_copy": med["snapshot_copy"] / med["preheat"],
        "ratio_to_floor": med["preheat"] / med["floor"],
    }


def help_startup(reps: int = 5) -> dict:
    """`preheat --help` against a bare interpreter start."""

    def best(cmd: list[str]) -> float:
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            out.append(time.perf_counter() - t0)
        return min(out)

    bare = best([sys.executable, "-c", "pass"])
    helped = best([sys.executable, "-m", "preheat.cli.main", "--help"])
    return {"help_seconds": helped, "python_seconds": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,4", help="model sizes in GiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "startup": help_startup(),
    }
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=cache) as work:
        for gib in (int(s) for s in args.sizes.split(",")):
            results[f"{gib}GiB"] = bench_size(hub, cache, gib * GiB, args.reps, Path(work))
            print(json.dumps({f"{gib}GiB": results[f"{gib}GiB"]}, indent=2), flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
