"""Serving with the vLLM CPU build: time to the first token, weight loading, the proxy's cost.

A loopback hub serves a generated Llama-shaped bf16 model (about 1 GiB, 8 weight files,
a real byte-level BPE tokenizer). It is prefetched into a local store twice, as is and
pre-sharded for vLLM at tp=2. Then, each contender a fresh process tree, timed from the
call to the first streamed token of a greedy completion (its /health polled every 0.1 s):

(a) `preheat serve NAME --engine vllm --no-auth` on the prefetched artifact;
(b) the same on the pre-sharded artifact (`VLLM_CPU_OMP_THREADS_BIND=0|1`);
(c) `PY -m vllm.entrypoints.openai.api_server --model REPO` (what `vllm serve REPO` runs)
    against the hub, with an empty Hugging Face cache;

with the weight-loading time each engine logs ("Loading weights took ..."); vLLM is
imported once, untimed, before the first contender, and the order rotates over reps. Then
`preheat serve NAME --engine vllm --scale-to-zero 600` (API key on): the cold start (first
request to first token, the proxy holding the request), and with the engine up, the
proxy's added latency per request: the same requests sent alternately to the proxy and
to the engine's own port (non-streamed, 1 token; streamed, time to the first token), as
median and p99. Ratios are taken within the run. Engine arguments for all:
`--enforce-eager --max-model-len 512`; `VLLM_CPU_KVCACHE_SPACE=1`.

Usage: python benchmarks/serve.py [--size-mib 1024] [--reps 3] [--requests 200]
       [--out results.json]   (PREHEAT_VLLM_PYTHON, else .venvs/vllm/bin/python)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from preheat_testing.hub import HubServer
from preheat_testing.models import make_big_model

ROOT = Path(__file__).resolve().parents[1]
PREHEAT = str(Path(sys.executable).with_name("preheat"))
REPO = "bench/Llama-Serve"
MiB = 1 << 20
ENGINE_ARGS = ["--enforce-eager", "--max-model-len", "512"]
PROMPT = [1, 5, 9, 23, 7, 11, 13, 17]
WEIGHTS_RE = re.compile(r"Loading weights took ([0-9.]+) ?s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def completion(url: str, model: str, key: str | None, *, stream: bool, tokens: int) -> float:
    """Seconds to the first token (streamed) or to the whole answer (not streamed)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=1800) as response:
        if not stream:
            response.read()
            return time.perf_counter() - t0
        first = None
        for raw in response:
            if first is None and raw.startswith(b"data: ") and b"[DONE]" not in raw:
                first = time.perf_counter() - t0
        return first if first is not None else time.perf_counter() - t0


def first_token(url: str, model: str, proc: subprocess.Popen, t0: float) -> float:
    """Seconds from `t0` to the first streamed token, polling /health until it answers."""
    while not healthy(url):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        time.sleep(0.1)
    completion(url, model, None, stream=True, tokens=4)
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def weights_seconds(text: str) -> float | None:
    found = WEIGHTS_RE.findall(text)
    return float(found[-1]) if found else None


def newest_log(home: Path) -> str:
    logs = sorted((home / "serve" / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text(errors="replace") if logs else ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, work: Path, size: int, python: str) -> None:
        self.work = work
        self.python = python
        self.home = work / "preheat-home"
        self.hub = HubServer().__enter__()
        src = work / "model"
        make_big_model(src, size, 8)
        self.hub.add_repo(REPO, {p.name: p for p in src.iterdir()})
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREHEAT_", "HF_"))}
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            base.pop(name, None)
        base.update(
            HF_ENDPOINT=self.hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CACHE_ROOT=str(work / "vllm-cache"),
        )
        self.base = base
        self.env = dict(
            base,
            PREHEAT_HOME=str(self.home),
            PREHEAT_VLLM_PYTHON=python,
            PREHEAT_CONFIG=str(work / "config.toml"),
            HF_HOME=str(work / "hf-prefetch"),
        )
        (work / "tp2.yaml").write_text(
            json.dumps({"engine": "vllm", "args": {"tensor_parallel_size": 2, "method": "cpu"}})
        )
        self.plain = self.prefetch()
        self.sharded = self.prefetch("--shard-config", str(work / "tp2.yaml"))

    def close(self) -> None:
        self.hub.__exit__(None, None, None)

    def prefetch(self, *extra: str) -> str:
        done = subprocess.run(
            [PREHEAT, "prefetch", "hf-model", REPO, "--wait", "--json", "--quiet", *extra],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        out = json.loads(done.stdout)
        return f"{out['artifact']['name']}:{out['artifact']['version']}"

    def preheat_serve(self, ref: str, tp: int) -> dict:
        port = free_port()
        env = dict(self.env)
        if tp > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % os.cpu_count()) for i in range(tp))
        cmd = [PREHEAT, "serve", ref, "--engine", "vllm", "--no-auth", "--quiet",
               "--port", str(port), "--model-id", "bench", "--", *ENGINE_ARGS]  # fmt: skip
        t0 = time.perf_counter()
        with open(self.work / f"preheat-serve-{port}.log", "w") as err:
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
            try:
                seconds = first_token(f"http://127.0.0.1:{port}", "bench", proc, t0)
            finally:
                stop(proc)
        return {"first_token_s": seconds, "weights_s": weights_seconds(newest_log(self.home))}

    def warm_up(self) -> None:
        """One untimed import of vLLM, so the first contender does not pay for a cold page cache."""
        subprocess.run([self.python, "-c", "import vllm.entrypoints.openai.api_server"],
                       env=self.base, capture_output=True)  # fmt: skip

    def vllm_serve_repo(self) -> dict:
        port = free_port()
        hf_home = Path(tempfile.mkdtemp(prefix="hf-empty-", dir=self.work))
        env = dict(self.base, HF_HOME=str(hf_home))
        log = self.work / f"vllm-direct-{port}.log"
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", REPO,
               "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
               *ENGINE_ARGS]  # fmt: skip
        t0 = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                seconds = first_token(f"http://127.0.0.1:{port}", "bench", proc, t0)
            finally:
                stop(proc, signal.SIGTERM)
        shutil.rmtree(hf_home, ignore_errors=True)
        return {"first_token_s": seconds, "weights_s": weights_seconds(log.read_text())}

    def scale_to_zero(self, requests: int) -> dict:
        port = free_port()
        cmd = [PREHEAT, "serve", self.plain, "--engine", "vllm", "--scale-to-zero", "600",
               "--port", str(port), "--model-id", "bench", "--json", "--quiet",
               "--", *ENGINE_ARGS]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            lines = []
            while not lines or lines[-1].rstrip() != "}":
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"preheat serve exited: {proc.stderr.read()[-2000:]}")
                lines.append(line)
            info = json.loads("".join(lines))
            url, engine, key = info["url"], info["engine_url"], info["api_key"]
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            t0 = time.perf_counter()
            cold = completion(url, "bench", key, stream=True, tokens=4)
            cold_total = time.perf_counter() - t0
            for _ in range(5):  # warm both paths
                completion(url, "bench", key, stream=False, tokens=1)
                completion(engine, "bench", key, stream=False, tokens=1)
            rows: dict[str, list[float]] = {
                "proxy": [], "direct": [], "proxy_stream": [], "direct_stream": []
            }  # fmt: skip
            for i in range(requests):
                order = [(url, "proxy"), (engine, "direct")]
                for target, name in order if i % 2 == 0 else order[::-1]:
                    rows[name].append(completion(target, "bench", key, stream=False, tokens=1))
                    rows[name + "_stream"].append(
                        completion(target, "bench", key, stream=True, tokens=4)
                    )
        finally:
            stop(proc)
        out = {"cold_start_first_token_s": cold, "cold_start_total_s": cold_total}
        for name, values in rows.items():
            out[name] = {
                "median_ms": statistics.median(values) * 1000,
                "p99_ms": percentile(values, 0.99) * 1000,
            }
        for kind in ("", "_stream"):
            p, d = out["proxy" + kind], out["direct" + kind]
            out["added" + kind] = {
                "median_ms": p["median_ms"] - d["median_ms"],
                "p99_ms": p["p99_ms"] - d["p99_ms"],
            }
        return out


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    python = os.environ.get("PREHEAT_VLLM_PYTHON") or str(
        ROOT / ".venvs" / "vllm" / "bin" / "python"
    )
    if not Path(python).exists():
        sys.exit(f"no vLLM interpreter at {python}: set PREHEAT_VLLM_PYTHON")
    work = Path(tempfile.mkdtemp(prefix="preheat-bench-serve-"))
    bench = Bench(work, a.size_mib * MiB, python)
    try:
        runs: dict[str, list[dict]] = {"preheat": [], "preheat_tp2": [], "vllm_repo": []}
        contenders = {
            "preheat": lambda: bench.preheat_serve(bench.plain, 1),
            "preheat_tp2": lambda: bench.preheat_serve(bench.sharded, 2),
            "vllm_repo": bench.vllm_serve_repo,
        }
        bench.warm_up()
        names = list(contenders)
        for rep in range(a.reps):
            for name in names[rep % 3 :] + names[: rep % 3]:  # each goes first once in 3 reps
                runs[name].append(contenders[name]())
            print(
                f"rep {rep + 1}: " + json.dumps({k: v[-1] for k, v in runs.items()}),
                file=sys.stderr,
            )
        proxy = bench.scale_to_zero(a.requests)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    a_s = median_of(runs["preheat"], "first_token_s")
    b_s = median_of(runs["preheat_tp2"], "first_token_s")
    c_s = median_of(runs["vllm_repo"], "first_token_s")
    result = {
        "size_mib": a.size_mib,
        "reps": a.reps,
        "first_token_s": {"preheat": a_s, "preheat_tp2": b_s, "vllm_repo_empty_cache": c_s},
        "weights_s": {k: median_of(v, "weights_s") for k, v in runs.items()},
        "ratios": {
            "vllm_repo / preheat": c_s / a_s,
            "vllm_repo / preheat_tp2": c_s / b_s,
            "cold_start / preheat": proxy["cold_start_first_token_s"] / a_s,
        },
        "scale_to_zero": proxy,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
