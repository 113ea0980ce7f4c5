"""`VLLMShardArgs`: how to pre-shard for vLLM."""

from __future__ import annotations

import attrs

from preheat_tp import args as v


@attrs.frozen
class VLLMShardArgs:
    """Shard arguments for vLLM (`engine: vllm`); defaults match vLLM's own save routine."""

    tensor_parallel_size: int = attrs.field(default=1, validator=v.positive)
    dtype: str = attrs.field(default="auto", validator=v.one_of(v.DTYPES))
    trust_remote_code: bool = attrs.field(default=False, validator=v.boolean)
    max_model_len: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.positive)
    )
    file_pattern: str = attrs.field(default=v.DEFAULT_PATTERN, validator=v.file_pattern)
    max_file_size: int = attrs.field(
        default=v.DEFAULT_MAX_FILE_SIZE, converter=v.size, validator=v.positive
    )
    method: str = attrs.field(default="auto", validator=v.one_of(v.METHODS))
