"""preheat's vLLM plugin: CPU pre-sharding into `sharded_state`, launch arguments, serving environment."""


def __getattr__(name: str):
    if name == "VLLMAppEnvironment":
        from preheat_vllm.app import VLLMAppEnvironment

        return VLLMAppEnvironment
    if name == "VLLMShardArgs":
        from preheat_vllm.args import VLLMShardArgs

        return VLLMShardArgs
    raise AttributeError(name)
