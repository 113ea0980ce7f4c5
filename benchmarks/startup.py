"""Start-up and no-op cost: what scripts and CI pay on every call.

Contenders, each its own process, alternated for `--runs` runs:

- `preheat --help` against a bare `python -c pass`;
- a no-op `preheat prefetch hf-model REPO --wait` (its artifact is already published,
  so it resolves the commit and the listing and fetches no weight byte) against the
  same command into a fresh store (which fetches the whole tiny model), both against
  a loopback hub serving a generated tiny Llama.

Both run with compiled bytecode, as an installed CLI does: when the environment sets
PYTHONDONTWRITEBYTECODE, a private PYTHONPYCACHEPREFIX is used instead and warmed
first. Reported: medians and minimums of wall time, the targets (`--help` < 0.2 s, the
no-op < 0.4 s) and what the no-op asked of the hub. `python -X importtime -m
preheat.cli.main --help` shows where the time goes.

Usage: python benchmarks/startup.py [--runs 9] [--out results.json]
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
import time
from pathlib import Path

from preheat_testing.hub import HubServer
from preheat_testing.models import build_case

REPO = "bench/Tiny-Startup"


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed: {proc.stderr.decode()[-2000:]}")
    return elapsed


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    preheat = str(Path(sys.executable).with_name("preheat"))
    work = Path(tempfile.mkdtemp(prefix="preheat-startup-"))
    env = dict(os.environ, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(work / "hf"))
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        with HubServer() as hub:
            hub.add_repo(REPO, build_case("llama_multipart").files)
            env["HF_ENDPOINT"] = hub.endpoint
            published = dict(env, PREHEAT_HOME=str(work / "published"))
            prefetch = [preheat, "prefetch", "hf-model", REPO, "--wait", "--quiet"]
            run(prefetch, published)  # publishes the artifact (and warms the bytecode)
            run([preheat, "--help"], env)
            times: dict[str, list[float]] = {"python": [], "help": [], "noop": [], "fresh": []}
            for i in range(args.runs):
                times["python"].append(run([sys.executable, "-c", "pass"], env))
                times["help"].append(run([preheat, "--help"], env))
                hub.reset_stats()
                times["noop"].append(run(prefetch, published))
                noop_requests = [f"{r.method} {r.path}" for r in hub.requests]
                noop_bytes = hub.bytes_served("*.safetensors")
                fresh = dict(env, PREHEAT_HOME=str(work / f"fresh-{i}"))
                times["fresh"].append(run(prefetch, fresh))
                shutil.rmtree(work / f"fresh-{i}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "seconds": {k: summary(v) for k, v in times.items()},
        "noop_hub_requests": noop_requests,
        "noop_weight_bytes": noop_bytes,
    }
    s = results["seconds"]
    print(json.dumps(results, indent=2))
    print(
        f"preheat --help: {s['help']['median']:.3f} s (python -c pass: "
        f"{s['python']['median']:.3f} s; target < 0.2 s)\n"
        f"no-op prefetch --wait: {s['noop']['median']:.3f} s (into a fresh store: "
        f"{s['fresh']['median']:.3f} s; target < 0.4 s), {len(noop_requests)} hub requests, "
        f"{noop_bytes} weight bytes"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
