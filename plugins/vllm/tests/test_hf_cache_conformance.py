"""`preheat resolve --hf-cache` against the real vLLM: loading by repo id with HF_HUB_OFFLINE=1.

A tiny model is put on a loopback hub, prefetched with `preheat prefetch ... --wait` and
written into a fresh Hugging Face cache with `preheat resolve NAME --hf-cache`. Then, with
`HF_HUB_OFFLINE=1` and a dead `HF_ENDPOINT`, one vLLM process loads the model by its repo id
(config, tokenizer and weights all found in the cache) and generates greedy tokens; a
second process loads the original checkpoint directory. The tokens must be identical and
the hub must see no request while vLLM runs.

Skipped unless PREHEAT_VLLM_PYTHON names an interpreter that imports vLLM;
PREHEAT_REQUIRE_CONFORMANCE=1 turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from preheat_testing import models
from preheat_testing.cli import run_cli
from preheat_testing.hub import HubServer
from preheat_testing.vllm_python import vllm_interpreter

pytestmark = pytest.mark.conformance

TIMEOUT_S = 900
_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")
_ENGINE_CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

GENERATE = r"""
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from vllm import LLM, SamplingParams

model, dtype = sys.argv[1], sys.argv[2]
llm = LLM(model=model, dtype=dtype, max_model_len=128, enforce_eager=True)
params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, detokenize=False)
out = llm.generate([{"prompt_token_ids": [1, 5, 9, 23, 7]}], params, use_tqdm=False)
print("TOKENS " + json.dumps(list(out[0].outputs[0].token_ids)), flush=True)
"""


@pytest.fixture(scope="module")
def vllm_python() -> str:
    return vllm_interpreter().python


def generate(python: str, model: str, dtype: str, env: dict, log: Path) -> list[int]:
    with open(log, "w") as out:
        done = subprocess.run(
            [python, "-c", GENERATE, model, dtype],
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            timeout=TIMEOUT_S,
        )
    assert done.returncode == 0, f"vLLM on {model} exited {done.returncode}; log: {log}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("TOKENS ")]
    assert lines, f"no tokens from vLLM on {model}: {done.stdout[-2000:]}"
    return json.loads(lines[-1][len("TOKENS ") :])


def test_vllm_loads_the_hf_cache_by_repo_id_offline(vllm_python, tmp_path):
    model = models.build_case("llama_gqa")  # head_dim 64, as the CPU build needs
    original = model.write(tmp_path / "original")
    repo = "conformance/hf-cache-llama"
    with HubServer() as hub:
        hub.add_repo(repo, model.files)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREHEAT_") and k not in _CLEARED
        }
        env.update(
            PREHEAT_HOME=str(tmp_path / "preheat-home"),
            HF_HOME=str(tmp_path / "hf-home"),
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        summary = run_cli(
            ["prefetch", "hf-model", repo, "--wait", "--json"], env=env, cwd=tmp_path, timeout=300
        )
        assert summary.returncode == 0, str(summary)
        name = summary.json["artifact"]["name"]
        resolved = run_cli(
            ["resolve", name, "--hf-cache", "--json"], env=env, cwd=tmp_path, timeout=300
        )
        assert resolved.returncode == 0, str(resolved)
        snapshot = Path(resolved.json["path"])
        assert snapshot.parent.parent.name == "models--conformance--hf-cache-llama"

        engine = {k: v for k, v in env.items() if k not in _ENGINE_CLEARED}
        engine.update(
            HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", VLLM_CPU_KVCACHE_SPACE="1"
        )
        requests = len(hub.requests)
        dtype = model.config["torch_dtype"]
        by_repo = generate(vllm_python, repo, dtype, engine, tmp_path / "vllm-repo.log")
        assert len(hub.requests) == requests, "vLLM reached the hub while offline"
    from_dir = generate(vllm_python, str(original), dtype, engine, tmp_path / "vllm-dir.log")
    assert len(by_repo) == 12
    assert by_repo == from_dir, f"by repo id {by_repo}, from the original directory {from_dir}"
