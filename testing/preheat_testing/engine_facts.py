"""What vLLM's and SGLang's sharded-state files differ in, as data (`EngineFacts`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineFacts:
    """What an engine's `sharded_state` files and shard arguments differ in."""

    name: str
    #: the shard-args key naming the tensor-parallel size
    tp_key: str
    #: persistent buffers of every decoder layer: (name under `model.layers.{i}.`, dtype, shape, value)
    layer_buffers: tuple[tuple[str, str, tuple[int, ...], float], ...] = ()
    vocab_multiple: int = 64
    #: pad to vocab_multiple * tp when the padded vocab is not divisible by tp (SGLang)
    widen_vocab_for_tp: bool = False

    @property
    def python_env(self) -> str:
        """The variable naming the interpreter that has the engine (`method: engine`)."""
        return f"PREHEAT_{self.name.upper()}_PYTHON"

    def padded_vocab(self, vocab: int, tp: int) -> int:
        multiple = self.vocab_multiple
        if self.widen_vocab_for_tp and -(-vocab // multiple) * multiple % tp:
            multiple *= tp
        return -(-vocab // multiple) * multiple

    def args(self, tp: int, **extra) -> dict:
        return {self.tp_key: tp, **extra}

    def config(self, tp: int, **extra) -> dict:
        """A shard config (`{"engine": ..., "args": ...}`) as a Python dict."""
        return {"engine": self.name, "args": self.args(tp, **extra)}

    def yaml(self, tp: int | None = None, **extra) -> str:
        """The same as a shard-config YAML file (values written as JSON scalars)."""
        fields = {**({self.tp_key: tp} if tp is not None else {}), **extra}
        lines = [f"engine: {self.name}", "args:" if fields else "args: {}"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in fields.items()]
        return "\n".join(lines) + "\n"

    def tp_fits(self, config: Mapping, tp: int) -> bool:
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
        return (
            heads % tp == 0
            and (kv % tp == 0 or tp % kv == 0)
            and config["intermediate_size"] % tp == 0
            and self.padded_vocab(config["vocab_size"], tp) % tp == 0
        )


VLLM = EngineFacts(
    "vllm",
    "tensor_parallel_size",
    layer_buffers=tuple(
        (f"self_attn.attn._{s}_scale", "F32", (), 1.0) for s in ("k", "v", "q", "prob")
    ),
)
SGLANG = EngineFacts("sglang", "tp", widen_vocab_for_tp=True)
ENGINES = {e.name: e for e in (VLLM, SGLANG)}


def prompt(config: Mapping) -> list[int]:
    """Token ids touching the first and the last vocab shard."""
    return [1, 7, 42, 3, 99, 12, 5, 64, 8, 127, config["vocab_size"] - 1, 2]
