"""preheat's vLLM plugin: CPU pre-sharding into `sharded_state`, launch arguments, serving environment."""
