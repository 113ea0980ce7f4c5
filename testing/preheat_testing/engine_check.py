"""Load a preheat-sharded artifact in a real engine on a CUDA GPU and compare greedy tokens.

Used by `scripts/gpu_check.py --engine vllm|sglang`, for a machine
with a CUDA GPU and the engine installed beside preheat, its plugins and preheat-testing:

1. a model directory (or a generated tiny model) is served by a loopback `HubServer`;
2. preheat pre-shards it at tp=1 in this process, into a local store in a temporary
   directory (the unsharded artifact is published too, as the shard's lineage);
3. the engine loads the sharded artifact with `load_format="sharded_state"` and the
   unsharded one with its default loader, each in its own process, and generates
   greedy tokens from the same prompt ids;
4. one JSON line on stdout gives the verdict.

Exit status: 0 when the tokens are equal, 1 when they differ or a step fails,
2 when the engine, torch or a CUDA GPU is missing (with a message on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_EQUAL, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2
DEFAULT_CASE = "llama_gqa"  # bf16, 8 heads of dim 64, 4 kv heads, vocab 512
DEFAULT_IDS = (1, 7, 42, 3, 99, 12, 5, 64)

PROBE = """
import json, sys
import torch
import {module} as engine
ok = torch.cuda.is_available()
print(json.dumps({{
    "engine_version": getattr(engine, "__version__", "unknown"),
    "torch": torch.__version__,
    "cuda": ok,
    "gpus": torch.cuda.device_count() if ok else 0,
    "gpu": torch.cuda.get_device_name(0) if ok else None,
}}))
"""

VLLM_WORKER = """
import json, sys

def main():
    a = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=a["model"],
        load_format=a["load_format"],
        tensor_parallel_size=1,
        max_model_len=a["max_model_len"],
        gpu_memory_utilization=a["memory_fraction"],
        enforce_eager=True,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=a["max_tokens"], ignore_eos=True)
    [out] = llm.generate([{"prompt_token_ids": a["ids"]}], params)
    with open(a["out"], "w") as f:
        json.dump({"tokens": list(out.outputs[0].token_ids)}, f)

if __name__ == "__main__":
    main()
"""

SGLANG_WORKER = """
import json, sys

def main():
    a = json.loads(sys.argv[1])
    import sglang

    engine = sglang.Engine(
        model_path=a["model"],
        load_format=a["load_format"],
        tp_size=1,
        context_length=a["max_model_len"],
        mem_fraction_static=a["memory_fraction"],
        disable_cuda_graph=True,
        skip_tokenizer_init=True,
        random_seed=0,
        log_level="error",
    )
    try:
        [out] = engine.generate(
            input_ids=[a["ids"]],
            sampling_params={"temperature": 0.0, "max_new_tokens": a["max_tokens"], "ignore_eos": True},
        )
    finally:
        engine.shutdown()
    tokens = out.get("output_ids")
    if tokens is None:
        tokens = out["token_ids"]
    with open(a["out"], "w") as f:
        json.dump({"tokens": list(tokens)}, f)

if __name__ == "__main__":
    main()
"""


@dataclass(frozen=True)
class Engine:
    name: str
    module: str
    worker: str


ENGINES = {
    "vllm": Engine("vllm", "vllm", VLLM_WORKER),
    "sglang": Engine("sglang", "sglang", SGLANG_WORKER),
}


class Unavailable(Exception):
    """The engine, torch or a CUDA GPU is missing here."""


class Failed(Exception):
    """A step of the check failed."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def probe(engine: Engine, python: str, need_cuda: bool = True) -> dict:
    """Engine and torch versions and the CUDA GPUs, read by the engine's interpreter."""
    if python == sys.executable:
        for module in (engine.module, "torch"):
            if importlib.util.find_spec(module) is None:
                raise Unavailable(f"{module} is not installed for {python}")
    done = subprocess.run(
        [python, "-c", PROBE.format(module=engine.module)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"cannot import {engine.module} with torch: {tail[0]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if need_cuda and (not found["cuda"] or found["gpus"] < 1):
        raise Unavailable(f"no CUDA GPU is visible to torch {found['torch']}")
    return found


def model_files(directory: str | None) -> tuple[dict[str, bytes], str]:
    """{repo path: bytes} of the model directory, or of a generated tiny model."""
    if directory is None:
        from preheat_testing.models import build_case

        return build_case(DEFAULT_CASE).files, f"generated {DEFAULT_CASE}"
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise Failed(f"{root} has no config.json")
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }
    return files, str(root.resolve())


def shard_tp1(engine: Engine, files: dict[str, bytes], root: Path) -> tuple[Path, Path, str]:
    """Pre-shard `files` for the engine at tp=1: (sharded dir, unsharded dir, artifact ref)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import ENGINES as FACTS
    from preheat_testing.sharding import World

    with HubServer() as hub:
        world = World(root / "world", hub, hide_engines=())
        repo = "gpu-check/model"
        world.add_repo(repo, files)
        outcome = world.prefetch(repo, FACTS[engine.name].config(1), artifact_name="gpu-check")
        if not outcome.ok:
            raise Failed(f"preheat could not shard the model: {outcome.record.error}")
        manifest = world.manifest(outcome)
        catalog = world.catalog()
        base = catalog.manifest(manifest.lineage.name, manifest.lineage.version)
        return world.directory(manifest), world.directory(base), str(manifest.ref)


def generate(
    engine: Engine, model: Path, load_format: str, ids: list[int], options: dict, root: Path
) -> list[int]:
    """Greedy tokens of the engine on `model`, in a fresh process of `options["python"]`."""
    script = root / f"{engine.name}_worker.py"
    script.write_text(engine.worker)
    out = root / f"{engine.name}-{load_format}.json"
    args = {
        "model": str(model),
        "load_format": load_format,
        "ids": ids,
        "out": str(out),
        **{k: v for k, v in options.items() if k not in ("python", "timeout", "env")},
    }
    log(f"{engine.name}: loading {model} with load_format={load_format}")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [options["python"], str(script), json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=options["timeout"],
            env={**os.environ, **options["env"]},
        )
    except subprocess.TimeoutExpired:
        raise Failed(f"{engine.name} ({load_format}) ran past {options['timeout']} s") from None
    if done.returncode != 0 or not out.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line] or lines
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        raise Failed(
            f"{engine.name} failed with load_format={load_format}: "
            f"{errors[-1] if errors else f'exit {done.returncode}'}"
        )
    tokens = json.loads(out.read_text())["tokens"]
    log(f"{engine.name}: {load_format} gave {tokens} in {time.monotonic() - started:.0f} s")
    return tokens


def parse(engine: Engine, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"gpu_check.py --engine {engine.name}",
        description=f"Shard a model at tp=1 with preheat, load it in {engine.name} with "
        "load_format=sharded_state on a CUDA GPU, and compare greedy tokens with the "
        "unsharded model. Exit 0 if equal, 1 if not (or on failure), 2 if the engine, "
        "torch or CUDA is missing.",
    )
    p.add_argument("model", nargs="?", help="a model directory (default: a generated tiny Llama)")
    p.add_argument("--ids", default=",".join(map(str, DEFAULT_IDS)), help="prompt token ids")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--memory-fraction", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=600, help="seconds per engine load")
    p.add_argument("--keep", help="keep the store and the artifacts in this directory")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that has the engine, if not this one (preheat runs in this one)",
    )
    p.add_argument(
        "--cpu",
        action="store_true",
        help="no CUDA needed: for engines with a CPU build (vLLM's), to check this script itself",
    )
    return p.parse_args(argv)


def main(engine_name: str, argv: list[str] | None = None) -> int:
    engine = ENGINES[engine_name]
    opts = parse(engine, argv)
    verdict: dict = {"engine": engine.name, "tp": 1, "ok": False}

    def finish(status: str, code: int, message: str | None = None) -> int:
        verdict["status"] = status
        if message:
            verdict["message"] = message
            log(f"gpu_check ({engine.name}): {message}")
        print(json.dumps(verdict), flush=True)
        return code

    try:
        verdict.update(probe(engine, opts.python, need_cuda=not opts.cpu))
    except Unavailable as exc:
        return finish("unavailable", EXIT_UNAVAILABLE, str(exc))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return finish("unavailable", EXIT_UNAVAILABLE, f"cannot probe {engine.module}: {exc}")

    keep = Path(opts.keep).resolve() if opts.keep else None
    with tempfile.TemporaryDirectory(prefix=f"preheat-gpu-check-{engine.name}-") as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            ids = [int(x) for x in opts.ids.split(",") if x.strip()]
            files, source = model_files(opts.model)
            config = json.loads(files["config.json"])
            if any(i < 0 or i >= config["vocab_size"] for i in ids):
                raise Failed(f"prompt ids must lie in 0..{config['vocab_size'] - 1}")
            verdict.update(model=source, ids=ids)
            sharded, unsharded, ref = shard_tp1(engine, files, root)
            verdict["artifact"] = ref
            ranks = sorted(p.name for p in sharded.glob("*.safetensors"))
            verdict["rank_files"] = ranks
            options = {
                "max_tokens": opts.max_tokens,
                "max_model_len": opts.max_model_len,
                "memory_fraction": opts.memory_fraction,
                "timeout": opts.timeout,
                "python": opts.python,
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"} if opts.cpu else {},
            }
            got = generate(engine, sharded, "sharded_state", ids, options, root)
            want = generate(engine, unsharded, "auto", ids, options, root)
        except Failed as exc:
            return finish("failed", EXIT_FAILED, str(exc))
        verdict.update(tokens_sharded=got, tokens_unsharded=want)
        if keep:
            verdict.update(sharded_dir=str(sharded), unsharded_dir=str(unsharded))
        if got == want and len(got) == opts.max_tokens:
            verdict["ok"] = True
            return finish("equal", EXIT_EQUAL)
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        return finish(
            "differ",
            EXIT_FAILED,
            f"greedy tokens differ (first at position {first}; {len(got)} vs {len(want)} tokens)",
        )


def script_main(engine_name: str, argv: list[str] | None = None) -> int:
    """Entry point of `scripts/gpu_check.py`; `os.environ` is left as is for the engine."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(engine_name, argv)
