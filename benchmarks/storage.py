"""Object-store speed and memory, as ratios against baselines measured in the same run.

A loopback hub serves a generated Llama-shaped bf16 model (about 1 GiB in 8 weight
files); a SeaweedFS S3 server on loopback is the store. Each contender runs as its own
process; peak RSS is the maximum of its process tree's summed resident set (sampled every
10 ms) and disk writes are its tree's `write_bytes` I/O counter (bytes sent to storage).

- prefetch: `preheat prefetch hf-model REPO --store s3://... --wait --quiet` against the
  usual script: `huggingface_hub.snapshot_download(local_dir=..., max_workers=8)`, then
  `obstore.put` of every file into the bucket (one `S3Store`, one file after another).
  preheat must stream hub -> S3 without touching local disk.
- resolve: `preheat resolve NAME --store s3://... --to DIR` (sha256-verified) against 8
  threads doing `obstore.get` of the same objects into DIR, hashing each with sha256.

Usage: python benchmarks/storage.py [--size-gib 1] [--reps 3] [--resolve-rounds 7]
       [--out results.json]
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

import psutil
from prefetch import GiB, model_dir

from preheat_testing import servers
from preheat_testing.hub import HubServer

REPO = "bench/Llama-S3"
MiB = 1 << 20

S3_STORE = """
import os
from obstore.store import S3Store
def s3_store(bucket):
    return S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ["AWS_REGION"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
"""

SNAPSHOT_UPLOAD = (
    S3_STORE
    + """
import sys
from pathlib import Path
import obstore
from huggingface_hub import snapshot_download
repo, local, endpoint, bucket, prefix = sys.argv[1:6]
root = Path(snapshot_download(repo, local_dir=local, max_workers=8, endpoint=endpoint))
store = s3_store(bucket)
for path in sorted(root.rglob("*")):
    rel = path.relative_to(root).as_posix()
    if path.is_file() and not rel.startswith(".cache/"):
        obstore.put(store, f"{prefix}/{rel}", path)
"""
)

PARALLEL_GETS = (
    S3_STORE
    + """
import hashlib, json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import obstore
bucket, prefix, dest, keys = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
store = s3_store(bucket)
def get(key):
    target = dest / key
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(target, "wb") as f:
        for chunk in obstore.get(store, f"{prefix}/{key}").stream(min_chunk_size=8 << 20):
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(get, keys))
"""
)


def _servers_cpu() -> float:
    """CPU seconds used so far by the SeaweedFS processes (children of this process)."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "weed" in proc.name():
                cpu = proc.cpu_times()
                total += cpu.user + cpu.system
        except psutil.Error:
            pass
    return total


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    """Wall seconds, peak summed RSS, disk write bytes and CPU seconds of one command's process tree.

    `cpu` is the command's own; `server_cpu` what SeaweedFS used meanwhile (the hub runs in
    this process, whose CPU also counts the sampling: `hub_cpu`).
    """
    me = psutil.Process()
    servers_before, mine_before = _servers_cpu(), sum(me.cpu_times()[:2])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    written: dict[int, int] = {}
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = 0
            for p in tree:
                with p.oneshot():
                    rss += p.memory_info().rss
                    written[p.pid] = p.io_counters().write_bytes
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed: {proc.stderr.read().decode()[-2000:]}")
    return {
        "seconds": elapsed,
        "peak_rss": peak,
        "write_bytes": sum(written.values()),
        "cpu": sum(cpu.values()),
        "server_cpu": _servers_cpu() - servers_before,
        "hub_cpu": sum(me.cpu_times()[:2]) - mine_before,
    }


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def delete_prefix(store, prefix: str) -> None:
    import obstore

    paths = [m["path"] for batch in obstore.list(store, prefix) for m in batch]
    for i in range(0, len(paths), 1000):
        obstore.delete(store, paths[i : i + 1000])


def vacuum(server) -> None:
    """Ask SeaweedFS to reclaim deleted objects (its test server holds about 6 GiB)."""
    import urllib.request

    for proc in psutil.Process().children(recursive=True):
        try:
            args = proc.cmdline()
        except psutil.Error:
            continue
        ports = [a.split("=", 1)[1] for a in args if a.startswith("-master.port=")]
        if args and args[0].endswith("weed") and ports:
            url = f"http://127.0.0.1:{ports[0]}/vol/vacuum?garbageThreshold=0.0001"
            try:
                urllib.request.urlopen(url, timeout=120).read()
            except OSError as exc:
                print(f"vacuum failed: {exc}", file=sys.stderr)
            return


def raw_store(server):
    from obstore.store import S3Store

    return S3Store(
        server.bucket,
        endpoint=server.endpoint,
        access_key_id=servers.ACCESS_KEY,
        secret_access_key=servers.SECRET_KEY,
        region=servers.REGION,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def bench(
    hub: HubServer, server, cache: Path, size: int, reps: int, work: Path, resolve_rounds: int
) -> dict:
    src, sums = model_dir(cache, size)
    files = {p.name: p for p in src.iterdir() if p.name != "sha256.json"}
    total = sum(p.stat().st_size for p in files.values())
    hub.add_repo(REPO, files, sha256=sums)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "PREHEAT_", "HF_", "HUGGING"))
    }
    base_env.update(
        server.env, HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1"
    )
    raw = raw_store(server)
    cli = [sys.executable, "-m", "preheat.cli.main"]
    prefetch: dict[str, list[dict]] = {"preheat": [], "script": []}
    local_use: list[dict] = []
    kept = None
    for rep in range(reps):
        order = ["preheat", "script"] if rep % 2 == 0 else ["script", "preheat"]
        for name in order:
            d = work / f"{name}-{rep}"
            shutil.rmtree(d, ignore_errors=True)
            (d / "tmp").mkdir(parents=True)
            env = dict(
                base_env,
                PREHEAT_HOME=str(d / "home"),
                HF_HOME=str(d / "hf"),
                TMPDIR=str(d / "tmp"),
            )
            if name == "preheat":
                url = server.url(f"bench/preheat-{rep}")
                cmd = [*cli, "prefetch", "hf-model", REPO, "--store", url, "--wait", "--quiet"]
            else:
                prefix = f"bench/script-{rep}"
                cmd = [sys.executable, "-c", SNAPSHOT_UPLOAD, REPO, str(d / "dl"), hub.endpoint]
                cmd += [server.bucket, prefix]
            result = measured(cmd, env)
            result["local_bytes"] = du(d)  # PREHEAT_HOME, HF_HOME, TMPDIR and the download
            prefetch[name].append(result)
            if name == "preheat":
                local_use.append(
                    {"write_bytes": result["write_bytes"], "du_home_tmp": result["local_bytes"]}
                )
            shutil.rmtree(d, ignore_errors=True)
        delete_prefix(raw, f"bench/script-{rep}")
        if kept is not None:
            delete_prefix(raw, kept)
        kept = f"bench/preheat-{rep}"
        vacuum(server)

    # resolve the last prefetched artifact
    url = server.url(kept)
    env = dict(base_env, PREHEAT_HOME=str(work / "resolve-home"))
    listing = subprocess.run(
        [*cli, "artifacts", "list", "--store", url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    artifact = json.loads(listing.stdout)["artifacts"][0]
    name, version = artifact["name"], artifact["version"]
    manifest = json.loads(
        subprocess.run(
            [*cli, "artifacts", "get", f"{name}:{version}", "--store", url, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    keys = [f["path"] for f in manifest["files"]]
    prefix = f"{kept}/artifacts/{name}/{version}"
    resolve: dict[str, list[dict]] = {"preheat": [], "gets": []}
    for rep in range(resolve_rounds):
        order = ["preheat", "gets"] if rep % 2 == 0 else ["gets", "preheat"]
        for contender in order:
            dest = work / f"resolve-{contender}-{rep}"
            shutil.rmtree(dest, ignore_errors=True)
            if contender == "preheat":
                cmd = [*cli, "resolve", f"{name}:{version}", "--store", url, "--to", str(dest)]
            else:
                dest.mkdir(parents=True)
                cmd = [sys.executable, "-c", PARALLEL_GETS, server.bucket, prefix, str(dest)]
                cmd.append(json.dumps(keys))
            resolve[contender].append(measured(cmd, env))
            got = du(dest)
            if got != total:
                raise SystemExit(f"{contender} wrote {got} bytes, expected {total}")
            shutil.rmtree(dest, ignore_errors=True)
    delete_prefix(raw, kept)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    mib = float(MiB)
    return {
        "bytes": total,
        "files": len(files),
        "prefetch": {
            "seconds": {k: med(v, "seconds") for k, v in prefetch.items()},
            "peak_rss_mib": {k: max(r["peak_rss"] for r in v) / mib for k, v in prefetch.items()},
            "disk_write_mib": {k: med(v, "write_bytes") / mib for k, v in prefetch.items()},
            "preheat_local_bytes": local_use,
            "cpu_seconds": {k: med(v, "cpu") for k, v in prefetch.items()},
            "server_cpu_seconds": {k: med(v, "server_cpu") for k, v in prefetch.items()},
            "hub_cpu_seconds": {k: med(v, "hub_cpu") for k, v in prefetch.items()},
            "speedup_vs_script": med(prefetch["script"], "seconds")
            / med(prefetch["preheat"], "seconds"),
            "all_seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in prefetch.items()},
        },
        "resolve": {
            "seconds": {k: med(v, "seconds") for k, v in resolve.items()},
            "peak_rss_mib": {k: max(r["peak_rss"] for r in v) / mib for k, v in resolve.items()},
            "cpu_seconds": {k: med(v, "cpu") for k, v in resolve.items()},
            "server_cpu_seconds": {k: med(v, "server_cpu") for k, v in resolve.items()},
            "ratio_to_parallel_gets": med(resolve["preheat"], "seconds")
            / med(resolve["gets"], "seconds"),
            "all_seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in resolve.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=1.0, help="model size in GiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--resolve-rounds", type=int, default=7, help="rounds of the (short) resolve comparison"
    )
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gib * GiB)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with (
        HubServer() as hub,
        servers.seaweedfs_s3() as server,
        tempfile.TemporaryDirectory(dir=cache) as work,
    ):
        results[f"{args.size_gib:g}GiB"] = bench(
            hub, server, cache, size, args.reps, Path(work), args.resolve_rounds
        )
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
