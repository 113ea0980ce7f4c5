"""Registration of the vLLM sharder and resolver (imports stay light until used)."""

from __future__ import annotations

from preheat.hookspecs import hookimpl
from preheat_vllm.args import VLLMShardArgs


def make_sharder():
    """The vLLM sharder: CPU slicing, or vLLM's own save routine with `method: engine`."""
    from preheat_tp.sharder import TensorParallelSharder, TPJob
    from preheat_vllm.engine import VLLM
    from preheat_vllm.layout import LAYOUT

    def to_job(args) -> TPJob:
        return TPJob.from_args(args, tp=args.tensor_parallel_size, extra=("max_model_len",))

    return TensorParallelSharder(
        LAYOUT, to_job, engine_runner=VLLM.run, engine_problem=VLLM.problem
    )


def make_resolver():
    from preheat_vllm.resolver import VLLMResolver

    return VLLMResolver()


@hookimpl
def preheat_register_sharders(register):
    register("vllm", make_sharder, args_class=VLLMShardArgs)


@hookimpl
def preheat_register_resolvers(register):
    register("vllm", make_resolver)
