"""Registration of the SGLang sharder and resolver (imports stay light until used)."""

from __future__ import annotations

from preheat.hookspecs import hookimpl
from preheat_sglang.args import SGLangShardArgs


def make_sharder():
    """The SGLang sharder: CPU slicing, or SGLang's own save routine with `method: engine`."""
    from preheat_sglang.sharding import LAYOUT, SGLANG
    from preheat_tp.sharder import TensorParallelSharder, TPJob

    def to_job(args) -> TPJob:
        return TPJob.from_args(args, tp=args.tp, extra=("context_length",))

    return TensorParallelSharder(
        LAYOUT, to_job, engine_runner=SGLANG.run, engine_problem=SGLANG.problem
    )


def make_resolver():
    from preheat_sglang.resolver import SGLangResolver

    return SGLangResolver()


@hookimpl
def preheat_register_sharders(register):
    register("sglang", make_sharder, args_class=SGLangShardArgs)


@hookimpl
def preheat_register_resolvers(register):
    register("sglang", make_resolver)
