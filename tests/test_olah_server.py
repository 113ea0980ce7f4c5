"""olah, a real third-party hub mirror, serves local git repos to huggingface_hub offline."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2 as httpx
import pytest
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import RepositoryNotFoundError

pytestmark = pytest.mark.olah

WEIGHTS = os.urandom(150_000)
FILES = {
    "README.md": "---\nlicense: mit\n---\n# tiny\n",
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": WEIGHTS,
    "tokenizer/tokenizer.json": b"{}",
}


@pytest.fixture(scope="module")
def olah():
    from preheat_testing.olah import OlahServer, OlahUnavailable, ensure_olah_venv

    try:
        ensure_olah_venv()
    except OlahUnavailable as exc:
        pytest.skip(f"olah venv cannot be created: {exc}")
    with OlahServer({"org/tiny": FILES}, tags={"org/tiny": ["v1"]}) as server:
        yield server


@pytest.fixture
def api(olah, hf_env):
    return HfApi(endpoint=olah.endpoint, token=False)


def test_model_info_needs_an_explicit_revision(olah, api):
    sha = olah.commits["org/tiny"]
    for rev in ("main", "v1", sha):
        info = api.model_info("org/tiny", revision=rev)
        assert info.sha == sha
        assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/tiny")


def test_tree_lists_lfs_sha256(olah, api):
    sha = olah.commits["org/tiny"]
    for rev in ("main", sha):
        entries = {e.path: e for e in api.list_repo_tree("org/tiny", recursive=True, revision=rev)}
        assert set(entries) == {*FILES, "tokenizer"}
        weights = entries["model.safetensors"]
        assert weights.size == len(WEIGHTS)
        assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
        assert entries["config.json"].lfs is None


def test_downloads_by_branch_tag_and_commit(olah, hf_env, tmp_path):
    sha = olah.commits["org/tiny"]
    for rev in ("main", "v1", sha):
        for name in ("model.safetensors", "tokenizer/tokenizer.json"):
            path = hf_hub_download(
                "org/tiny",
                name,
                revision=rev,
                endpoint=olah.endpoint,
                cache_dir=tmp_path,
                token=False,
            )
            want = FILES[name]
            assert Path(path).read_bytes() == (want.encode() if isinstance(want, str) else want)
    meta = get_hf_file_metadata(
        hf_hub_url("org/tiny", "model.safetensors", revision="main", endpoint=olah.endpoint),
        token=False,
    )
    assert (meta.commit_hash, meta.etag, meta.size) == (
        sha,
        hashlib.sha256(WEIGHTS).hexdigest(),
        len(WEIGHTS),
    )


def test_snapshot_download(olah, hf_env, tmp_path):
    out = Path(
        snapshot_download(
            "org/tiny", revision="main", endpoint=olah.endpoint, cache_dir=tmp_path, token=False
        )
    )
    assert out.name == olah.commits["org/tiny"]
    assert (out / "model.safetensors").read_bytes() == WEIGHTS


def test_resolve_serves_lfs_inline_and_ignores_range(olah):
    url = hf_hub_url("org/tiny", "model.safetensors", revision="main", endpoint=olah.endpoint)
    with httpx.Client() as client:
        head = client.head(url)
        ranged = client.get(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 200 and "x-linked-etag" not in head.headers
    assert ranged.status_code == 200 and ranged.content == WEIGHTS
