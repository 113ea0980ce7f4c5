"""Ray executor scaling: a multi-file and a one-file prefetch through one node, then two.

A loopback hub serves a repository of `--files` random files of `--file-mib` MiB, each
connection capped at `--cap-mib` MiB/s (a CDN's per-connection cap: what limits one
node's transfer slot, while hashing and writing stay far below one core). A real Ray
cluster on loopback runs the runs: a head node, pinned to core 0 (`taskset -c 0 ray
start --head --num-cpus 1`), then the same cluster with a worker node pinned to core 1.
Every node streams over one connection per task (`PREHEAT_CONNECTIONS=1`), one task per
CPU. The store is a local directory every node writes to.

Each run is `preheat prefetch hf-model REPO --executor ray --ray-address URL --wait
--json` (after one warm-up run of a one-file repository, which starts the cluster's job
machinery; the measured runs use `--force 1` and `--force 2`, so every byte is fetched). Reported: wall
time of the CLI, the transfer stage (from the fan-out to the last task's end, from the
run's log), the driver's overhead (wall minus transfer: job submission, driver start,
listing, journaling, publish) and the speed-up. Two nodes must be at least 1.7x faster
than one, on the transfer stage and on the whole run.

The one-file repository (`--one-file-mib`, one file) shows a large file split by byte
range across the nodes (`PREHEAT_SPAN_SIZE=16Mi` on the nodes): through one node it is
one task over one connection; through two, two tasks write spans of one ranged upload
into the store, and one more task reads it back to check its sha256.

Usage: python benchmarks/ray.py [--files 32] [--file-mib 16] [--one-file-mib 256]
       [--cap-mib 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from preheat_testing.hub import HubServer
from preheat_testing.raycluster import RayCluster

REPO = "bench/many-files"
ONE_FILE = "bench/one-file"
WARMUP = "bench/warm-up"
MiB = 1 << 20
PREHEAT = str(Path(sys.executable).with_name("preheat"))
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def stamp(line: str) -> float | None:
    m = STAMP.match(line)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log: str) -> dict[str, float]:
    """Seconds of the run's phases, from its log: driver start to fan-out (pin, list,
    headers, preflight), the fan-out to the last task's end, and from there to the end."""
    times = {}
    for line in log.splitlines():
        t = stamp(line)
        if t is None:
            continue
        times.setdefault("first", t)
        times["last"] = t
        if "fanning" in line:
            times.setdefault("fanning", t)
        if "task done" in line:
            times["tasks done"] = t
    if "fanning" not in times or "tasks done" not in times:
        raise RuntimeError(f"no fan-out in the log:\n{log[-2000:]}")
    return {
        "driver_setup_s": times["fanning"] - times["first"],
        "transfer_s": times["tasks done"] - times["fanning"],
        "publish_s": times["last"] - times["tasks done"],
        "logged_s": times["last"] - times["first"],
    }


def prefetch(env: dict, cluster: RayCluster, store: str, force: int, repo: str = REPO) -> dict:
    args = [PREHEAT, "prefetch", "hf-model", repo, "--store", store, "--executor", "ray"]
    args += ["--ray-address", cluster.dashboard_url, "--force", str(force), "--wait", "--json"]
    started = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"prefetch failed:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(proc.stdout)
    log = subprocess.run(
        [PREHEAT, "runs", "logs", out["run"], "--store", store],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    took = phases(log)
    tasks = [line.split("] task done: ", 1)[1] for line in log.splitlines() if "task done" in line]
    return {
        "wall_s": round(wall, 2),
        "transfer_s": round(took["transfer_s"], 2),
        "overhead_s": round(wall - took["transfer_s"], 2),
        # submitting, starting the job and its driver, and the CLI noticing the end
        "submit_and_start_s": round(wall - took["logged_s"], 2),
        "driver_setup_s": round(took["driver_setup_s"], 2),
        "publish_s": round(took["publish_s"], 2),
        "fetched_mib": round(out["bytes_fetched"] / MiB, 1),
        "tasks": tasks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--file-mib", type=int, default=16)
    parser.add_argument("--one-file-mib", type=int, default=256)
    parser.add_argument("--cap-mib", type=float, default=12.0)
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("needs two CPU cores", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="preheat-bench-ray-"))
    try:
        return run(opts, cores, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(opts, cores: list[int], tmp: Path) -> int:
    files = {}
    for i in range(opts.files):
        path = tmp / "repo" / f"shard-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(opts.file_mib * MiB))
        files[path.name] = path
    files["config.json"] = '{"model_type": "none"}'
    cap = int(opts.cap_mib * MiB)
    with HubServer(per_connection_bytes_per_sec=cap) as hub:
        hub.add_repo(REPO, files)
        hub.add_repo(WARMUP, {"config.json": '{"model_type": "none"}'})
        large = tmp / "one-file" / "large.bin"
        large.parent.mkdir(parents=True)
        large.write_bytes(os.urandom(opts.one_file_mib * MiB))
        hub.add_repo(ONE_FILE, {"config.json": '{"model_type": "none"}', "large.bin": large})
        node_env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(tmp / "node-hf"),
            "PREHEAT_HOME": str(tmp / "node-home"),
            "PREHEAT_CONNECTIONS": "1",
            "PREHEAT_SPAN_SIZE": "16Mi",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREHEAT_", "HF_", "RAY_"))}
        env.update(node_env, PREHEAT_HOME=str(tmp / "home"))
        store = str(tmp / "store")
        results = {}
        with RayCluster(env=node_env, cores=cores[:2]) as cluster:
            # the first job of a cluster starts its job machinery: not what is measured
            prefetch(env, cluster, store, force=0, repo=WARMUP)
            results["1 node"] = prefetch(env, cluster, store, force=1)
            results["one file, 1 node"] = prefetch(env, cluster, store, force=1, repo=ONE_FILE)
            cluster.add_node()
            results["2 nodes"] = prefetch(env, cluster, store, force=2)
            results["one file, 2 nodes"] = prefetch(env, cluster, store, force=2, repo=ONE_FILE)
    one, two = results["1 node"], results["2 nodes"]
    one_file = {k: results[f"one file, {k}"] for k in ("1 node", "2 nodes")}
    summary = {
        "files": opts.files,
        "file_mib": opts.file_mib,
        "cap_mib_per_connection": opts.cap_mib,
        "runs": results,
        "speedup_transfer": round(one["transfer_s"] / two["transfer_s"], 2),
        "speedup_wall": round(one["wall_s"] / two["wall_s"], 2),
        "mib_per_s_per_node": round(one["fetched_mib"] / one["transfer_s"], 1),
        "one_file_mib": opts.one_file_mib,
        "one_file_speedup_transfer": round(
            one_file["1 node"]["transfer_s"] / one_file["2 nodes"]["transfer_s"], 2
        ),
        "one_file_speedup_wall": round(
            one_file["1 node"]["wall_s"] / one_file["2 nodes"]["wall_s"], 2
        ),
    }
    print(json.dumps(summary, indent=2))
    if opts.out:
        opts.out.write_text(json.dumps(summary, indent=2) + "\n")
    ok = summary["speedup_transfer"] >= 1.7 and summary["speedup_wall"] >= 1.7
    if not ok:
        print("FAIL: two nodes are not 1.7x faster than one", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
