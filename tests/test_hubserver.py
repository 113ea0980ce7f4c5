"""The loopback hub answers huggingface_hub as the real hub does, and its faults are observable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from preheat_testing.hub import Fault, HubServer, git_blob_sha1

README = """---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
- llama
- tiny
---
# tiny
"""
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
WEIGHTS = bytes(range(256)) * 1200


def tiny_files() -> dict[str, bytes | str]:
    return {
        "README.md": README,
        "config.json": CONFIG,
        "model.safetensors": WEIGHTS,
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=False)


def download(hub, repo_id, filename, cache, **kw):
    kw.setdefault("token", False)
    path = hf_hub_download(repo_id, filename, endpoint=hub.endpoint, cache_dir=cache, **kw)
    return Path(path).read_bytes()


def test_snapshot_download_fetches_each_byte_once(hub, hf_env, tmp_path):
    big = tmp_path / "big.safetensors"
    big.write_bytes(os.urandom(3 << 20))
    files = {**tiny_files(), "model-00002.safetensors": big}
    sha = hub.add_repo("org/tiny", files)

    out = snapshot_download(
        "org/tiny", endpoint=hub.endpoint, cache_dir=tmp_path / "c", token=False
    )

    assert Path(out).name == sha
    for name, src in files.items():
        want = src.read_bytes() if isinstance(src, Path) else src
        want = want.encode() if isinstance(want, str) else want
        assert (Path(out) / name).read_bytes() == want
        assert hub.bytes_served(name, method="GET") == len(want)
    cdn = hub.find_requests(origin="cdn")
    assert {r.file for r in cdn} == {"model.safetensors", "model-00002.safetensors"}
    assert all(r.headers["host"].startswith("localhost:") and not r.has_auth for r in cdn)
    assert hub.total_bytes > 3 << 20


def test_lfs_metadata_matches_the_real_hub(hub, hf_env):
    sha = hub.add_repo("org/tiny", tiny_files())
    meta = get_hf_file_metadata(hub.file_url("org/tiny", "model.safetensors"), token=False)
    assert meta.commit_hash == sha
    assert meta.etag == sha256(WEIGHTS)
    assert meta.size == len(WEIGHTS)
    assert meta.location.startswith(hub.cdn_endpoint + "/lfs/")
    small = get_hf_file_metadata(hub.file_url("org/tiny", "config.json"), token=False)
    assert small.etag == git_blob_sha1(CONFIG)
    assert small.size == len(CONFIG)
    entry = hub.tree_entry("org/tiny", "model.safetensors")
    assert entry["lfs"]["oid"] == sha256(WEIGHTS)
    assert all("xet" not in k.lower() for r in hub.requests for k in r.headers)


def test_model_info(hub, api):
    sha = hub.add_repo("org/tiny", tiny_files())
    info = api.model_info("org/tiny")
    assert (info.id, info.sha, info.private, info.gated) == ("org/tiny", sha, False, False)
    assert info.pipeline_tag == "text-generation"
    assert info.library_name == "transformers"
    assert {"llama", "tiny"} <= set(info.tags)
    assert info.card_data["license"] == "apache-2.0"
    assert sorted(s.rfilename for s in info.siblings) == sorted(tiny_files())
    assert api.model_info("org/tiny", revision="main").sha == sha
    blobs = api.model_info("org/tiny", files_metadata=True)
    lfs = {s.rfilename: s.lfs for s in blobs.siblings}
    assert lfs["model.safetensors"].sha256 == sha256(WEIGHTS)
    assert lfs["config.json"] is None
    only = api.model_info("org/tiny", expand=["sha"])
    assert only.sha == sha and only.siblings is None


def test_revisions_branch_tag_commit_and_pr(hub, api, hf_env, tmp_path):
    first = hub.add_repo("org/tiny", tiny_files(), tags=["v1"])
    second = hub.add_revision("org/tiny", {**tiny_files(), "config.json": b'{"v": 2}'})
    hub.add_ref("org/tiny", "refs/pr/1", first)
    assert first != second and hub.commit_sha("org/tiny", "v1") == first
    cache = tmp_path / "c"
    assert download(hub, "org/tiny", "config.json", cache) == b'{"v": 2}'
    for rev in ("v1", first, "refs/pr/1", "refs/tags/v1"):
        assert download(hub, "org/tiny", "config.json", cache, revision=rev) == CONFIG
    assert api.model_info("org/tiny", revision="refs/pr/1").sha == first
    assert [f.path for f in api.list_repo_tree("org/tiny", revision="refs/pr/1")]
    refs = api.list_repo_refs("org/tiny", include_pull_requests=True)
    assert [b.name for b in refs.branches] == ["main"]
    assert [t.target_commit for t in refs.tags] == [first]
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]
    assert [c.commit_id for c in api.list_repo_commits("org/tiny")] == [second, first]
    assert hub.find_requests("*/resolve/refs%2Fpr%2F1/*") == []
    assert hub.find_requests("*/resolve/refs/pr/1/config.json")


def test_missing_repo_revision_entry(hub, api, hf_env, tmp_path):
    hub.add_repo("org/tiny", tiny_files())
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        download(hub, "org/tiny", "config.json", tmp_path, revision="nope")
    with pytest.raises(EntryNotFoundError):
        download(hub, "org/tiny", "nope.json", tmp_path)
    r = hub.find_requests("*nope.json")[0]
    assert r.status == 404


def test_tree_paging_folders_and_expand(hub, api):
    hub.page_size = 2
    hub.expand_page_size = 3
    files = {f"shards/model-{i:05d}.safetensors": bytes([i]) * 10 for i in range(5)}
    hub.add_repo("org/many", {**files, "config.json": CONFIG})
    entries = list(api.list_repo_tree("org/many", recursive=True))
    assert sorted(e.path for e in entries) == sorted([*files, "config.json", "shards"])
    assert hub.request_count("/api/models/org/many/tree/*") == 4
    assert [e.path for e in api.list_repo_tree("org/many")] == ["config.json", "shards"]
    assert len(list(api.list_repo_tree("org/many", path_in_repo="shards"))) == 5
    expanded = list(api.list_repo_tree("org/many", recursive=True, expand=True))
    assert len(expanded) == 7 and all(e.last_commit is not None for e in expanded)
    infos = api.get_paths_info("org/many", ["shards", "config.json", "missing"])
    assert [i.path for i in infos] == ["shards", "config.json"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/many", path_in_repo="missing"))


def test_private_repo_and_tokens(hub, hf_env):
    hub.add_repo("org/secret", tiny_files(), private=True)
    hub.add_token("hf_good", repos=["org/secret"])
    hub.add_token("hf_other", repos=[])
    with pytest.raises(RepositoryNotFoundError) as anon:
        HfApi(endpoint=hub.endpoint, token=False).model_info("org/secret")
    assert anon.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as other:
        HfApi(endpoint=hub.endpoint, token="hf_other").model_info("org/secret")
    assert other.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as bad:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").model_info("org/secret")
    assert bad.value.response.status_code == 401
    assert (
        bad.value.response.headers["X-Error-Message"]
        == "Invalid credentials in Authorization header"
    )
    assert HfApi(endpoint=hub.endpoint, token="hf_good").model_info("org/secret").private
    assert all(r.headers.get("authorization") in (None, "<redacted>") for r in hub.requests)
    assert "hf_good" not in repr(hub.requests)


def test_gated_repo(hub, hf_env, tmp_path):
    hub.add_repo("org/gated", tiny_files(), gated=True)
    hub.add_token("hf_yes", repos=["org/gated"])
    hub.add_token("hf_no", repos=["org/else"])
    assert HfApi(endpoint=hub.endpoint, token=False).model_info("org/gated").gated == "auto"
    with pytest.raises(GatedRepoError) as anon:
        download(hub, "org/gated", "config.json", tmp_path)
    assert anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as denied:
        download(hub, "org/gated", "config.json", tmp_path, token="hf_no")
    assert denied.value.response.status_code == 403
    assert download(hub, "org/gated", "model.safetensors", tmp_path, token="hf_yes") == WEIGHTS
    assert not any(r.has_auth for r in hub.find_requests(origin="cdn"))


def test_range_requests_on_both_origins(hub):
    hub.add_repo("org/tiny", tiny_files())
    with httpx.Client() as client:
        small = client.get(hub.file_url("org/tiny", "config.json"), headers={"Range": "bytes=2-5"})
        assert (small.status_code, small.content) == (206, CONFIG[2:6])
        assert small.headers["Content-Range"] == f"bytes 2-5/{len(CONFIG)}"
        redirect = client.head(hub.file_url("org/tiny", "model.safetensors"))
        assert redirect.status_code == 302
        assert redirect.headers["X-Linked-Size"] == str(len(WEIGHTS))
        cdn = redirect.headers["Location"]
        tail = client.get(cdn, headers={"Range": "bytes=-100"})
        assert (tail.status_code, tail.content) == (206, WEIGHTS[-100:])
        mid = client.get(cdn, headers={"Range": "bytes=1000-"})
        assert mid.content == WEIGHTS[1000:]
        assert client.get(cdn, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416
        assert client.get(cdn.replace("Signature=", "Signature=x")).status_code == 403
        full = client.get(hub.file_url("org/tiny", "model.safetensors"), follow_redirects=True)
        assert full.content == WEIGHTS
    ranges = [r.range for r in hub.find_requests("model.safetensors", origin="cdn")]
    assert ranges == ["bytes=-100", "bytes=1000-", f"bytes={len(WEIGHTS)}-", None, None]


def test_path_backed_files_in_parallel(hub, tmp_path):
    parts = {}
    for i in range(4):
        p = tmp_path / f"model-{i}.safetensors"
        p.write_bytes(os.urandom(2 << 20))
        parts[p.name] = p
    hub.add_repo(
        "org/disk",
        parts,
        sha256={"model-0.safetensors": sha256(parts["model-0.safetensors"].read_bytes())},
    )

    def fetch(name):
        with httpx.Client(follow_redirects=True) as c:
            return name, sha256(c.get(hub.file_url("org/disk", name)).content)

    with ThreadPoolExecutor(4) as pool:
        got = dict(pool.map(fetch, parts))
    assert got == {n: sha256(p.read_bytes()) for n, p in parts.items()}
    assert hub.bytes_served(origin="cdn") == 4 * (2 << 20)


def test_fault_status_counts_down(hub, api):
    hub.add_repo("org/tiny", tiny_files())
    fault = hub.inject(Fault("status", path="/api/models/org/tiny*", status=500, times=2))
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as err:
            api.model_info("org/tiny")
        assert err.value.response.status_code == 500
    assert api.model_info("org/tiny").id == "org/tiny"
    assert fault.hits == 2 and fault.times == 0 and hub.faults == []
    assert [r.status for r in hub.requests] == [500, 500, 200]
    assert [r.fault for r in hub.requests] == ["status", "status", None]


def test_fault_drop_is_resumed_by_huggingface_hub(hub, hf_env, tmp_path):
    hub.add_repo("org/tiny", tiny_files())
    hub.inject(Fault("drop", path="*.safetensors", origin="cdn", after_bytes=1000))
    assert download(hub, "org/tiny", "model.safetensors", tmp_path) == WEIGHTS
    first, retry = hub.find_requests("model.safetensors", origin="cdn")
    assert (first.range, first.body_bytes, first.fault) == (None, 1000, "drop")
    assert retry.status in (200, 206) and retry.fault is None
    resumed = retry.range == "bytes=1000-"
    assert retry.body_bytes == len(WEIGHTS) - (1000 if resumed else 0)


def test_fault_corrupt_flips_one_byte(hub, hf_env, tmp_path):
    hub.add_repo("org/tiny", tiny_files())
    hub.inject(Fault("corrupt", path="model.safetensors", after_bytes=7))
    got = download(hub, "org/tiny", "model.safetensors", tmp_path)
    assert len(got) == len(WEIGHTS) and got != WEIGHTS
    assert [i for i in range(len(got)) if got[i] != WEIGHTS[i]] == [7]


def test_fault_slow_limits_rate(hub):
    hub.add_repo("org/tiny", {"blob.txt": b"x" * 40_000})
    hub.inject(Fault("slow", path="*blob.txt", bytes_per_sec=80_000))
    start = time.monotonic()
    with httpx.Client() as c:
        assert c.get(hub.file_url("org/tiny", "blob.txt")).content == b"x" * 40_000
    assert time.monotonic() - start >= 0.4


def test_fault_hang_stalls_until_timeout_or_stop(hf_env):
    server = HubServer().start()
    server.add_repo("org/tiny", tiny_files())
    server.inject(Fault("hang", path="config.json", method="GET", after_bytes=4, seconds=30))
    server.inject(Fault("hang", path="model.safetensors", method="HEAD", seconds=30))
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get(server.file_url("org/tiny", "config.json"))
        with pytest.raises(httpx.ReadTimeout):
            c.head(server.file_url("org/tiny", "model.safetensors"))
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 5
    assert [r.body_bytes for r in server.requests] == [4, 0]


def test_faults_match_method_and_origin(hub, hf_env, tmp_path):
    hub.add_repo("org/tiny", tiny_files())
    head = hub.inject(Fault("status", path="*.safetensors", method="HEAD", status=502, times=None))
    body = hub.inject(Fault("drop", path="*.safetensors", origin="hub"))
    with httpx.Client() as c:
        assert c.head(hub.file_url("org/tiny", "model.safetensors")).status_code == 502
        assert c.head(hub.file_url("org/tiny", "model.safetensors")).status_code == 502
        assert c.get(hub.file_url("org/tiny", "model.safetensors")).status_code == 302
    assert head.hits == 2 and body.hits == 0
    hub.clear_faults()
    assert download(hub, "org/tiny", "model.safetensors", tmp_path) == WEIGHTS


def test_hostile_tree_entries_are_listed(hub, api):
    hostile = [
        {"type": "file", "oid": git_blob_sha1(b"x"), "size": 1, "path": name}
        for name in ("../evil.txt", "/etc/passwd", "a/../../b")
    ]
    hub.add_repo("org/evil", {"config.json": CONFIG, "../escape.txt": b"x"}, extra_entries=hostile)
    paths = {e.path for e in api.list_repo_tree("org/evil", recursive=True)}
    assert paths == {"config.json", "../escape.txt", "../evil.txt", "/etc/passwd", "a/../../b"}
    assert {e.path for e in api.list_repo_tree("org/evil")} == paths
    assert {s.rfilename for s in api.model_info("org/evil").siblings} == paths


def test_cli_serves_a_directory(tmp_path, hf_env):
    repo = tmp_path / "repos" / "org" / "cli"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_bytes(CONFIG)
    (repo / "sub" / "model.safetensors").write_bytes(WEIGHTS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "preheat_testing.hub", "--serve", str(tmp_path / "repos")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = [""]
        reader = threading.Thread(target=lambda: line.__setitem__(0, proc.stdout.readline()))
        reader.start()
        reader.join(20)
        endpoint = line[0].strip()
        assert endpoint.startswith("http://127.0.0.1:")
        api = HfApi(endpoint=endpoint, token=False)
        assert sorted(s.rfilename for s in api.model_info("org/cli").siblings) == [
            "config.json",
            "sub/model.safetensors",
        ]
        path = hf_hub_download(
            "org/cli",
            "sub/model.safetensors",
            endpoint=endpoint,
            cache_dir=tmp_path / "c",
            token=False,
        )
        assert Path(path).read_bytes() == WEIGHTS
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
