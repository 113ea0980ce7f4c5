"""CPU pre-sharding speed and memory, against a floor program and `cp -r`, in the same run.

A generated Llama-shaped bf16 checkpoint is prefetched once from a loopback hub into a
local store. Then, for each engine plugin installed (vllm, sglang), every round runs each
contender as its own process, one after the other (each round in another order, with a
`sync` before every run so none pays for the previous one's writeback):

- preheat: `preheat prefetch hf-model REPO --shard-config tp4.yaml --wait` (start-up
  included), the sharded version removed afterwards;
- floor: the least work a verified shard needs, as a standalone script (`FLOOR`): read
  every byte of the stored artifact once, write as many bytes as preheat's sharded
  artifact holds (its files' sizes, one thread per file, at most tp at once), sha256 each
  output file and fsync it (what preheat's store does unless `PREHEAT_FSYNC=0`, which
  `--no-fsync` sets, dropping the floor's fsync too), in 1 MiB blocks (the fastest size
  here, as for preheat);
- cp -r: a copy of the stored unsharded artifact (kernel copy, no hash, no fsync);
- start-up: the same preheat command once the sharded version exists (nothing to do:
  process start-up, the detached worker, resolving and reusing), to show the fixed cost.

A first, untimed preheat run warms the page cache and tells the floor the output sizes.
Reported per engine: medians over the rounds, the ratios preheat / floor and
preheat / cp -r, the peak RSS of each contender's process tree, and the hub bytes served
during the shard commands (must be 0: nothing is fetched again).
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

FLOOR = r"""
import hashlib, json, os, sys
from concurrent.futures import ThreadPoolExecutor

sources, outputs, dest = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
threads, fsync = int(sys.argv[4]), sys.argv[5] == "1"
BLOCK = 1 << 20  # in cache when written and hashed: 4 MiB blocks took 1.5x as long here
sizes = [os.path.getsize(p) for p in sources]
total = sum(sizes)

def pieces(lo, hi):
    # (path, offset, length) of bytes [lo, hi) of the sources laid end to end
    at = 0
    for path, size in zip(sources, sizes):
        a, b = max(lo, at), min(hi, at + size)
        if a < b:
            yield path, a - at, b - a
        at += size

starts = [0]
for size in outputs:
    starts.append(starts[-1] + size)

def one(k):
    # output k: source bytes [starts[k], starts[k+1]) of the sources; the last output also
    # reads what the outputs leave over, and bytes past the sources' end are zeros
    lo, hi = starts[k], starts[k + 1]
    read_hi = total if k == len(outputs) - 1 else min(hi, total)
    buf = memoryview(bytearray(BLOCK))
    digest = hashlib.sha256()
    left = hi - lo
    with open(os.path.join(dest, f"out-{k}"), "wb", buffering=0) as out:
        for path, offset, length in pieces(lo, read_hi):
            fd = os.open(path, os.O_RDONLY)
            try:
                while length:
                    n = os.preadv(fd, [buf[: min(length, BLOCK)]], offset)
                    view = buf[: min(n, left)]
                    if len(view):
                        out.write(view)
                        digest.update(view)
                    left -= len(view)
                    offset += n
                    length -= n
            finally:
                os.close(fd)
        buf[:] = bytes(BLOCK)
        while left:
            view = buf[: min(left, BLOCK)]
            out.write(view)
            digest.update(view)
            left -= len(view)
        if fsync:
            os.fsync(out.fileno())
    return digest.hexdigest()

with ThreadPoolExecutor(threads) as pool:
    digests = list(pool.map(one, range(len(outputs))))
print(json.dumps(digests))
"""


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


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=float, default=4, help="model size in GiB (e.g. 1 or 0.5)")
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument(
        "--reps", "--rounds", dest="reps", type=int, default=3, help="rounds (at least 3)"
    )
    parser.add_argument("--engines", default="vllm,sglang")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="PREHEAT_FSYNC=0 for preheat, and no fsync in the floor",
    )
    parser.add_argument(
        "--cache", default=os.environ.get("PREHEAT_BENCH_CACHE", "/tmp/preheat-bench")
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    src, sums = model_dir(cache, int(args.size * GiB))
    files = {p.name: p for p in src.iterdir() if p.name != "sha256.json"}
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "bytes": sum(p.stat().st_size for p in files.values()),
        "fsync": not args.no_fsync,
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
        if args.no_fsync:
            env["PREHEAT_FSYNC"] = "0"
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
        artifact = Path(json.loads(out)["artifact"]["path"])
        sources = [str(p) for p in files_under(artifact)]
        for engine in args.engines.split(","):
            key = "tensor_parallel_size" if engine == "vllm" else "tp"
            config = work / f"{engine}.yaml"
            config.write_text(f"engine: {engine}\nargs:\n  {key}: {args.tp}\n")
            shard_cmd = [*base, "--shard-config", str(config)]
            # warm-up (untimed): page cache, and the sizes of the files the floor must write
            out = subprocess.run(
                [*shard_cmd, "--json"], env=env, check=True, capture_output=True, text=True
            ).stdout
            outputs = [
                p.stat().st_size for p in files_under(Path(json.loads(out)["artifact"]["path"]))
            ]
            remove_sharded(env, store)
            floor_cmd = [
                sys.executable,
                "-c",
                FLOOR,
                json.dumps(sources),
                json.dumps(outputs),
                str(work / "floor"),
                str(args.tp),
                "0" if args.no_fsync else "1",
            ]
            times: dict[str, list[float]] = {"preheat": [], "floor": [], "cp_r": [], "startup": []}
            peaks: dict[str, list[int]] = {k: [] for k in times}
            served = []
            names = ["preheat", "floor", "cp_r"]
            for rep in range(max(3, args.reps)):
                # each round in another order, so no contender always follows the same one
                for name in names[rep % 3 :] + names[: rep % 3]:
                    dest = work / ("floor" if name == "floor" else "copy")
                    shutil.rmtree(dest, ignore_errors=True)
                    if name == "floor":
                        dest.mkdir()
                    hub.reset_stats()
                    os.sync()  # no contender pays for the previous one's writeback
                    if name == "preheat":
                        t, peak = timed(shard_cmd, env)
                        served.append(hub.bytes_served("*.safetensors"))
                        ts, ps = timed(shard_cmd, env)  # reused: the fixed cost alone
                        times["startup"].append(ts)
                        peaks["startup"].append(ps)
                        remove_sharded(env, store)
                    elif name == "floor":
                        t, peak = timed(floor_cmd, env)
                    else:
                        t, peak = timed(["cp", "-r", str(artifact), str(dest)], env)
                    shutil.rmtree(dest, ignore_errors=True)
                    times[name].append(t)
                    peaks[name].append(peak)
            med = {k: statistics.median(v) for k, v in times.items()}
            results[engine] = {
                "tp": args.tp,
                "rounds": len(times["preheat"]),
                "output_bytes": sum(outputs),
                "seconds": med,
                "all_seconds": times,
                "ratio_to_floor": med["preheat"] / med["floor"],
                "ratio_to_cp_r": med["preheat"] / med["cp_r"],
                "ratio_to_floor_without_startup": (med["preheat"] - med["startup"]) / med["floor"],
                "peak_rss_mib": {k: max(v) / (1 << 20) for k, v in peaks.items()},
                "hub_weight_bytes_during_shard": max(served),
            }
            print(json.dumps({engine: results[engine]}, indent=2), flush=True)
            r = results[engine]
            print(
                f"{engine} tp={args.tp}: preheat {med['preheat']:.2f} s, floor {med['floor']:.2f} s,"
                f" cp -r {med['cp_r']:.2f} s, start-up {med['startup']:.2f} s;"
                f" preheat/floor {r['ratio_to_floor']:.2f}x, preheat/cp -r {r['ratio_to_cp_r']:.2f}x;"
                f" peak RSS preheat {r['peak_rss_mib']['preheat']:.0f} MiB,"
                f" floor {r['peak_rss_mib']['floor']:.0f} MiB",
                flush=True,
            )
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
