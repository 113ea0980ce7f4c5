"""Development-only helpers for preheat's tests, benchmarks and demos."""
