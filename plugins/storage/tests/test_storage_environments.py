"""The ways users configure credentials, each against a server that checks them."""

from __future__ import annotations

import pytest

from preheat_storage.errors import AccessDenied
from preheat_storage.store import ObstoreStore
from preheat_testing import servers


def _use(server, monkeypatch, *drop):
    for key, value in server.env.items():
        if key not in drop:
            monkeypatch.setenv(key, value)


@pytest.mark.s3
@pytest.mark.parametrize("secret", [servers.SECRET_KEY, "not-the-secret"])
def test_aws_profile_against_seaweedfs(object_servers, monkeypatch, tmp_path, secret):
    server = object_servers.get("seaweedfs")
    _use(server, monkeypatch, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    (tmp_path / "credentials").write_text(
        f"[team]\naws_access_key_id = {servers.ACCESS_KEY}\naws_secret_access_key = {secret}\n"
    )
    (tmp_path / "config").write_text("[profile team]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    store = ObstoreStore(server.url("profile"))
    if secret == servers.SECRET_KEY:
        store.put("k", b"v")
        assert store.read("k")[0] == b"v"
    else:
        with pytest.raises(AccessDenied) as info:
            store.put("k", b"v")
        assert secret not in str(info.value) and secret not in repr(store)


@pytest.mark.s3
def test_config_file_against_seaweedfs(object_servers, monkeypatch, tmp_path):
    server = object_servers.get("seaweedfs")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[stores."s3://{server.bucket}"]
endpoint = "{server.endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "{servers.ACCESS_KEY}"
secret_access_key = "{servers.SECRET_KEY}"
connect_timeout = "2s"
"""
    )
    monkeypatch.setenv("PREHEAT_CONFIG", str(config))
    store = ObstoreStore(server.url("from-config"))
    assert servers.SECRET_KEY not in repr(store)
    store.put("k", b"v")
    assert store.read("k")[0] == b"v"


@pytest.mark.azure
def test_connection_string_against_azurite(object_servers, monkeypatch):
    server = object_servers.get("azurite")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
    store = ObstoreStore(server.url("conn"))
    assert servers.AZURITE_KEY not in repr(store)
    store.put("k", b"v")
    assert store.read("k")[0] == b"v"
    assert [i.key for i in store.list("")] == ["k"]


@pytest.mark.azure
def test_azurite_with_explicit_endpoint(object_servers, monkeypatch):
    server = object_servers.get("azurite")
    _use(server, monkeypatch, "AZURE_STORAGE_USE_EMULATOR", "AZURITE_BLOB_STORAGE_URL")
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", server.endpoint)
    monkeypatch.setenv("AZURE_ALLOW_HTTP", "true")
    store = ObstoreStore(server.url("endpoint"))
    store.put("k", b"v")
    assert store.head("k").size == 1
