"""What an engine's sharded-state loader expects, and an engine's shard arguments in neutral terms.

An engine plugin describes its loader with an `EngineLayout` (vocabulary
padding, which tied name survives, extra per-layer buffers, version range)
and its arguments become a `TPJob`; everything else of the tensor-parallel
slicing is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .args import DEFAULT_MAX_FILE_SIZE, DEFAULT_PATTERN
from .plan import LM_HEAD

if TYPE_CHECKING:
    from .shape import ModelShape


@dataclass(frozen=True)
class Buffer:
    """A persistent buffer the engine's state dict holds in every layer (e.g. an attention scale)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    value: float


@dataclass(frozen=True)
class EngineLayout:
    """What an engine's sharded-state loader expects beyond the shared tensor-parallel slicing.

    `extra_problems(config, file_paths)` lists what else the engine lays out
    differently (each a reason the CPU slicer refuses the checkpoint).
    """

    engine: str
    engine_versions: str
    vocab_multiple: int = 64
    tied_keep: str = LM_HEAD
    layer_buffers: tuple[Buffer, ...] = ()
    fuse: bool = True
    widen_vocab_for_tp: bool = False
    extra_problems: Callable[[Mapping[str, Any], list[str]], list[str]] | None = None

    def vocab_multiple_for(self, shape: ModelShape, tp: int) -> int:
        """Vocabulary padding at `tp`: the base multiple, or base * tp when the engine widens it to divide."""
        if self.widen_vocab_for_tp and shape.padded_vocab(self.vocab_multiple) % tp:
            return self.vocab_multiple * tp
        return self.vocab_multiple


@dataclass(frozen=True)
class TPJob:
    """An engine's shard arguments in engine-neutral terms."""

    tp: int
    dtype: str = "auto"
    file_pattern: str = DEFAULT_PATTERN
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    method: str = "auto"
    trust_remote_code: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: Any, *, tp: int, extra: tuple[str, ...] = ()) -> TPJob:
        """A job from an engine's args object (shared field names) plus its engine-only `extra` fields."""
        return cls(
            tp=tp,
            dtype=args.dtype,
            file_pattern=args.file_pattern,
            max_file_size=args.max_file_size,
            method=args.method,
            trust_remote_code=args.trust_remote_code,
            args={name: getattr(args, name) for name in extra if getattr(args, name) is not None},
        )


#: `runner(src_dir, out_dir, job)`: an engine's own save routine, writing rank files into out_dir.
EngineRunner = Callable[[str, str, TPJob], None]
#: `problem(tp)`: why the engine's save routine cannot run here with `tp` GPUs, or None.
EngineProblem = Callable[[int], str | None]
