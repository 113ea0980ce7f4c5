"""The third-party example plugin, examples/preheat-fs, installed for real into a fresh venv.

Core is installed from this checkout as a regular (non-editable) package and the example
from its folder, both with plain `pip install`; then a generated model directory goes
through `preheat prefetch model DIR --source fs --wait`, is checked byte for byte against
its manifest, and the plugin is uninstalled again. One test, because the venv costs most
of its time (and a module fixture would be built once per xdist worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from preheat_testing.cli import CliResult

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "preheat-fs"
BUILTIN = {"hf", "local", "local-executor"}


def safetensors(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    """A safetensors file of F32 tensors, written by hand (the fresh venv has no numpy)."""
    header, offset = {}, 0
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(raw for _, raw in tensors.values())


def floats(n: int, seed: int) -> bytes:
    """`n` finite float32 values, deterministic."""
    return struct.pack(f"<{n}f", *((i * 7 + seed) % 1000 / 1000 for i in range(n)))


def write_model(root: Path) -> dict[str, bytes]:
    """A small Llama-shaped model directory, plus things the fs source must skip or follow."""
    hidden, vocab = 64, 4096  # the embedding alone is 1 MiB; the file spans two 8 MiB reads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "torch_dtype": "float32",
    }
    files = {
        "config.json": json.dumps(config, indent=2).encode(),
        "model.safetensors": safetensors(
            {
                "model.embed_tokens.weight": ([vocab, hidden], floats(vocab * hidden, 1)),
                "lm_head.weight": ([vocab, hidden], floats(vocab * hidden, 2)),
                "model.norm.weight": ([hidden], floats(hidden, 3)),
                "pad.weight": ([9 << 20 >> 2], floats(9 << 20 >> 2, 4)),
            }
        ),
        "README.md": b"---\nlicense: apache-2.0\n---\n# Tiny FS model\n",
        "original/params.json": b'{"dim": 64}\n',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # a symlinked file is followed (a Hugging Face cache snapshot is made of them)
    shared = root.parent / "shared-tokenizer_config.json"
    shared.write_bytes(b'{"model_max_length": 256}\n')
    (root / "tokenizer_config.json").symlink_to(shared)
    files["tokenizer_config.json"] = shared.read_bytes()
    # hidden directories are not part of the model
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "lock").write_bytes(b"")
    return files


class Venv:
    """A fresh virtual environment and a clean environment to run its `preheat` in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "venv"
        self.home = root / "preheat-home"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREHEAT_", "HF_", "HUGGING_FACE_", "PYTEST_"))
            and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        self.env.update(
            PREHEAT_HOME=str(self.home),
            HF_HOME=str(root / "hf-home"),
            HF_HUB_OFFLINE="1",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
        )

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def run(self, *args: str, timeout: float = 600) -> CliResult:
        proc = subprocess.run(
            list(args),
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)

    def pip(self, *args: str) -> CliResult:
        return self.run(self.bin("python"), "-m", "pip", *args).ok()

    def preheat(self, *args: str) -> CliResult:
        result = self.run(self.bin("preheat"), *args, timeout=120)
        result.args = ["preheat", *args]
        return result

    def plugins(self) -> dict[str, dict]:
        listed = self.preheat("plugins", "--json").ok().json["plugins"]
        return {p["name"]: p for p in listed}


# runs in the venv: FsFetcher against a real store writer, where the CLI cannot reach
FETCHER_CHECKS = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from preheat.api import IntegrityError, open_store
    from preheat_fs.plugin import FsFetcher

    model, store_url = sys.argv[1], sys.argv[2]
    path = os.path.join(model, "model.safetensors")
    data = open(path, "rb").read()
    store = open_store(store_url)
    out = {}

    fetcher = FsFetcher(token_key="HF_TOKEN")
    snap = fetcher.snapshot(model, None)
    file = snap.file("model.safetensors")
    out["header"] = fetcher.read_range(snap, "model.safetensors", 0, 8) == data[:8]

    # an interrupted copy resumes after the writer's offset, re-hashing what it kept
    writer = store.open_writer("check/model.safetensors", resume=True)
    writer.write(data[:12345])
    writer.abort()
    writer = store.open_writer("check/model.safetensors", resume=True)
    out["offset"] = writer.offset
    out["resumed"] = fetcher.download(snap, file, writer) == hashlib.sha256(data).hexdigest()
    writer.commit()
    out["stored"] = store.read("check/model.safetensors")[0] == data

    # a file that changes during its copy fails it, and nothing becomes visible
    def touch(n, st=os.stat(path)):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    writer = store.open_writer("check/changed.safetensors")
    try:
        fetcher.download(snap, file, writer, on_bytes=touch)
        out["changed"] = "no error"
    except IntegrityError as exc:
        writer.discard()
        out["changed"] = str(exc)
    out["visible"] = store.head("check/changed.safetensors") is not None
    print(json.dumps(out))
    """
)


def test_the_fs_example_plugin_installs_imports_verifies_and_uninstalls(tmp_path):
    venv = Venv(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True, env=venv.env)
    venv.pip("install", str(ROOT))  # core, non-editable, built by pip (hatchling fetched)
    venv.pip("install", str(EXAMPLE))
    shown = venv.pip("show", "preheat", "preheat-fs").stdout
    assert "Editable project location" not in shown, shown

    # discovered through its entry point, next to the built-in plugins
    infos = venv.plugins()
    assert set(infos) == {*BUILTIN, "fs"}, infos
    fs = infos["fs"]
    assert fs["provides"] == {"fetchers": ["fs"]}, fs
    assert fs["distribution"] == "preheat-fs" and fs["version"] == "0.1.0" and fs["error"] is None
    assert fs["hooks"] == ["preheat_register_fetchers"]

    # a real import of a model directory
    model = tmp_path / "models" / "Tiny-FS-Model"
    model.mkdir(parents=True)
    files = write_model(model)
    summary = venv.preheat("prefetch", "model", str(model), "--source", "fs", "--wait", "--json")
    summary = summary.ok().json
    assert summary["status"] == "succeeded" and summary["reused"] is False, summary
    artifact = summary["artifact"]
    assert artifact["name"] == "tiny-fs-model"
    stored = Path(artifact["path"])
    copied = {
        p.relative_to(stored).as_posix(): p.read_bytes()
        for p in sorted(stored.rglob("*"))
        if p.is_file()
    }
    assert copied == files  # byte-identical; .git and .cache left out; the link followed

    manifest = venv.preheat("artifacts", "get", "tiny-fs-model", "--json").ok().json
    assert manifest["version"] == artifact["version"]
    assert manifest["source"]["type"] == "fs" and manifest["source"]["repo"] == str(model)
    commit = manifest["source"]["commit"]
    assert len(commit) == 40 and artifact["version"].startswith(commit[:8])
    digests = {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]}
    assert digests == {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()}
    assert manifest["serving"]["vocab"] == 4096 and manifest["metadata"]["license"] == "apache-2.0"

    # the same directory is the same version: nothing is copied again
    again = venv.preheat("prefetch", "model", str(model), "--source", "fs", "--wait", "--json")
    assert again.ok().json["reused"] is True
    assert again.json["artifact"]["version"] == artifact["version"]

    # a changed directory is a new version; the old commit no longer matches it
    (model / "README.md").write_bytes(b"---\nlicense: apache-2.0\n---\n# Tiny FS model, v2\n")
    changed = venv.preheat("prefetch", "model", str(model), "--source", "fs", "--wait", "--json")
    changed = changed.ok().json
    assert changed["reused"] is False and changed["artifact"]["version"] != artifact["version"]
    pinned = venv.preheat(
        "prefetch", "model", str(model), "--source", "fs", "--revision", commit[:12], "--wait"
    )
    assert f"no longer at revision '{commit[:12]}'" in pinned.error_line()

    # refused in the submitting process, before any run exists
    runs = len(venv.preheat("runs", "list", "--json").ok().json["runs"])
    for bad, reason in (("models/Tiny-FS-Model", "absolute path"), ("/no/such/dir", "not exist")):
        line = venv.preheat("prefetch", "model", bad, "--source", "fs", "--wait").error_line()
        assert reason in line, line
    assert len(venv.preheat("runs", "list", "--json").ok().json["runs"]) == runs

    # a file name that could escape the artifact directory fails the run, nothing published
    hostile = tmp_path / "models" / "hostile"
    hostile.mkdir()
    (hostile / "config.json").write_bytes(b"{}")
    (hostile / "..\\escape.json").write_bytes(b"{}")
    line = venv.preheat("prefetch", "model", str(hostile), "--source", "fs", "--wait").error_line()
    assert "unsafe file name" in line, line
    listed = venv.preheat("artifacts", "list", "--json").ok().json["artifacts"]
    assert {a["name"] for a in listed} == {"tiny-fs-model"}

    # the fetcher against a store writer: resume, and a file changing during its copy
    scratch = tmp_path / "models" / "scratch"
    shutil.copytree(model, scratch, symlinks=True)
    checks = venv.run(
        venv.bin("python"), "-c", FETCHER_CHECKS, str(scratch), str(tmp_path / "scratch-store")
    )
    checks = checks.ok().json
    assert checks["header"] and checks["offset"] == 12345 and checks["resumed"], checks
    assert checks["stored"], checks
    assert "changed while it was copied" in checks["changed"], checks
    assert checks["visible"] is False

    # uninstalled: the CLI and the store still work, and the source is gone
    venv.pip("uninstall", "-y", "preheat-fs")
    assert set(venv.plugins()) == BUILTIN
    listed = venv.preheat("artifacts", "list", "--json").ok().json["artifacts"]
    assert {(a["name"], a["repo"]) for a in listed} == {("tiny-fs-model", str(model))}
    assert len(listed) == 2
    line = venv.preheat("prefetch", "model", str(model), "--source", "fs").error_line()
    assert "'fs'" in line, line
