"""`SGLangShardArgs`: how to pre-shard for SGLang."""

from __future__ import annotations

import attrs

from preheat.api import PreheatError
from preheat_tp import args as v


def _no_dp_attention(instance, attribute, value) -> None:
    if (attribute.name == "attn_dp_size" and value != 1) or (
        attribute.name == "enable_dp_attention" and value
    ):
        raise PreheatError(
            f"{attribute.name}: DP-attention layouts shard attention over tp/dp and replicate embeddings; "
            "preheat does not write them yet: pre-shard with plain tp, or use method: engine"
        )


@attrs.frozen
class SGLangShardArgs:
    """Shard arguments for SGLang (`engine: sglang`); names follow SGLang's server flags."""

    tp: int = attrs.field(default=1, validator=v.positive)
    dtype: str = attrs.field(default="auto", validator=v.one_of(v.DTYPES))
    trust_remote_code: bool = attrs.field(default=False, validator=v.boolean)
    file_pattern: str = attrs.field(default=v.DEFAULT_PATTERN, validator=v.file_pattern)
    max_file_size: int = attrs.field(
        default=v.DEFAULT_MAX_FILE_SIZE, converter=v.size, validator=v.positive
    )
    method: str = attrs.field(default="auto", validator=v.one_of(v.METHODS))
    context_length: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.positive)
    )
    attn_dp_size: int = attrs.field(default=1, validator=[v.positive, _no_dp_attention])
    enable_dp_attention: bool = attrs.field(default=False, validator=[v.boolean, _no_dp_attention])
