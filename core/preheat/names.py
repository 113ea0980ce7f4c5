"""Names users type: repo ids, artifact names and references, run names."""

from __future__ import annotations

import re
import secrets
import time

from preheat.errors import PreheatError

_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
# a letter or digit first, then letters, digits, '_', '-' and '.'; never a trailing '.' or '..'
_ARTIFACT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9_-])?$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RUN_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def validate_repo_id(repo: str) -> str:
    """Return `repo` if it is a valid Hub repo id (`org/name` or `name`), else raise."""
    if not isinstance(repo, str) or not _REPO_RE.fullmatch(repo) or ".." in repo or "--" in repo:
        raise PreheatError(
            f"invalid repo id {repo!r}: use ORG/NAME as on the Hugging Face Hub, e.g. Qwen/Qwen3-0.6B"
        )
    return repo


def default_artifact_name(repo: str) -> str:
    """The repo's name part, lowercased, with every character outside [a-z0-9_-] replaced by '-'."""
    name = repo.rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9_-]", "-", name)


def validate_artifact_name(name: str) -> str:
    """Return `name` if it is a valid artifact name, else raise.

    A name is 1-128 characters from a-z, 0-9, '_', '-' and '.', starting with a letter or
    digit, not ending with '.' and never holding '..' (so `qwen-0.6b-model` is fine). It
    never holds ':', which keeps `NAME:VERSION` references unambiguous.
    """
    if not isinstance(name, str) or not _ARTIFACT_RE.fullmatch(name) or ".." in name:
        raise PreheatError(
            f"invalid artifact name {name!r}: use 1-128 characters from a-z, 0-9, '.', '_' and "
            "'-', starting with a letter or digit, with no '..' and no trailing '.', "
            "e.g. qwen-0.6b-model"
        )
    return name


def parse_ref(ref: str) -> tuple[str, str]:
    """Split `NAME[:VERSION]` into (name, version); the version defaults to the `latest` alias."""
    name, _, version = ref.partition(":")
    validate_artifact_name(name)
    version = version or "latest"
    if not _VERSION_RE.fullmatch(version):
        raise PreheatError(
            f"invalid artifact version {version!r} in {ref!r}: use NAME or NAME:VERSION"
        )
    return name, version


def new_run_name() -> str:
    """A fresh, sortable run name."""
    return time.strftime("r%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def validate_run_name(name: str) -> str:
    """Return `name` if it can be a run name, else raise."""
    if not _RUN_RE.fullmatch(name or ""):
        raise PreheatError(
            f"invalid run name {name!r}: run names look like r20260101-120000-ab12cd"
        )
    return name
