"""`TensorParallelEngine`: the one registration helper of engine plugins built on this library.

An engine plugin that shares the tensor-parallel sharder is a declaration:
its layout, its args class, its resolver, and optionally its own save
routine for `method: engine`. The plugin module instantiates the helper and
exposes its two hooks::

    PLUGIN = TensorParallelEngine(
        engine="vllm",
        args_class=VLLMShardArgs,
        layout="preheat_vllm.layout:LAYOUT",
        resolver="preheat_vllm.resolver:VLLMResolver",
        engine_process="preheat_vllm.engine:VLLM",
        tp_field="tensor_parallel_size",
        extra_fields=("max_model_len",),
    )
    preheat_register_sharders = PLUGIN.preheat_register_sharders
    preheat_register_resolvers = PLUGIN.preheat_register_resolvers

(or the entry point names `module:PLUGIN`). Registration stays cheap: the
layout, the resolver, the engine process, numpy and the sharder are
imported only when a factory is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from preheat.api import hookimpl

if TYPE_CHECKING:
    from preheat.api import Resolver, Sharder


def load(ref: str) -> Any:
    """The object named by `"package.module:attribute"`."""
    module, sep, attribute = ref.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attribute)


class TensorParallelEngine:
    """The sharder and resolver of one engine, registered through pluggy (hook methods below).

    :param engine: the name used in shard configs (`engine: NAME`) and `--engine`.
    :param args_class: the engine's attrs shard-arguments class (it must have
        the shared fields `dtype`, `file_pattern`, `max_file_size`, `method`,
        `trust_remote_code`, plus `tp_field` and `extra_fields`).
    :param layout: `"module:NAME"` of the engine's `preheat_tp.layout.EngineLayout`.
    :param resolver: `"module:NAME"` of a zero-argument factory (e.g. the class)
        of the engine's `preheat.api.Resolver`.
    :param engine_process: `"module:NAME"` of the engine's
        `preheat_tp.engine.EngineProcess` for `method: engine`; None when the
        engine has no engine-backed path.
    :param tp_field: the args field holding the tensor-parallel size.
    :param extra_fields: engine-only args fields recorded in the shard spec's
        `args` (for the resolver) when set.
    """

    def __init__(
        self,
        *,
        engine: str,
        args_class: type,
        layout: str,
        resolver: str,
        engine_process: str | None = None,
        tp_field: str = "tp",
        extra_fields: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.args_class = args_class
        self.layout = layout
        self.resolver = resolver
        self.engine_process = engine_process
        self.tp_field = tp_field
        self.extra_fields = tuple(extra_fields)

    def __repr__(self) -> str:
        return f"TensorParallelEngine(engine={self.engine!r})"

    def to_job(self, args: Any):
        """The engine's args instance as a `preheat_tp.layout.TPJob`."""
        from preheat_tp.layout import TPJob

        return TPJob.from_args(args, tp=getattr(args, self.tp_field), extra=self.extra_fields)

    def make_sharder(self) -> Sharder:
        """A new sharder: CPU slicing, or the engine's own save routine with `method: engine`."""
        from preheat_tp.sharder import TensorParallelSharder

        runner = problem = None
        if self.engine_process is not None:
            process = load(self.engine_process)
            runner, problem = process.run, process.problem
        return TensorParallelSharder(
            load(self.layout), self.to_job, engine_runner=runner, engine_problem=problem
        )

    def make_resolver(self) -> Resolver:
        """A new resolver of the engine's launch arguments."""
        return load(self.resolver)()

    @hookimpl
    def preheat_register_sharders(self, register) -> None:
        """Register the sharder under the engine's name, with its args class."""
        register(self.engine, self.make_sharder, args_class=self.args_class)

    @hookimpl
    def preheat_register_resolvers(self, register) -> None:
        """Register the resolver under the engine's name."""
        register(self.engine, self.make_resolver)
