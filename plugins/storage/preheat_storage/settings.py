"""Everything a store is built from: defaults, preheat's config file and the environment.

Nothing here talks to the network or imports obstore, so the settings a
store would be built with can be inspected (and tested) on their own.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from preheat.api import PreheatError
from preheat_storage.credentials import resolve_azure, resolve_gcs, resolve_s3
from preheat_storage.urls import KINDS, StoreURL, parse_url
from preheat_storage.values import is_true, parse_duration, parse_size

# obstore's ClientConfig keys; each may also come from AWS_/AZURE_/GOOGLE_ + KEY in the environment.
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "root_certificate",
        "timeout",
        "user_agent",
    }
)
RETRY_KEYS = frozenset({"max_retries", "retry_timeout", "init_backoff", "max_backoff"})
PREHEAT_KEYS = frozenset(
    {
        "part_size",
        "max_concurrency",
        "gc_after",
        "conditional_writes",
        "profile",
        "connection_string",
    }
)

# Fail fast on an unreachable endpoint (seconds, not minutes), yet let a slow
# multi-gigabyte range read finish: the overall timeout is long, stalls are
# caught by the read timeout. Three retries is what the AWS SDKs do by default.
DEFAULT_CLIENT = {"connect_timeout": "3s", "read_timeout": "60s", "timeout": "30min"}
DEFAULT_RETRY = {
    "max_retries": 3,
    "retry_timeout": "20s",
    "init_backoff": "100ms",
    "max_backoff": "2s",
}
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_GC_AFTER = 24 * 3600.0
MIN_PART_SIZE = 5 << 20

_ENV_PREFIX = {"s3": "AWS_", "azure": "AZURE_", "gcs": "GOOGLE_"}


@dataclass
class Settings:
    """Everything an `ObstoreStore` is built from, resolved from options, config file and environment."""

    url: StoreURL
    config: dict[str, Any] = field(default_factory=dict)
    client_options: dict[str, Any] = field(default_factory=dict)
    retry_config: dict[str, Any] = field(default_factory=dict)
    credential_provider: Callable[[], Any] | None = None
    endpoint: str = ""
    custom_endpoint: bool = False
    region: str | None = None
    account: str | None = None
    profile: str | None = None
    virtual_hosted: bool = False
    credentials: tuple[str, str, str | None] | None = None
    credential_hint: str = ""
    endpoint_hint: str = ""
    part_size: int = DEFAULT_PART_SIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    gc_after: float = DEFAULT_GC_AFTER
    conditional_writes: bool = True
    secrets: frozenset[str] = frozenset()
    sources: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Settings(url={self.url.url!r}, endpoint={self.endpoint!r}, sources={self.sources!r})"
        )


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """$PREHEAT_CONFIG, else $PREHEAT_HOME/config.toml (PREHEAT_HOME defaults to ~/.cache/preheat)."""
    env = os.environ if environ is None else environ
    if env.get("PREHEAT_CONFIG"):
        return Path(env["PREHEAT_CONFIG"]).expanduser()
    home = env.get("PREHEAT_HOME") or str(Path("~/.cache/preheat").expanduser())
    return Path(home).expanduser() / "config.toml"


def load_config(path: Path) -> dict[str, Any]:
    """The preheat config file at `path` as a dict (empty when there is no file)."""
    if not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError) as exc:
        raise PreheatError(f"cannot read the preheat config file {path}: {exc}") from None


def store_section(config: Mapping[str, Any], url: StoreURL) -> dict[str, Any]:
    """Merge every `[stores."URL"]` table that covers `url`; the longest (most specific) wins.

    A table covers a store when its URL equals the store's, is a parent of it
    (`s3://bucket` covers `s3://bucket/team/a`), or is a bare scheme (`s3://`).
    """
    stores = config.get("stores", {})
    if not isinstance(stores, Mapping):
        raise PreheatError("the preheat config file's `stores` must be a table of store URLs")
    target = url.url
    matches = []
    for key, table in stores.items():
        base = key.rstrip("/")
        if not isinstance(table, Mapping):
            raise PreheatError(f"the preheat config file's [stores.{key!r}] must be a table")
        if base.endswith(":/") or target == base or target.startswith(base + "/"):
            scheme = base.split(":", 1)[0].lower()
            if KINDS.get(scheme) == url.kind and (scheme == url.scheme or base.endswith(":/")):
                matches.append((len(base), table))
    merged: dict[str, Any] = {}
    for _, table in sorted(matches, key=lambda m: m[0]):
        merged.update(table)
    return merged


def resolve(
    url: str | StoreURL,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Work out how to reach `url`.

    Precedence, highest first: `options`, the config file's matching
    `[stores."URL"]` tables, then the environment (which obstore itself reads
    for every store setting it knows, e.g. AWS_REGION or AZURE_STORAGE_ACCOUNT_KEY).
    """
    env = os.environ if environ is None else environ
    parsed = url if isinstance(url, StoreURL) else parse_url(url)
    path = config_path(env)
    section = store_section(load_config(path), parsed)
    merged = {**section, **(options or {})}
    settings = Settings(url=parsed)
    settings.sources = (str(path),) if section else ()

    client = dict(DEFAULT_CLIENT)
    prefix = _ENV_PREFIX.get(parsed.kind)
    if prefix:
        _check_env(env, prefix)
        # Passing client options to obstore replaces those it would read from the
        # environment, so read them here: AWS_ALLOW_HTTP, AZURE_PROXY_URL, ...
        for key in CLIENT_KEYS:
            if env.get(prefix + key.upper()):
                client[key] = env[prefix + key.upper()]
    retry = dict(DEFAULT_RETRY)
    config: dict[str, Any] = {}
    for key, value in merged.items():
        if key in CLIENT_KEYS:
            client[key] = _duration_str(value) if key.endswith("timeout") else value
        elif key in RETRY_KEYS:
            retry[key] = value
        elif key not in PREHEAT_KEYS:
            config[key] = value
    settings.client_options = client
    settings.retry_config = _retry_config(retry)
    settings.config = config
    if "part_size" in merged:
        settings.part_size = parse_size(merged["part_size"], "part_size")
        if settings.part_size < MIN_PART_SIZE:
            raise PreheatError(
                "part_size must be at least 5MiB (the S3 minimum for a multipart part)"
            )
    if "max_concurrency" in merged:
        settings.max_concurrency = max(1, int(merged["max_concurrency"]))
    if "gc_after" in merged:
        settings.gc_after = parse_duration(merged["gc_after"], "gc_after")
    if "conditional_writes" in merged:
        settings.conditional_writes = is_true(merged["conditional_writes"])

    if parsed.kind == "s3":
        resolve_s3(settings, merged, env)
    elif parsed.kind == "azure":
        resolve_azure(settings, merged, env)
    elif parsed.kind == "gcs":
        resolve_gcs(settings, env)
    else:
        settings.endpoint = "memory"
    return settings


def _check_env(env: Mapping[str, str], prefix: str) -> None:
    # obstore reads these itself and aborts on an empty URL: say so in one line instead.
    for name, value in env.items():
        url_like = re.search(r"(ENDPOINT|_URL|_URI)(_S3)?$", name)
        if url_like and name.startswith((prefix, "AZURITE_")) and not value.strip():
            raise PreheatError(f"{name} is set but empty: unset it or give it a URL")


def _duration_str(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{int(value * 1000)}ms"
    return value


def _retry_config(retry: Mapping[str, Any]) -> dict[str, Any]:
    def td(key: str) -> timedelta:
        return timedelta(seconds=parse_duration(retry[key], key))

    return {
        "max_retries": int(retry["max_retries"]),
        "retry_timeout": td("retry_timeout"),
        "backoff": {
            "init_backoff": td("init_backoff"),
            "max_backoff": td("max_backoff"),
            "base": 2,
        },
    }
