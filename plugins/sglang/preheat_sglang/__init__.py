"""preheat's SGLang plugin: CPU pre-sharding into SGLang's `sharded_state`, launch arguments, serving environment."""


def __getattr__(name: str):
    if name == "SGLangAppEnvironment":
        from preheat_sglang.app import SGLangAppEnvironment

        return SGLangAppEnvironment
    if name == "SGLangShardArgs":
        from preheat_sglang.args import SGLangShardArgs

        return SGLangShardArgs
    raise AttributeError(name)
