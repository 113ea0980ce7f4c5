"""URL parsing and settings resolution (no network); gs:// is covered here only."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

import pytest

from preheat.api import PreheatError
from preheat_storage.credentials import parse_connection_string
from preheat_storage.errors import Unreachable
from preheat_storage.settings import DEFAULT_PART_SIZE, config_path, resolve
from preheat_storage.store import ObstoreStore
from preheat_storage.urls import parse_url
from preheat_storage.values import parse_duration, parse_size


@pytest.mark.parametrize(
    ("url", "kind", "bucket", "prefix", "account"),
    [
        ("s3://bucket", "s3", "bucket", "", None),
        ("s3://bucket/", "s3", "bucket", "", None),
        ("s3://bucket/team/models/", "s3", "bucket", "team/models", None),
        ("s3a://bucket/p", "s3", "bucket", "p", None),
        ("gs://bucket/a/b", "gcs", "bucket", "a/b", None),
        ("az://container/p", "azure", "container", "p", None),
        ("azure://container/p", "azure", "container", "p", None),
        ("abfs://container/p", "azure", "container", "p", None),
        ("abfss://fs@acct.dfs.core.windows.net/p", "azure", "fs", "p", "acct"),
        ("memory://", "memory", "", "", None),
        ("memory://name/p//q", "memory", "name", "p/q", None),
    ],
)
def test_parse_url(url, kind, bucket, prefix, account):
    parsed = parse_url(url)
    assert (parsed.kind, parsed.bucket, parsed.prefix, parsed.account) == (
        kind,
        bucket,
        prefix,
        account,
    )
    assert parsed.uri("k/v") == parsed.url + "/k/v"
    assert not parsed.url.endswith("/") or parsed.url == "memory://"


def test_config_path(tmp_path):
    assert config_path({"PREHEAT_CONFIG": "/x/c.toml"}).as_posix() == "/x/c.toml"
    assert config_path({"PREHEAT_HOME": str(tmp_path)}) == tmp_path / "config.toml"
    assert config_path({}).as_posix().endswith(".cache/preheat/config.toml")


def test_defaults_fail_fast():
    settings = resolve("s3://bucket/p", environ={})
    assert settings.client_options["connect_timeout"] == "3s"
    assert settings.retry_config["max_retries"] == 3
    assert settings.retry_config["retry_timeout"] == timedelta(seconds=20)
    assert settings.part_size == DEFAULT_PART_SIZE and settings.conditional_writes
    assert settings.endpoint == "https://s3.us-east-1.amazonaws.com"


def test_s3_environment():
    env = {
        "AWS_ENDPOINT_URL": "http://minio.local:9000/",
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIA1",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "tok3n-value",
        "AWS_CONNECT_TIMEOUT": "1s",
    }
    settings = resolve("s3://bucket/p", environ=env)
    assert settings.endpoint == "http://minio.local:9000"
    assert settings.region == "eu-west-1"
    assert settings.client_options["allow_http"] == "true"
    assert settings.client_options["connect_timeout"] == "1s"
    assert settings.credentials == ("AKIA1", "s3cr3t-value", "tok3n-value")
    assert {"s3cr3t-value", "tok3n-value"} <= settings.secrets
    assert settings.config == {}  # obstore reads the rest of AWS_* itself
    assert resolve("s3://b", environ={"AWS_REGION": "ap-south-1"}).region == "ap-south-1"


def test_config_file_tables_merge(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        """
[stores."s3://"]
region = "us-west-2"
max_retries = 5

[stores."s3://bucket"]
endpoint = "http://127.0.0.1:9000"
allow_http = true
virtual_hosted_style_request = false
connect_timeout = 2

[stores."s3://bucket/team"]
part_size = "16MiB"
gc_after = "1h"
conditional_writes = false

[stores."s3://bucket-two"]
region = "never"

[stores."gs://bucket"]
region = "never"
"""
    )
    env = {"PREHEAT_CONFIG": str(path), "AWS_ENDPOINT_URL": "http://ignored:1"}
    settings = resolve("s3://bucket/team/models", environ=env)
    assert settings.config == {
        "region": "us-west-2",
        "endpoint": "http://127.0.0.1:9000",
        "virtual_hosted_style_request": False,
    }
    assert settings.endpoint == "http://127.0.0.1:9000"  # the store's table beats the environment
    assert settings.client_options["allow_http"] is True
    assert settings.client_options["connect_timeout"] == "2000ms"
    assert settings.retry_config["max_retries"] == 5
    assert settings.part_size == 16 << 20 and settings.gc_after == 3600
    assert not settings.conditional_writes
    assert settings.sources == (str(path),)
    other = resolve("s3://bucket/other", environ=env, options={"region": "eu-north-1"})
    assert other.part_size == DEFAULT_PART_SIZE and other.region == "eu-north-1"


def test_config_file_errors(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[stores\n")
    with pytest.raises(PreheatError, match="cannot read the preheat config file"):
        resolve("s3://b", environ={"PREHEAT_CONFIG": str(path)})
    with pytest.raises(PreheatError, match="at least 5MiB"):
        resolve("s3://b", environ={}, options={"part_size": "1MiB"})
    with pytest.raises(PreheatError, match="unknown setting 'no_such_setting'"):
        ObstoreStore("s3://b", options={"no_such_setting": 1})


def test_durations_and_sizes():
    assert parse_duration("90s", "x") == 90 and parse_duration("5m", "x") == 300
    assert parse_duration("2d", "x") == 172800 and parse_duration(1.5, "x") == 1.5
    assert parse_duration("250ms", "x") == 0.25
    assert parse_size("8MiB", "x") == 8 << 20 and parse_size("16MB", "x") == 16_000_000
    assert parse_size(1234, "x") == 1234
    with pytest.raises(PreheatError):
        parse_duration("soon", "gc_after")
    with pytest.raises(PreheatError):
        parse_size("big", "part_size")


def _aws_files(tmp_path, credentials: str, config: str = "") -> dict[str, str]:
    (tmp_path / "credentials").write_text(credentials)
    (tmp_path / "config").write_text(config)
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
    }


def test_aws_profile_static_keys(tmp_path):
    env = _aws_files(
        tmp_path,
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = default-secret\n"
        "[dev]\naws_access_key_id = AKIADEV\naws_secret_access_key = dev-secret\n"
        "aws_session_token = dev-token\n",
        "[profile dev]\nregion = eu-central-1\nendpoint_url = http://dev.local:9000\n",
    )
    default = resolve("s3://b", environ=env)
    assert default.config["access_key_id"] == "AKIADEFAULT"
    assert default.credentials == ("AKIADEFAULT", "default-secret", None)
    dev = resolve("s3://b", environ={**env, "AWS_PROFILE": "dev"})
    assert dev.credentials == ("AKIADEV", "dev-secret", "dev-token")
    assert dev.region == "eu-central-1" and dev.endpoint == "http://dev.local:9000"
    assert "dev-secret" in dev.secrets and "dev-token" in dev.secrets
    # Keys in the environment win over any profile, as in the AWS SDKs.
    explicit = resolve(
        "s3://b",
        environ={
            **env,
            "AWS_PROFILE": "dev",
            "AWS_ACCESS_KEY_ID": "AKIAENV",
            "AWS_SECRET_ACCESS_KEY": "env-secret",
            "AWS_REGION": "us-east-2",
        },
    )
    assert explicit.credentials == ("AKIAENV", "env-secret", None)
    assert "access_key_id" not in explicit.config and explicit.region == "us-east-2"
    via_config = resolve("s3://b", environ=env, options={"profile": "dev"})
    assert via_config.credentials[0] == "AKIADEV"


def test_aws_profile_errors(tmp_path, monkeypatch):
    env = _aws_files(tmp_path, "", "[profile sso]\nsso_session = corp\nregion = us-east-1\n")
    with pytest.raises(PreheatError, match="AWS profile 'nope' is not in"):
        resolve("s3://b", environ={**env, "AWS_PROFILE": "nope"})
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(PreheatError, match="uses sso_session: install boto3"):
        resolve("s3://b", environ={**env, "AWS_PROFILE": "sso"})


def test_azure_connection_strings():
    azurite = parse_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )
    assert azurite == {
        "account_name": "devstoreaccount1",
        "account_key": "a2V5",
        "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
    }
    cloud = parse_connection_string(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    )
    assert cloud["endpoint"] == "https://acct.blob.core.windows.net"
    sas = parse_connection_string(
        "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=x"
    )
    assert sas == {"endpoint": "https://acct.blob.core.windows.net", "sas_key": "sv=1&sig=x"}
    assert parse_connection_string("UseDevelopmentStorage=true") == {"use_emulator": "true"}


def test_azure_settings():
    conn = "AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;BlobEndpoint=http://127.0.0.1:10000/acct"
    settings = resolve("az://container/p", environ={"AZURE_STORAGE_CONNECTION_STRING": conn})
    assert settings.config["account_key"] == "c2VjcmV0LWtleQ=="
    assert (
        settings.client_options["allow_http"] is True
    )  # http:// in a connection string is explicit
    assert "c2VjcmV0LWtleQ==" in settings.secrets
    # A specific variable beats the connection string's value.
    named = resolve(
        "az://c",
        environ={"AZURE_STORAGE_CONNECTION_STRING": conn, "AZURE_STORAGE_ACCOUNT_NAME": "other"},
    )
    assert "account_name" not in named.config
    emulator = resolve(
        "az://c",
        environ={
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": "http://127.0.0.1:10500",
        },
    )
    assert emulator.endpoint == "http://127.0.0.1:10500/devstoreaccount1"
    cloud = resolve("abfss://fs@acct.dfs.core.windows.net/p", environ={})
    assert cloud.config == {"account_name": "acct"}
    assert cloud.endpoint == "https://acct.blob.core.windows.net"
    assert "allow_http" not in cloud.client_options


def _service_account(tmp_path) -> str:
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "1",
                "private_key": pem,
                "client_email": "preheat@p.iam.gserviceaccount.com",
                "token_uri": "http://127.0.0.1:1/token",
            }
        )
    )
    return str(path)


def test_gcs_settings_from_environment(tmp_path, monkeypatch):
    sa = _service_account(tmp_path)
    settings = resolve(
        "gs://bucket/models",
        environ={
            "GOOGLE_APPLICATION_CREDENTIALS": sa,
            "GOOGLE_SERVICE_ACCOUNT_KEY": '{"k": "gcs-secret"}',
        },
    )
    assert settings.endpoint == "https://storage.googleapis.com"
    assert '{"k": "gcs-secret"}' in settings.secrets
    assert "GOOGLE_APPLICATION_CREDENTIALS" in settings.credential_hint
    assert (
        resolve("gs://b", environ={"GOOGLE_BASE_URL": "http://127.0.0.1:4443/"}).endpoint
        == "http://127.0.0.1:4443"
    )
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", sa)
    store = ObstoreStore("gs://bucket/models")  # builds without touching the network
    assert store.uri("a/b") == "gs://bucket/models/a/b"
    assert (
        repr(store)
        == "ObstoreStore('gs://bucket/models', endpoint='https://storage.googleapis.com')"
    )
    store.close()


def test_gcs_unreachable_fails_fast(monkeypatch):
    monkeypatch.setenv("GOOGLE_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GOOGLE_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("GOOGLE_ALLOW_HTTP", "true")
    store = ObstoreStore("gs://bucket/models")
    start = time.monotonic()
    with pytest.raises(Unreachable, match="cannot reach http://127.0.0.1:1"):
        store.head("k")
    assert time.monotonic() - start < 8


def test_streaming_env_has_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "streaming-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env = ObstoreStore("s3://bucket/p").streaming_env()
    assert env == {
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://minio.local:9000",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
    }
    azure = ObstoreStore("abfss://fs@acct.dfs.core.windows.net/p").streaming_env()
    assert azure == {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}
    assert ObstoreStore("memory://x").streaming_env() == {}
