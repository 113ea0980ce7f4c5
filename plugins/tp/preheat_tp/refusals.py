"""What the tensor-parallel sharder refuses before download, each with one line saying what to change.

A request is checked from config.json and the safetensors headers alone:
custom code that is not trusted, checkpoints the CPU slicer cannot lay out
(quantized, mixture-of-experts, multimodal, tensors that do not match the
config, whatever the engine lays out differently), a tensor-parallel size
that does not fit the model, and weights that do not fit the accelerator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from preheat.api import ModelView, PreheatError, Resources, accelerator_info, parse_accelerator

from .layout import EngineLayout, TPJob
from .plan import EMBED, LM_HEAD, PlanError, plan_rank
from .shape import ModelShape, UnsupportedModel, check_tp

log = logging.getLogger("preheat")

GiB = 1 << 30
QUANT_FILES = ("hf_quant_config.json", "quant_config.json", "quant_model_description.json")
MULTIMODAL_KEYS = (
    "vision_config",
    "audio_config",
    "image_token_index",
    "image_token_id",
    "vision_tower",
)

SourceIndex = dict[str, tuple[str, tuple[int, ...], str, int]]


def refuse(engine: str, reason: str, *, engine_path: bool = True) -> PreheatError:
    """The error refusing CPU slicing for `reason`; with `engine_path`, it points at `method: engine`."""
    hint = (
        "; to shard it with the engine itself on GPUs, use `method: engine`" if engine_path else ""
    )
    return PreheatError(f"cannot pre-shard for {engine} on CPU: {reason}{hint}")


def source_index(view: ModelView) -> SourceIndex:
    """name -> (dtype, shape, file, absolute data start) over every safetensors file."""
    index: SourceIndex = {}
    for path, head in view.headers.items():
        for t in head.tensors.values():
            index[t.name] = (t.dtype, t.shape, path, t.start)
    return index


def tp_problems(layout: EngineLayout, shape: ModelShape, tp: int) -> list[str]:
    """Why `tp` does not fit `shape` under the engine's vocabulary padding (empty when it fits)."""
    return check_tp(shape, tp, layout.vocab_multiple, widen_vocab=layout.widen_vocab_for_tp)


def cpu_problem(layout: EngineLayout, view: ModelView, job: TPJob) -> str | None:
    """Why the CPU slicer cannot write this checkpoint for the engine, or None.

    A tensor-parallel size that does not fit is not reported here: `check_tp_fits`
    words it, whichever method runs.
    """
    config = view.config
    if not view.headers:
        return "the checkpoint has no safetensors files"
    quant_files = sorted({f.path for f in view.files} & set(QUANT_FILES))
    if (
        view.serving.quantization
        or config.get("quantization_config")
        or config.get("compression_config")
        or quant_files
    ):
        what = view.serving.quantization or (
            quant_files[0] if quant_files else "quantization_config"
        )
        return f"the checkpoint is quantized ({what}), which the CPU slicer does not support"
    if view.serving.experts:
        return f"mixture-of-experts checkpoints ({view.serving.experts} experts) are not supported by the CPU slicer"
    if any(k in config for k in MULTIMODAL_KEYS):
        return "multimodal checkpoints are not supported by the CPU slicer"
    if layout.extra_problems is not None:
        problems = layout.extra_problems(config, [f.path for f in view.files])
        if problems:
            return "; ".join(problems)
    try:
        shape = ModelShape.from_config(config)
    except UnsupportedModel as exc:
        return str(exc)
    index = source_index(view)
    if shape.tied and LM_HEAD in index and EMBED in index:
        return (
            "config.json ties the embeddings but the checkpoint also ships a separate lm_head.weight "
            "(the engine would serve it untied); fix tie_word_embeddings in the repository"
        )
    try:
        plan_rank(
            shape,
            job.tp,
            0,
            {k: (v[0], v[1]) for k, v in index.items()},
            vocab_multiple=layout.vocab_multiple_for(shape, job.tp),
        )
    except PlanError as exc:
        if tp_problems(layout, shape, job.tp):
            return None  # reported as a tensor-parallel size problem by `check_tp_fits`
        return f"the checkpoint's tensors do not match its config: {exc}"
    return None


def choose_method(
    layout: EngineLayout,
    view: ModelView,
    job: TPJob,
    engine_problem: Callable[[int], str | None],
) -> str:
    """The method that will shard (`cpu` or `engine`), or the error refusing the request.

    `auto` slices on CPU when it can and falls back to the engine's own save
    routine when that can run here; otherwise the CPU slicer's reason is given.
    """
    engine = layout.engine
    config = view.config
    if not config:
        raise refuse(engine, "the repository has no config.json", engine_path=False)
    if config.get("auto_map") and not job.trust_remote_code:
        raise PreheatError(
            f"{config.get('architectures')} needs custom code from the repository: "
            "set trust_remote_code: true in the shard args if you trust it"
        )
    method = job.method
    problem = cpu_problem(layout, view, job)
    if method == "auto":
        method = "cpu" if problem is None else "engine"
        if method == "engine" and engine_problem(job.tp) is not None:
            raise refuse(engine, problem)
    if method == "cpu" and problem is not None:
        raise refuse(engine, problem)
    if method == "engine":
        cannot = engine_problem(job.tp)
        if cannot is not None:
            raise PreheatError(f"method: engine cannot run here: {cannot}")
    return method


def check_tp_fits(layout: EngineLayout, config: dict, tp: int) -> ModelShape | None:
    """The model's shape when the sharder knows its family (None otherwise), refusing a `tp` that does not fit."""
    try:
        shape = ModelShape.from_config(config)
    except UnsupportedModel:
        return None
    problems = tp_problems(layout, shape, tp)
    if problems:
        raise PreheatError(
            f"tensor-parallel size {tp} does not fit {shape.architecture}: " + "; ".join(problems)
        )
    return shape


def check_accelerator(resources: Resources, tp: int, per_rank: int) -> None:
    """Refuse an accelerator request whose count is not `tp` or whose memory cannot hold one rank."""
    if not resources.accelerator:
        return
    kind, count = parse_accelerator(resources.accelerator)
    if count != tp:
        raise PreheatError(
            f"--accelerator {resources.accelerator} has {count} device(s) but tensor-parallel size is {tp}: "
            "make them equal"
        )
    info = accelerator_info(kind)
    if info is None:
        log.warning("accelerator %s is not in the table; its memory was not checked", kind)
        return
    usable = int(info.memory * 0.9)
    kv_margin = max(GiB, info.memory // 10)
    if per_rank + kv_margin > usable:
        raise PreheatError(
            f"weights need {per_rank / GiB:.1f} GiB per GPU at tp={tp}, but a {info.name} leaves "
            f"{(usable - kv_margin) / GiB:.1f} GiB after the engine's 90% memory cap and a "
            f"{kv_margin / GiB:.1f} GiB margin for the KV cache: use a larger tp or accelerator"
        )
