"""Per-cloud settings: where S3, Azure and GCS users keep their credentials, region and endpoint.

Each `resolve_*` function completes a `Settings` whose generic part
(`preheat_storage.settings.resolve`) is already filled in: the endpoint,
the credentials, the secrets to scrub from messages, and the hints an
error message gives when they are missing or wrong.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from preheat.api import PreheatError
from preheat_storage.values import first_set, is_true

if TYPE_CHECKING:
    from preheat_storage.settings import Settings

AZURITE_ACCOUNT = "devstoreaccount1"


def _collect(source: Mapping[str, Any], keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(str(source[k]) for k in keys if source.get(k))


# --- Amazon S3 and S3-compatible stores -------------------------------------------------------

_S3_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_TOKEN",
    "AWS_SSE_CUSTOMER_KEY_BASE64",
)
_S3_SECRET_KEYS = ("secret_access_key", "session_token", "token", "sse_customer_key_base64")


def resolve_s3(settings: Settings, merged: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Region, endpoint and credentials of an S3 (or S3-compatible) store."""
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
    settings.virtual_hosted = is_true(
        config.get("virtual_hosted_style_request", env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", ""))
    )
    endpoint = (
        config.get("aws_endpoint_url_s3")
        or config.get("endpoint")
        or first_set(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
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
            token = first_set(env, "AWS_SESSION_TOKEN", "AWS_TOKEN")
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
        or first_set(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
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
    if is_true(pairs.get("usedevelopmentstorage", "")):
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


def resolve_azure(settings: Settings, merged: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Account, endpoint and credentials of an Azure Blob store (or Azurite)."""
    config = settings.config
    if settings.url.account and "account_name" not in config:
        config["account_name"] = settings.url.account
    conn = merged.get("connection_string") or env.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        for key, value in parse_connection_string(str(conn)).items():
            if key not in config and not first_set(env, *_AZ_ENV[key]):
                config[key] = value
        settings.sources += ("connection string",)
    emulator = is_true(config.get("use_emulator", env.get("AZURE_STORAGE_USE_EMULATOR", "")))
    endpoint = config.get("endpoint") or first_set(env, *_AZ_ENV["endpoint"])
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


def resolve_gcs(settings: Settings, env: Mapping[str, str]) -> None:
    """Endpoint of a GCS store (obstore finds the credentials itself)."""
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
