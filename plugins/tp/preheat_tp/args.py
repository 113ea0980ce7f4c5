"""Validators shared by the engine plugins' shard-argument classes (errors name the field)."""

from __future__ import annotations

from preheat.api import PreheatError, parse_quantity

DTYPES = ("auto", "bfloat16", "float16", "float32")
METHODS = ("auto", "cpu", "engine")
DEFAULT_PATTERN = "model-rank-{rank}-part-{part}.safetensors"
DEFAULT_MAX_FILE_SIZE = 5 << 30


def positive(instance, attribute, value) -> None:
    """An integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PreheatError(f"{attribute.name} must be a positive integer, got {value!r}")


def one_of(choices):
    """One of `choices`."""

    def check(instance, attribute, value) -> None:
        if value not in choices:
            raise PreheatError(
                f"{attribute.name} must be one of {', '.join(map(str, choices))}, got {value!r}"
            )

    return check


def boolean(instance, attribute, value) -> None:
    """True or false."""
    if not isinstance(value, bool):
        raise PreheatError(f"{attribute.name} must be true or false, got {value!r}")


def file_pattern(instance, attribute, value) -> None:
    """A file name with `{rank}` and `{part}` and no other field."""
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


def size(value):
    """Bytes from an integer or a quantity such as `5GiB` or `512Mi`."""
    return parse_quantity(value, "max_file_size") if isinstance(value, str) else value
