"""Store URLs and settings: the environment each cloud's users expect, plus preheat's config file.

Nothing here talks to the network or imports obstore, so the settings a
store would be built with can be inspected (and tested) on their own.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from preheat.errors import PreheatError

KINDS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "az": "azure",
    "azure": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "memory": "memory",
}

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
_TRUE = {"1", "true", "yes", "on"}

AZURITE_ACCOUNT = "devstoreaccount1"


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: `kind` is s3, gcs, azure or memory; keys live under `prefix`."""

    scheme: str
    kind: str
    netloc: str
    bucket: str
    prefix: str
    account: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}" + (f"/{self.prefix}" if self.prefix else "")

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def path(self, key: str) -> str:
        """The object path inside the bucket for a store-relative key."""
        return f"{self.prefix}/{key}" if self.prefix else key


def parse_url(url: str) -> StoreURL:
    """Parse `s3://bucket/prefix`, `gs://...`, `az://container/prefix` (also azure://,
    abfs[s]://container[@account.dfs.core.windows.net]/prefix) or `memory://name/prefix`."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    kind = KINDS.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}://" for s in KINDS)
        raise PreheatError(f"unsupported store URL scheme {scheme + '://'!r}: use one of {known}")
    if parts.query or parts.fragment:
        raise PreheatError(
            f"{scheme}:// store URLs take no query string or fragment: put settings in the "
            "environment or the preheat config file"
        )
    netloc = parts.netloc
    bucket, account = netloc, None
    if "@" in netloc:
        if kind != "azure" or ":" in netloc.split("@", 1)[0]:
            raise PreheatError(
                f"credentials in {scheme}:// store URLs are not supported: use the environment "
                "or the preheat config file"
            )
        bucket, host = netloc.split("@", 1)
        account = host.split(".", 1)[0] or None
    if not bucket and kind != "memory":
        noun = "container" if kind == "azure" else "bucket"
        raise PreheatError(
            f"store URL {url!r} names no {noun}: use {scheme}://{noun.upper()}/PREFIX"
        )
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise PreheatError(f"store URL {url!r} has a '.' or '..' path segment")
    return StoreURL(scheme, kind, netloc, bucket, "/".join(segments), account)


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
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
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


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a string such as `90s`, `500ms`, `5m`, `1h`, `2d`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in {"", *units}:
        raise PreheatError(f"{what} must be a duration such as 30s, 5m or 1h, not {value!r}")
    return float(match.group(1)) * units.get(match.group(2) or "s", 1)


def parse_size(value: Any, what: str) -> int:
    """Bytes from a number or a string such as `8MiB`, `16MB`, `1GiB`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6}
    units.update({"mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30})
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in units:
        raise PreheatError(f"{what} must be a size such as 8MiB or 16MB, not {value!r}")
    return int(float(match.group(1)) * units[match.group(2)])


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


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
        settings.conditional_writes = _truthy(merged["conditional_writes"])

    if parsed.kind == "s3":
        _resolve_s3(settings, merged, env)
    elif parsed.kind == "azure":
        _resolve_azure(settings, merged, env)
    elif parsed.kind == "gcs":
        _resolve_gcs(settings, env)
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


# --- Amazon S3 and S3-compatible stores -------------------------------------------------------

_S3_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_TOKEN",
    "AWS_SSE_CUSTOMER_KEY_BASE64",
)
_S3_SECRET_KEYS = ("secret_access_key", "session_token", "token", "sse_customer_key_base64")


def _resolve_s3(settings: Settings, merged: Mapping[str, Any], env: Mapping[str, str]) -> None:
    config = settings.config
    if "endpoint_url" in config:  # the spelling AWS's own config files use
        config["endpoint"] = config.pop("endpoint_url")
    wants_profile = "profile" in merged or not env.get("AWS_ACCESS_KEY_ID")
    if wants_profile and "access_key_id" not in config:
        _apply_aws_profile(settings, merged.get("profile"), env)

    region = (
        config.get("region")
        or env.get("AWS_REGION")
        or config.get("default_region")
        or env.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    settings.region = region
    settings.virtual_hosted = _truthy(
        config.get("virtual_hosted_style_request", env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", ""))
    )
    endpoint = (
        config.get("aws_endpoint_url_s3")
        or config.get("endpoint")
        or _first(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
    )
    settings.custom_endpoint = bool(endpoint)
    if endpoint:
        settings.endpoint = str(endpoint).rstrip("/")
    elif settings.virtual_hosted:
        settings.endpoint = f"https://{settings.url.bucket}.s3.{region}.amazonaws.com"
    else:
        settings.endpoint = f"https://s3.{region}.amazonaws.com"

    key_id = config.get("access_key_id") or env.get("AWS_ACCESS_KEY_ID")
    secret = config.get("secret_access_key") or env.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        token = config.get("session_token") or config.get("token")
        if token is None and "access_key_id" not in config:
            token = _first(env, "AWS_SESSION_TOKEN", "AWS_TOKEN")
        settings.credentials = (str(key_id), str(secret), token)
    settings.secrets = _collect(config, _S3_SECRET_KEYS) | _collect(env, _S3_SECRET_ENV)
    settings.credential_hint = (
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, "
        "or the store's table in the preheat config file"
    )
    settings.endpoint_hint = "AWS_ENDPOINT_URL or `endpoint` in the preheat config file"


def _apply_aws_profile(settings: Settings, profile: str | None, env: Mapping[str, str]) -> None:
    """Static keys, region and endpoint from ~/.aws/credentials and ~/.aws/config.

    obstore itself does not read the shared AWS files. Profiles that need
    an SDK (SSO, assume-role, credential_process) are delegated to boto3 when
    it is installed.
    """
    explicit = profile or env.get("AWS_PROFILE")
    name = explicit or "default"
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
    conf_file = Path(env.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    creds = _ini_section(creds_file, name)
    conf = _ini_section(conf_file, name if name == "default" else f"profile {name}")
    if conf is None and name != "default":
        conf = _ini_section(conf_file, name)
    if creds is None and conf is None:
        if explicit:
            raise PreheatError(f"AWS profile {name!r} is not in {creds_file} or {conf_file}")
        return
    values = {**(conf or {}), **(creds or {})}
    config = settings.config
    if values.get("aws_access_key_id") and values.get("aws_secret_access_key"):
        config["access_key_id"] = values["aws_access_key_id"]
        config["secret_access_key"] = values["aws_secret_access_key"]
        if values.get("aws_session_token"):
            config["session_token"] = values["aws_session_token"]
    elif explicit and not env.get("AWS_ACCESS_KEY_ID"):
        settings.credential_provider = _boto3_provider(name, values)
    if values.get("region") and not (
        "region" in config or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    ):
        config["region"] = values["region"]
    if values.get("endpoint_url") and not (
        "endpoint" in config
        or _first(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
    ):
        config["endpoint"] = values["endpoint_url"]
    settings.profile = name
    settings.sources += (f"AWS profile {name!r}",)


def _boto3_provider(name: str, values: Mapping[str, str]) -> Callable[[], Any]:
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        how = next(
            (
                k
                for k in ("sso_session", "sso_start_url", "role_arn", "credential_process")
                if k in values
            ),
            "no static keys",
        )
        raise PreheatError(
            f"AWS profile {name!r} uses {how}: install boto3 (pip install 'preheat-storage[boto3]') "
            "or export AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from None
    return Boto3CredentialProvider(boto3.Session(profile_name=name))


def _ini_section(path: Path, name: str) -> dict[str, str] | None:
    if not path.is_file():
        return None
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise PreheatError(f"cannot parse {path}: {exc.__class__.__name__}") from None
    return dict(parser.items(name)) if parser.has_section(name) else None


# --- Azure Blob Storage -----------------------------------------------------------------------

_AZ_SECRET_ENV = (
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CONNECTION_STRING",
)
_AZ_SECRET_KEYS = (
    "account_key",
    "access_key",
    "master_key",
    "sas_key",
    "sas_token",
    "token",
    "client_secret",
)
_AZ_ENV = {
    "account_name": ("AZURE_STORAGE_ACCOUNT_NAME",),
    "account_key": (
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_MASTER_KEY",
    ),
    "sas_key": ("AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN"),
    "endpoint": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
    "use_emulator": ("AZURE_STORAGE_USE_EMULATOR",),
}


def parse_connection_string(text: str) -> dict[str, str]:
    """Azure's `Key=Value;...` connection string as obstore settings (unknown keys ignored)."""
    pairs = {}
    for part in text.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            pairs[key.strip().lower()] = value.strip()
    out: dict[str, str] = {}
    if _truthy(pairs.get("usedevelopmentstorage", "")):
        out["use_emulator"] = "true"
    for src, dst in (("accountname", "account_name"), ("accountkey", "account_key")):
        if pairs.get(src):
            out[dst] = pairs[src]
    if pairs.get("sharedaccesssignature"):
        out["sas_key"] = pairs["sharedaccesssignature"]
    if pairs.get("blobendpoint"):
        out["endpoint"] = pairs["blobendpoint"].rstrip("/")
    elif pairs.get("endpointsuffix") and pairs.get("accountname"):
        proto = pairs.get("defaultendpointsprotocol", "https")
        out["endpoint"] = f"{proto}://{pairs['accountname']}.blob.{pairs['endpointsuffix']}"
    return out


def _resolve_azure(settings: Settings, merged: Mapping[str, Any], env: Mapping[str, str]) -> None:
    config = settings.config
    if settings.url.account and "account_name" not in config:
        config["account_name"] = settings.url.account
    conn = merged.get("connection_string") or env.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        for key, value in parse_connection_string(str(conn)).items():
            if key not in config and not _first(env, *_AZ_ENV[key]):
                config[key] = value
        settings.sources += ("connection string",)
    emulator = _truthy(config.get("use_emulator", env.get("AZURE_STORAGE_USE_EMULATOR", "")))
    endpoint = config.get("endpoint") or _first(env, *_AZ_ENV["endpoint"])
    account = config.get("account_name") or env.get("AZURE_STORAGE_ACCOUNT_NAME")
    settings.account = account or (AZURITE_ACCOUNT if emulator else None)
    settings.custom_endpoint = bool(emulator or endpoint)
    if emulator:
        base = (env.get("AZURITE_BLOB_STORAGE_URL") or "http://127.0.0.1:10000").rstrip("/")
        settings.endpoint = f"{base}/{account or AZURITE_ACCOUNT}"
    elif endpoint:
        settings.endpoint = str(endpoint).rstrip("/")
    else:
        settings.endpoint = f"https://{account or '<account>'}.blob.core.windows.net"
    # Azure's SDKs accept plain HTTP for the emulator and for a connection string's
    # http:// BlobEndpoint; any other http:// endpoint needs allow_http like S3.
    conn_endpoint = parse_connection_string(str(conn)).get("endpoint") if conn else None
    implicit_http = emulator or (conn_endpoint and config.get("endpoint") == conn_endpoint)
    explicit = "allow_http" in merged or env.get("AZURE_ALLOW_HTTP")
    if settings.endpoint.startswith("http://") and implicit_http and not explicit:
        settings.client_options["allow_http"] = True
    secrets = _collect(config, _AZ_SECRET_KEYS) | _collect(env, _AZ_SECRET_ENV)
    if conn:
        secrets |= _collect(parse_connection_string(str(conn)), ("account_key", "sas_key"))
        secrets |= {str(conn)}
    settings.secrets = secrets
    settings.credential_hint = (
        "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, "
        "AZURE_STORAGE_CONNECTION_STRING, or the store's table in the preheat config file"
    )
    settings.endpoint_hint = (
        "AZURE_STORAGE_ENDPOINT, AZURITE_BLOB_STORAGE_URL with AZURE_STORAGE_USE_EMULATOR, "
        "or `endpoint` in the preheat config file"
    )


# --- Google Cloud Storage ---------------------------------------------------------------------

_GCS_SECRET_ENV = ("GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN")
_GCS_SECRET_KEYS = ("service_account_key", "bearer_token")


def _resolve_gcs(settings: Settings, env: Mapping[str, str]) -> None:
    config = settings.config
    custom = config.get("base_url") or env.get("GOOGLE_BASE_URL")
    settings.custom_endpoint = bool(custom)
    base = custom or "https://storage.googleapis.com"
    settings.endpoint = str(base).rstrip("/")
    settings.secrets = _collect(config, _GCS_SECRET_KEYS) | _collect(env, _GCS_SECRET_ENV)
    settings.credential_hint = (
        "GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT, or the store's table in the "
        "preheat config file"
    )
    settings.endpoint_hint = "GOOGLE_BASE_URL or `base_url` in the preheat config file"


def _collect(source: Mapping[str, Any], keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(str(source[k]) for k in keys if source.get(k))
