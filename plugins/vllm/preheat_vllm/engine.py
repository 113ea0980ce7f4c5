"""The engine-backed shard path for vLLM: `save_sharded_state`, in a subprocess, on GPUs."""

from __future__ import annotations

from preheat_tp.engine import EngineProcess

SAVE = """
import json, sys
from vllm import LLM

if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    llm = LLM(model=a["src"], tensor_parallel_size=a["tp"], dtype=a["dtype"], enforce_eager=True,
              trust_remote_code=a["trust_remote_code"], max_model_len=a.get("max_model_len"))
    llm.llm_engine.engine_core.save_sharded_state(path=a["out"], pattern=a["pattern"], max_size=a["max_size"])
"""

VLLM = EngineProcess(module="vllm", python_env="PREHEAT_VLLM_PYTHON", script=SAVE)
