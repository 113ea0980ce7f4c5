"""Per-rank tensor plans: which slices of which source tensors make each output tensor."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .dtypes import ITEMSIZE, normalize_dtype
from .shape import ModelShape, check_tp

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
TIED_KEEP = (LM_HEAD, EMBED, "both")


class PlanError(ValueError):
    """A plan cannot be made: bad tp or rank, or sources missing or of the wrong shape."""


@dataclass(frozen=True)
class Slice:
    """Rows or columns `[start, stop)` of a source tensor along `axis` (0 or 1)."""

    source: str
    axis: int
    start: int
    stop: int
    source_dtype: str
    source_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the slice."""
        out = list(self.source_shape)
        out[self.axis] = self.stop - self.start
        return tuple(out)


@dataclass(frozen=True)
class Zeros:
    """`rows` rows of zeros (padding)."""

    rows: int


Piece = Slice | Zeros


@dataclass(frozen=True)
class OutputTensor:
    """A rank tensor: the concatenation along axis 0 of `pieces`, stored as `dtype`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor in bytes."""
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the source tensors read, in order."""
        return tuple(dict.fromkeys(p.source for p in self.pieces if isinstance(p, Slice)))


SourceIndex = Mapping[str, tuple[str, Sequence[int]]]


def expected_sources(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor names and shapes the plan reads (a tied lm_head is not required)."""
    h, d = shape.hidden, shape.head_dim
    out: dict[str, tuple[int, ...]] = {EMBED: (shape.vocab, h)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        for proj, rows in (("q", shape.q_size), ("k", shape.kv_size), ("v", shape.kv_size)):
            out[f"{p}self_attn.{proj}_proj.weight"] = (rows, h)
            if shape.qkv_bias:
                out[f"{p}self_attn.{proj}_proj.bias"] = (rows,)
        out[p + "self_attn.o_proj.weight"] = (h, shape.q_size)
        if shape.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        if shape.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (shape.intermediate, h)
        out[p + "mlp.up_proj.weight"] = (shape.intermediate, h)
        out[p + "mlp.down_proj.weight"] = (h, shape.intermediate)
    out["model.norm.weight"] = (h,)
    if not shape.tied:
        out[LM_HEAD] = (shape.vocab, h)
    return out


def check_sources(shape: ModelShape, source_index: SourceIndex) -> list[str]:
    """Problems with the source tensors: missing, wrong shape or unsupported dtype."""
    problems = []
    index = dict(source_index)
    if shape.tied and EMBED not in index and LM_HEAD in index:
        index[EMBED] = index[LM_HEAD]
    for name, want in expected_sources(shape).items():
        if name not in index:
            problems.append(f"source tensor {name} is missing")
            continue
        dtype, got = index[name]
        if tuple(got) != want:
            problems.append(f"source tensor {name} has shape {list(got)}, expected {list(want)}")
        try:
            normalize_dtype(dtype)
        except ValueError as e:
            problems.append(f"source tensor {name}: {e}")
    return problems


def kv_shard(shape: ModelShape, tp: int, rank: int) -> tuple[int, int]:
    """(first kv head, kv head count) that `rank` holds; kv heads are replicated when tp > kv_heads."""
    if tp >= shape.kv_heads:
        return rank // (tp // shape.kv_heads), 1
    per_rank = shape.kv_heads // tp
    return rank * per_rank, per_rank


def vocab_rows(shape: ModelShape, tp: int, rank: int, multiple: int = 64) -> tuple[int, int]:
    """Rows `[start, stop)` of the padded vocab that `rank` holds."""
    per_rank = shape.padded_vocab(multiple) // tp
    return rank * per_rank, (rank + 1) * per_rank


class _Builder:
    def __init__(self, index: SourceIndex, dtype: str | None) -> None:
        self.index = index
        self.dtype = dtype
        self.out: list[OutputTensor] = []

    def slice(self, source: str, axis: int, start: int, stop: int) -> Slice:
        dtype, shape = self.index[source]
        return Slice(source, axis, start, stop, normalize_dtype(dtype), tuple(shape))

    def whole(self, source: str) -> Slice:
        return self.slice(source, 0, 0, self.index[source][1][0])

    def emit(
        self, name: str, pieces: Sequence[Piece], tail: tuple[int, ...], dtype_of: str = ""
    ) -> None:
        """Add a tensor; its dtype is the requested one, else that of `dtype_of` or the first slice."""
        rows = sum(p.rows if isinstance(p, Zeros) else p.shape[0] for p in pieces)
        source = dtype_of or next(p.source for p in pieces if isinstance(p, Slice))
        dtype = self.dtype or normalize_dtype(self.index[source][0])
        self.out.append(OutputTensor(name, dtype, (rows, *tail), tuple(pieces)))


def plan_rank(
    shape: ModelShape,
    tp: int,
    rank: int,
    source_index: SourceIndex,
    *,
    vocab_multiple: int = 64,
    fuse: bool = True,
    tied_keep: str = LM_HEAD,
    dtype: str | None = None,
) -> list[OutputTensor]:
    """The tensors rank `rank` of `tp` holds, built from `source_index` (name -> (dtype, shape)).

    With `fuse`, q/k/v and gate/up are fused into `qkv_proj` and `gate_up_proj`;
    otherwise the Hugging Face names are kept, sliced the same way. For tied
    embeddings `tied_keep` picks the surviving name: `lm_head.weight`,
    `model.embed_tokens.weight` or `both`. `dtype` converts every output
    (bf16, fp16 or fp32); by default each keeps its source's dtype.
    """
    problems = check_tp(shape, tp, vocab_multiple)
    if problems:
        raise PlanError("; ".join(problems))
    if not 0 <= rank < tp:
        raise PlanError(f"rank {rank} is outside 0..{tp - 1}")
    if tied_keep not in TIED_KEEP:
        raise PlanError(f"tied_keep must be one of {', '.join(TIED_KEEP)}, got {tied_keep!r}")
    problems = check_sources(shape, source_index)
    if problems:
        raise PlanError("; ".join(problems))
    if dtype is not None:
        dtype = normalize_dtype(dtype)

    b = _Builder(source_index, dtype)
    h, d = shape.hidden, shape.head_dim
    nq = shape.heads // tp
    kv_first, nkv = kv_shard(shape, tp, rank)
    q_rows = (rank * nq * d, (rank + 1) * nq * d)
    kv_rows = (kv_first * d, (kv_first + nkv) * d)
    i_rows = (rank * shape.intermediate // tp, (rank + 1) * shape.intermediate // tp)

    def vocab_shard(name: str, source: str) -> None:
        start, stop = vocab_rows(shape, tp, rank, vocab_multiple)
        real = min(stop, shape.vocab)
        pieces: list[Piece] = []
        if start < real:
            pieces.append(b.slice(source, 0, start, real))
        if stop > max(start, real):
            pieces.append(Zeros(stop - max(start, real)))
        b.emit(name, pieces, (h,), dtype_of=source)

    embed_source = EMBED if EMBED in source_index else LM_HEAD
    if not shape.tied or tied_keep != LM_HEAD:
        vocab_shard(EMBED, embed_source)

    for i in range(shape.layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        b.emit(p + "input_layernorm.weight", [b.whole(p + "input_layernorm.weight")], ())
        for kind, tail in (("weight", (h,)), ("bias", ())):
            if kind == "bias" and not shape.qkv_bias:
                continue
            q = b.slice(f"{a}q_proj.{kind}", 0, *q_rows)
            k = b.slice(f"{a}k_proj.{kind}", 0, *kv_rows)
            v = b.slice(f"{a}v_proj.{kind}", 0, *kv_rows)
            if fuse:
                b.emit(f"{a}qkv_proj.{kind}", [q, k, v], tail)
            else:
                for proj, piece in (("q", q), ("k", k), ("v", v)):
                    b.emit(f"{a}{proj}_proj.{kind}", [piece], tail)
        b.emit(a + "o_proj.weight", [b.slice(a + "o_proj.weight", 1, *q_rows)], (nq * d,))
        if shape.o_bias:
            b.emit(a + "o_proj.bias", [b.whole(a + "o_proj.bias")], ())
        if shape.qk_norm:
            b.emit(a + "q_norm.weight", [b.whole(a + "q_norm.weight")], ())
            b.emit(a + "k_norm.weight", [b.whole(a + "k_norm.weight")], ())
        b.emit(
            p + "post_attention_layernorm.weight",
            [b.whole(p + "post_attention_layernorm.weight")],
            (),
        )
        gate = b.slice(p + "mlp.gate_proj.weight", 0, *i_rows)
        up = b.slice(p + "mlp.up_proj.weight", 0, *i_rows)
        if fuse:
            b.emit(p + "mlp.gate_up_proj.weight", [gate, up], (h,))
        else:
            b.emit(p + "mlp.gate_proj.weight", [gate], (h,))
            b.emit(p + "mlp.up_proj.weight", [up], (h,))
        down = b.slice(p + "mlp.down_proj.weight", 1, *i_rows)
        b.emit(p + "mlp.down_proj.weight", [down], (i_rows[1] - i_rows[0],))

    b.emit("model.norm.weight", [b.whole("model.norm.weight")], ())
    if not shape.tied:
        vocab_shard(LM_HEAD, LM_HEAD)
    elif tied_keep != EMBED:
        vocab_shard(LM_HEAD, embed_source)
    return b.out


def plan_ranks(
    shape: ModelShape, tp: int, source_index: SourceIndex, **options
) -> list[list[OutputTensor]]:
    """`plan_rank` for every rank of `tp`."""
    return [plan_rank(shape, tp, rank, source_index, **options) for rank in range(tp)]
