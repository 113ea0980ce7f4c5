"""The SGLang plugin: the shared tensor-parallel sharder with SGLang's layout, and SGLang's resolver.

Registration imports only the args class; the layout, the resolver, SGLang's
save routine and numpy load when a factory is called.
"""

from __future__ import annotations

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
