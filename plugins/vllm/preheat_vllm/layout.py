"""What vLLM's `sharded_state` loader expects, beyond the shared tensor-parallel slicing.

See VLLM_FORMAT.md for the source lines these facts come from.
"""

from __future__ import annotations

from preheat_tp.layout import Buffer, EngineLayout
from preheat_tp.plan import LM_HEAD

# the attention scales are persistent buffers since 0.14; verified against 0.32.0
ENGINE_VERSIONS = ">=0.14,<0.33"

LAYOUT = EngineLayout(
    engine="vllm",
    engine_versions=ENGINE_VERSIONS,
    vocab_multiple=64,
    tied_keep=LM_HEAD,
    layer_buffers=tuple(
        Buffer(f"self_attn.attn._{name}_scale", "F32", (), 1.0) for name in ("k", "v", "q", "prob")
    ),
)
