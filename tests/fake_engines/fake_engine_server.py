"""A tiny stand-in for an engine's OpenAI-compatible server, for tests that need no engine.

Started as `python -m vllm.entrypoints.openai.api_server ...` or `python -m
sglang.launch_server ...` with this folder on PYTHONPATH (the fake `vllm` and `sglang`
packages here call `main`). It answers `/health`, `/v1/models`, `/v1/completions` (greedy
"tokens" computed from the prompt, streamed token by token with `"stream": true`) and an
unguarded `/tokenize`, checks `VLLM_API_KEY` on `/v1` routes as vLLM does, and is steered
by environment variables:

- FAKE_ENGINE_START_DELAY: seconds before it listens (default 0.2)
- FAKE_ENGINE_DIE: exit with this code during start-up, after a few log lines
- FAKE_ENGINE_RECORD: append one JSON line per start (pid, argv, selected env) to this file
- FAKE_ENGINE_CHILD: start a child process that sleeps (it must be stopped too)
- FAKE_ENGINE_IGNORE_TERM: ignore SIGTERM (preheat must SIGKILL it)
- FAKE_ENGINE_TOKEN_DELAY: seconds between streamed tokens (default 0.05)
- FAKE_ENGINE_PRINT_KEY: print the API key in the log (preheat must redact it)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def tokens(prompt, n: int) -> list[int]:
    seed = int(hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:8], 16)
    return [(seed * (i + 7) + 13 * i) % 500 for i in range(n)]


def main(engine: str) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--model-path")
    ap.add_argument("--served-model-name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args, rest = ap.parse_known_args()
    served = args.served_model_name or args.model or args.model_path
    key = os.environ.get("VLLM_API_KEY") if engine == "vllm" else None
    print(f"fake {engine} starting: {' '.join(sys.argv[1:])}", flush=True)
    record = os.environ.get("FAKE_ENGINE_RECORD")
    if record:
        with open(record, "a") as f:
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "pgid": os.getpgid(0),
                        "engine": engine,
                        "argv": sys.argv[1:],
                        "key": hashlib.sha256(key.encode()).hexdigest() if key else None,
                        "env": {
                            k: os.environ.get(k)
                            for k in (
                                "VLLM_CPU_OMP_THREADS_BIND",
                                "AWS_ENDPOINT_URL",
                                "AWS_REGION",
                                "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING",
                                "FAKE_CALLER_VAR",
                            )
                        },
                    }
                )
                + "\n"
            )
    if os.environ.get("FAKE_ENGINE_PRINT_KEY") and key:
        print(f"debug: api key is {key}", flush=True)
    if os.environ.get("FAKE_ENGINE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAKE_ENGINE_CHILD"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if record:
            with open(record, "a") as f:
                f.write(json.dumps({"child": child.pid}) + "\n")
    die = os.environ.get("FAKE_ENGINE_DIE")
    time.sleep(float(os.environ.get("FAKE_ENGINE_START_DELAY", "0.2")))
    if die:
        print("loading model weights", flush=True)
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(int(die))
    print("Loading weights took 0.01 seconds", flush=True)
    delay = float(os.environ.get("FAKE_ENGINE_TOKEN_DELAY", "0.05"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # quiet
            pass

        def _json(self, status: int, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if key is None or not self.path.startswith("/v1"):
                return True
            return self.headers.get("Authorization", "") == f"Bearer {key}"

        def do_GET(self):
            if self.path == "/health":
                return self._json(200, {})
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            if self.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": served}]})
            if self.path == "/metrics":
                body = b"# TYPE fake_engine_up gauge\nfake_engine_up 1\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self.wfile.write(body)
            return self._json(404, {"error": "not found"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            if self.path == "/tokenize":
                return self._json(200, {"tokens": tokens(body.get("prompt"), 3)})
            if self.path != "/v1/completions":
                return self._json(404, {"error": "not found"})
            ids = tokens(body.get("prompt"), int(body.get("max_tokens", 8)))
            if not body.get("stream"):
                return self._json(
                    200,
                    {
                        "model": served,
                        "choices": [{"text": "", "token_ids": ids, "index": 0}],
                        "pid": os.getpid(),
                    },
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for token in ids:
                event = json.dumps({"choices": [{"token_ids": [token], "index": 0}]})
                chunk = f"data: {event}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(delay)
            done = b"data: [DONE]\n\n"
            self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake {engine} listening on {args.host}:{args.port} as {served}", flush=True)

    def stop(signum, frame):
        print("fake engine: shutting down", flush=True)
        raise SystemExit(0)

    if not os.environ.get("FAKE_ENGINE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
