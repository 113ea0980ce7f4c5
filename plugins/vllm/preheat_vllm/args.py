"""`VLLMShardArgs`: how to pre-shard for vLLM."""

from __future__ import annotations

import attrs

from preheat.errors import PreheatError
from preheat.resources import parse_quantity

DTYPES = ("auto", "bfloat16", "float16", "float32")
METHODS = ("auto", "cpu", "engine")
DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"


def _positive(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PreheatError(f"{attribute.name} must be a positive integer, got {value!r}")


def _one_of(choices):
    def check(instance, attribute, value) -> None:
        if value not in choices:
            raise PreheatError(
                f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}"
            )

    return check


def _pattern(instance, attribute, value) -> None:
    if not isinstance(value, str) or "{rank}" not in value or "{part}" not in value or "/" in value:
        raise PreheatError(
            f"{attribute.name} must be a file name with {{rank}} and {{part}}, got {value!r}"
        )
    try:
        value.format(rank=0, part=0)
    except (KeyError, IndexError, ValueError):
        raise PreheatError(
            f"{attribute.name} may only use {{rank}} and {{part}}, got {value!r}"
        ) from None


def _size(value) -> int:
    return parse_quantity(value, "max_file_size") if isinstance(value, str) else value


@attrs.frozen
class VLLMShardArgs:
    """Shard arguments for vLLM (`engine: vllm`); defaults match vLLM's own save routine."""

    tensor_parallel_size: int = attrs.field(default=1, validator=_positive)
    dtype: str = attrs.field(default="auto", validator=_one_of(DTYPES))
    trust_remote_code: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )
    max_model_len: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    file_pattern: str = attrs.field(default=DEFAULT_PATTERN, validator=_pattern)
    max_file_size: int = attrs.field(default=5 << 30, converter=_size, validator=_positive)
    method: str = attrs.field(default="auto", validator=_one_of(METHODS))
