"""End to end against olah, a real third-party hub mirror serving local git repos offline.

olah differs from the Hub where it matters to a fetcher: no CDN redirect, Range ignored
(200 with the whole body), no bare `/api/models/REPO`, plain files verified by git blob id.
"""

from __future__ import annotations

import hashlib
import math

import pytest

pytestmark = pytest.mark.olah

REPO = "tiny/Llama-Olah"


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama_multipart", subfolders=True)


@pytest.fixture(scope="module")
def olah(model):
    from preheat_testing.olah import OlahServer, OlahUnavailable, ensure_olah_venv

    try:
        ensure_olah_venv()
        server = OlahServer({REPO: model.files}, tags={REPO: ["v1.0"]}).start()
    except OlahUnavailable as exc:
        pytest.skip(f"olah is not available here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def env(preheat_env, olah):
    preheat_env.set("HF_ENDPOINT", olah.endpoint)
    return preheat_env


def test_prefetch_from_olah_publishes_a_verified_copy(env, olah, model, read_tree):
    result = env.cli("prefetch", "hf-model", REPO, "--wait", "--json").ok().json
    assert result["status"] == "succeeded" and result["reused"] is False
    assert result["artifact"]["name"] == "llama-olah"
    assert read_tree(result["artifact"]["path"]) == model.files

    manifest = env.catalog().resolve("llama-olah")
    assert manifest.source.commit == olah.commits[REPO]
    assert manifest.source.revision == "main"
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in model.files.items()
    }
    assert manifest.serving.parameters == sum(math.prod(w.shape) for w in model.weights.values())
    assert manifest.metadata.architecture == "LlamaForCausalLM"

    again = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--json").ok().json
    assert again["reused"] is True and again["artifact"] == result["artifact"]


def test_tag_and_commit_pin_the_same_version_on_olah(env, olah):
    by_tag = env.prefetch(REPO, revision="v1.0", include=["*.json"])
    by_commit = env.prefetch(REPO, revision=olah.commits[REPO], include=["*.json"])
    assert by_tag.status == by_commit.status == "succeeded", (by_tag.error, by_commit.error)
    assert by_tag.artifact == by_commit.artifact and by_commit.reused is True


def test_include_exclude_on_olah(env, model, read_tree):
    record = env.prefetch(REPO, include=["*.safetensors", "original/*"], exclude=["model-00002*"])
    assert record.status == "succeeded", record.error
    path = env.store / "artifacts" / record.artifact.name / record.artifact.version
    assert read_tree(path) == {
        p: b for p, b in model.files.items() if p in {
            "model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors", "original/params.json"}
    }  # fmt: skip


def test_a_missing_repo_on_olah_is_one_clear_line(env):
    line = env.cli_in_process("prefetch", "hf-model", "tiny/Not-There", "--wait").error_line()
    assert "tiny/Not-There" in line and "not found" in line
    assert env.catalog().artifacts() == []
