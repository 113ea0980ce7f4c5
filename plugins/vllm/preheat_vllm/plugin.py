"""The vLLM plugin: the shared tensor-parallel sharder with vLLM's layout, vLLM's resolver,
and `VLLMAppEnvironment` for `preheat serve --engine vllm`.

Registration imports only the args class; the layout, the resolver, the app
environment, vLLM's save routine and numpy load when a factory is called.
"""

from __future__ import annotations

from preheat.api import hookimpl
from preheat_tp.engine_plugin import TensorParallelEngine
from preheat_vllm.args import VLLMShardArgs

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


def _app(**fields):
    from preheat_vllm.app import VLLMAppEnvironment

    return VLLMAppEnvironment(**fields)


@hookimpl
def preheat_register_apps(register):
    """`preheat serve REF --engine vllm`: vLLM's app environment."""
    register("vllm", _app)
