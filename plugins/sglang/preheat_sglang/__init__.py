"""preheat's SGLang plugin: CPU pre-sharding into SGLang's `sharded_state`, and launch arguments."""
