"""The SGLang engine layout for the shared tensor-parallel sharder, and SGLang's own save routine."""

from __future__ import annotations

from preheat_sglang import layout
from preheat_tp.engine import EngineProcess
from preheat_tp.layout import EngineLayout


def _problems(config, paths) -> list[str]:
    # tp=1: tensor-parallel divisibility is checked (and worded) by the shared sharder
    return layout.unsupported_reasons(config, 1, paths)


LAYOUT = EngineLayout(
    engine="sglang",
    engine_versions=layout.SGLANG_VERSION_SPEC,
    vocab_multiple=layout.VOCAB_PADDING,
    tied_keep=layout.TIED_SURVIVING_KEY,
    layer_buffers=(),
    widen_vocab_for_tp=True,
    extra_problems=_problems,
)

SAVE = """
import json, sys
import sglang

if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    engine = sglang.Engine(model_path=a["src"], tp_size=a["tp"], dtype=a["dtype"],
                           trust_remote_code=a["trust_remote_code"], context_length=a.get("context_length"))
    engine.save_sharded_model(path=a["out"], pattern=a["pattern"], max_size=a["max_size"])
    engine.shutdown()
"""

SGLANG = EngineProcess(module="sglang", python_env="PREHEAT_SGLANG_PYTHON", script=SAVE)
