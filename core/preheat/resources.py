"""Resource requests: Kubernetes-style quantities, CPU counts and `TYPE:COUNT` accelerators."""

from __future__ import annotations

import re

import attrs

from preheat.errors import PreheatError
from preheat.models import Resources

_SUFFIXES = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)\s*(k|K|Ki|[MGTPE]i?)?B?$")

GiB = 2**30


@attrs.frozen
class Accelerator:
    """One accelerator model: its name and memory per device in bytes."""

    name: str
    memory: int


# Memory per device, by the names cloud and Kubernetes users write (case-insensitive).
ACCELERATORS: dict[str, Accelerator] = {
    key.lower(): Accelerator(name, int(gib * GiB))
    for key, name, gib in [
        ("T4", "T4", 16),
        ("L4", "L4", 24),
        ("A10", "A10", 24),
        ("A10G", "A10G", 24),
        ("L40", "L40", 48),
        ("L40s", "L40s", 48),
        ("A100", "A100 40GB", 40),
        ("A100-40G", "A100 40GB", 40),
        ("A100-80G", "A100 80GB", 80),
        ("H100", "H100 80GB", 80),
        ("H100-80G", "H100 80GB", 80),
        ("H200", "H200 141GB", 141),
        ("B200", "B200 192GB", 192),
    ]
}


def parse_quantity(value: str | int, what: str) -> int:
    """Bytes in a quantity like `16Gi`, `100G`, `512Mi` or a plain integer."""
    if isinstance(value, int):
        return value
    m = _QUANTITY_RE.match(str(value).strip())
    if not m:
        raise PreheatError(f"invalid {what} {value!r}: use a quantity like 16Gi, 100G or 512Mi")
    suffix = m.group(2) or ""
    return int(float(m.group(1)) * _SUFFIXES["k" if suffix == "K" else suffix])


def parse_cpu(value: str | int) -> float:
    """CPU cores in `4`, `0.5` or `500m`."""
    text = str(value).strip()
    try:
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise PreheatError(f"invalid cpu {value!r}: use a core count like 4, 0.5 or 500m") from None


def parse_accelerator(value: str) -> tuple[str, int]:
    """(type, count) from `TYPE:COUNT` (count defaults to 1), e.g. `L40s:4`."""
    text = str(value).strip()
    kind, sep, count = text.partition(":")
    if (
        not kind
        or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", kind)
        or (sep and not count.isdigit())
    ):
        raise PreheatError(f"invalid accelerator {value!r}: use TYPE:COUNT, e.g. L40s:4 or H100:8")
    n = int(count) if sep else 1
    if n < 1:
        raise PreheatError(f"invalid accelerator {value!r}: the count must be at least 1")
    return kind, n


def accelerator_info(kind: str) -> Accelerator | None:
    """The known memory of an accelerator type, or None when it is not in the table."""
    return ACCELERATORS.get(kind.lower())


def validate_resources(resources: Resources) -> Resources:
    """Parse every field so a bad request fails before anything starts."""
    if resources.cpu is not None:
        parse_cpu(resources.cpu)
    if resources.mem is not None:
        parse_quantity(resources.mem, "mem")
    if resources.ephemeral_storage is not None:
        parse_quantity(resources.ephemeral_storage, "ephemeral_storage")
    if resources.accelerator is not None:
        parse_accelerator(resources.accelerator)
    return resources


def human_bytes(n: int) -> str:
    """Bytes for people: `512 B`, `3.5 MiB`, `4.2 GiB`."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
