"""Helpers of the serving tests: published fake artifacts, a fake engine, HTTP on loopback.

The fake engine (tests/fake_engines) is a stdlib HTTP server started exactly as the real
engines are (`PY -m vllm.entrypoints.openai.api_server ...`, `PY -m sglang.launch_server
...`) with that folder on PYTHONPATH, so the vLLM and SGLang app environments run
unchanged in front of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import attrs

from preheat.api import EngineCommand, EngineOptions, Location, Manifest
from preheat.app import AppEnvironment

FAKE_ENGINES = Path(__file__).resolve().parent / "fake_engines"


def fake_engine_env(monkeypatch, record: Path | None = None, **extra: str) -> None:
    """Make `python -m vllm...` / `python -m sglang...` start the fake engine."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_ENGINES), path])))
    for name in ("PREHEAT_VLLM_PYTHON", "PREHEAT_SGLANG_PYTHON", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    if record is not None:
        monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


def publish(
    store_url: str,
    name: str = "tiny",
    *,
    files: dict[str, bytes] | None = None,
    shard: dict | None = None,
    serving: dict | None = None,
    version: str | None = None,
) -> Manifest:
    """Publish a small artifact (files, manifest, `latest`) straight into a store."""
    from preheat.catalog import Catalog, now_iso
    from preheat.config import open_store
    from preheat.models import FileEntry, ServingFacts, ShardSpec, Source

    files = files or {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(),
        "model.safetensors": b"\0" * 1024,
    }
    catalog = Catalog(open_store(store_url))
    digest = hashlib.sha256(json.dumps([name, sorted(files), shard], default=str).encode())
    version = version or digest.hexdigest()[:12]
    prefix = catalog.artifact_prefix(name, version)
    entries = []
    for path, data in sorted(files.items()):
        catalog.store.put(prefix + path, data)
        entries.append(FileEntry(path, len(data), hashlib.sha256(data).hexdigest()))
    spec = None
    if shard is not None:
        spec = ShardSpec(
            engine=shard.get("engine", "vllm"),
            tensor_parallel_size=shard.get("tp", 2),
            dtype=shard.get("dtype", "auto"),
            method="cpu",
            file_pattern=shard.get("file_pattern", "model-rank-{rank}-part-{part}.safetensors"),
            args=shard.get("args", {}),
        )
    manifest = Manifest(
        name=name,
        version=version,
        created=now_iso(),
        source=Source("hf", f"org/{name}", "main", "0" * 40),
        files=tuple(entries),
        serving=ServingFacts(**(serving or {})),
        shard=spec,
    )
    catalog.publish_manifest(manifest)
    catalog.set_alias(name, "latest", version)
    return manifest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@attrs.frozen
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    *,
    data: Any = None,
    key: str | None = None,
    timeout: float = 120,
) -> Reply:
    """One HTTP request; the answer whatever its status."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))


def completion(url: str, key: str | None, prompt: Any, n: int = 8, model: str = "tiny") -> Reply:
    return http(
        "POST",
        url + "/v1/completions",
        data={"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0},
        key=key,
    )


def streamed(url: str, key: str | None, prompt: Any, n: int = 8, model: str = "tiny"):
    """(token ids, arrival time of each event) of a streamed completion."""
    data = {"model": model, "prompt": prompt, "max_tokens": n, "stream": True, "temperature": 0}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(data).encode(), method="POST", headers=headers
    )
    ids, times = [], []
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            ids.extend(event["choices"][0].get("token_ids") or [])
            times.append(time.monotonic())
    return ids, times


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout: float = 20) -> list[int]:
    """The pids still alive after `timeout` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@attrs.define
class FakeApp(AppEnvironment):
    """An engine known to no plugin: core alone must serve it (engine-neutral)."""

    engine: ClassVar[str] = "fake"
    module: ClassVar[str] = "json"
    python_env: ClassVar[str] = "PREHEAT_FAKE_PYTHON"
    install_hint: ClassVar[str] = "pip install fake-engine"
    api_key_env: ClassVar[str | None] = "VLLM_API_KEY"
    tp_flags: ClassVar[tuple[str, ...]] = ("--tp",)
    managed_flags: ClassVar[dict[str, str]] = {"--port": "set port="}

    def engine_command(
        self, manifest: Manifest, location: Location, options: EngineOptions
    ) -> EngineCommand:
        model = location.path or location.uri
        argv = (
            options.python,
            str(FAKE_ENGINES / "run_fake.py"),
            "--model",
            model,
            "--served-model-name",
            options.served_model_name,
            "--host",
            options.host,
            "--port",
            str(options.port),
            *options.extra_args,
        )
        return EngineCommand(argv=argv, env={"FAKE_PLAN_VAR": "1"}, model=model)
