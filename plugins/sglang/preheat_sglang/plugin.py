"""The SGLang plugin: the shared tensor-parallel sharder with SGLang's layout, SGLang's resolver,
and `SGLangAppEnvironment` for `preheat serve --engine sglang`.

Registration imports only the args class; the layout, the resolver, the app
environment, SGLang's save routine and numpy load when a factory is called.
"""

from __future__ import annotations

from preheat.api import hookimpl
from preheat_sglang.args import SGLangShardArgs
from preheat_tp.engine_plugin import TensorParallelEngine

PLUGIN = TensorParallelEngine(
    engine="sglang",
    args_class=SGLangShardArgs,
    layout="preheat_sglang.sharding:LAYOUT",
    resolver="preheat_sglang.resolver:SGLangResolver",
    engine_process="preheat_sglang.sharding:SGLANG",
    tp_field="tp",
    extra_fields=("context_length",),
)
preheat_register_sharders = PLUGIN.preheat_register_sharders
preheat_register_resolvers = PLUGIN.preheat_register_resolvers


def _app(**fields):
    from preheat_sglang.app import SGLangAppEnvironment

    return SGLangAppEnvironment(**fields)


@hookimpl
def preheat_register_apps(register):
    """`preheat serve REF --engine sglang`: SGLang's app environment."""
    register("sglang", _app)
