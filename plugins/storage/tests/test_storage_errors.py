"""Failures a user can act on: one line, within seconds, with no secret in sight."""

from __future__ import annotations

import base64
import time

import pytest

from preheat.api import PreheatError
from preheat_storage.errors import (
    AccessDenied,
    BucketNotFound,
    NoCredentials,
    Scrubber,
    Unreachable,
)
from preheat_storage.store import ObstoreStore

WRONG_SECRET = "wrong-secret-do-not-print-0123456789"
WRONG_AZURE_KEY = base64.b64encode(b"wrong-azure-key-do-not-print-0123456789").decode()


def _fails_fast(call, expected, *, within=8.0) -> PreheatError:
    start = time.monotonic()
    with pytest.raises(expected) as info:
        call()
    assert time.monotonic() - start < within
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 400
    return info.value


def test_unknown_bucket(remote):
    store = ObstoreStore(remote.url("p", bucket="no-such-bucket-preheat"))
    noun = "container" if remote.kind == "azure" else "bucket"
    calls = [
        lambda: store.head("k"),
        lambda: store.read("k"),
        lambda: list(store.list("")),
        lambda: store.read_range("k", 0, 1),
        lambda: store.open_reader("k"),
    ]
    if remote.name != "seaweedfs":  # SeaweedFS creates a missing bucket on the first PUT
        calls += [lambda: store.put("k", b"x"), lambda: store.put("k", b"x", if_absent=True)]
    for call in calls:
        error = _fails_fast(call, BucketNotFound)
        assert str(error).startswith(
            f"{noun} 'no-such-bucket-preheat' does not exist at {remote.server.endpoint}"
        )
        assert "create it or fix --store" in str(error)


def test_wrong_credentials(remote, monkeypatch):
    if remote.name == "moto":
        pytest.skip("moto accepts any credentials")
    if remote.kind == "azure":
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", WRONG_AZURE_KEY)
        secret = WRONG_AZURE_KEY
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
        secret = WRONG_SECRET
    store = ObstoreStore(remote.url("p"))
    assert secret not in repr(store) and secret not in str(store)
    for call in (
        lambda: store.head("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list("")),
    ):
        error = _fails_fast(call, AccessDenied)
        assert str(error).startswith(f"access denied to {store.url} at {remote.server.endpoint}")
        assert secret not in str(error) and secret not in repr(error)
    assert secret not in repr(store.settings)


def test_unreachable_endpoint(remote, monkeypatch):
    if remote.kind == "azure":
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:1")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    store = ObstoreStore(remote.url("p"))
    for call in (
        lambda: store.head("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list("")),
    ):
        error = _fails_fast(call, Unreachable)
        assert "cannot reach http://127.0.0.1:1" in str(error) and "connection refused" in str(
            error
        )


@pytest.mark.s3
def test_plain_http_needs_allow_http(object_servers, monkeypatch):
    server = object_servers.get("moto")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    error = _fails_fast(lambda: ObstoreStore(server.url("p")).head("k"), PreheatError)
    assert "plain HTTP" in str(error) and "AWS_ALLOW_HTTP=true" in str(error)


@pytest.mark.s3
def test_no_credentials(object_servers, monkeypatch):
    server = object_servers.get("moto")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")  # no instance role here
    error = _fails_fast(lambda: ObstoreStore(server.url("p")).head("k"), NoCredentials)
    assert "AWS_ACCESS_KEY_ID" in str(error) and "AWS_PROFILE" in str(error)


def test_empty_endpoint_variable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    with pytest.raises(PreheatError, match="AWS_ENDPOINT_URL is set but empty"):
        ObstoreStore("s3://bucket/p")


def test_secrets_never_in_repr_or_errors(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-do-not-print")
    store = ObstoreStore(
        "s3://bucket/p", options={"endpoint": "http://127.0.0.1:1", "allow_http": True}
    )
    for text in (repr(store), str(store), repr(store.settings), store.uri("k")):
        assert WRONG_SECRET not in text and "session-token" not in text
    error = _fails_fast(lambda: store.head("k"), Unreachable)
    assert WRONG_SECRET not in str(error)


def test_scrubber_removes_values_and_signed_queries():
    scrub = Scrubber({"hunter2-secret"})
    text = (
        "PUT https://acct.blob.core.windows.net/c/k?sv=2021&sig=abc%2Fdef failed; key hunter2-secret; "
        "X-Amz-Signature=0badc0de; proxy http://user:pa55word@proxy.local:3128"
    )
    out = scrub(text)
    assert "hunter2" not in out and "abc%2Fdef" not in out and "0badc0de" not in out
    assert "pa55word" not in out and "http://***@proxy.local:3128" in out
    assert "https://acct.blob.core.windows.net/c/k" in out


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://x/y", "unsupported store URL scheme"),
        ("s3:///prefix", "names no bucket"),
        ("az:///prefix", "names no container"),
        ("s3://bucket/p?sig=very-secret", "no query string"),
        ("s3://AKIA:very-secret@bucket/p", "credentials in s3:// store URLs"),
    ],
)
def test_bad_urls(url, fragment):
    with pytest.raises(PreheatError, match=fragment) as info:
        ObstoreStore(url)
    assert "very-secret" not in str(info.value)
