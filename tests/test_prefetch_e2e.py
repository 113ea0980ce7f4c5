"""End to end: prefetch from a loopback hub into a local store, then browse, resolve and reuse.

The CLI and the detached worker run as real subprocesses; checks that are about the
pipeline rather than the process boundary run it in-process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re

import pytest

from preheat_testing.hub import Fault

REPO = "tiny/Llama-Multi.Part"
QWEN = "Qwen/Qwen3-0.6B"
NAME = "llama-multi-part"
RUN_RE = re.compile(r"^r[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
WEIGHTS = "*.safetensors"


@pytest.fixture(scope="module")
def repos(module_hub, tiny_model):
    """Repos on the module hub: REPO has a tagged first commit, a newer main and a `dev` branch."""
    v1 = tiny_model("llama_multipart", subfolders=True, seed=1)
    main = tiny_model("llama_multipart", subfolders=True)
    dev = tiny_model("llama_multipart", seed=2)
    sha_v1 = module_hub.add_repo(REPO, v1.files, tags=["v1.0"])
    sha_main = module_hub.add_revision(REPO, main.files, branch="main", title="retrain")
    sha_dev = module_hub.add_revision(REPO, dev.files, branch="dev", parent=sha_main, title="dev")
    qwen = tiny_model("qwen3_qk_norm")
    module_hub.add_repo(QWEN, qwen.files)
    return {
        "main": (main, sha_main),
        "v1": (v1, sha_v1),
        "dev": (dev, sha_dev),
        "qwen": (qwen, module_hub.commit_sha(QWEN)),
    }


@pytest.fixture(scope="module")
def published(module_hub, module_preheat_env, repos):
    """`preheat prefetch hf-model REPO --wait --json`, once for the module."""
    env = module_preheat_env.connect(module_hub)
    result = env.cli("prefetch", "hf-model", REPO, "--wait", "--json").ok()
    return result.json


@pytest.fixture
def env(preheat_env, module_hub, repos):
    """A fresh store, pointed at the module hub."""
    return preheat_env.connect(module_hub)


def weight_requests(hub, repo=REPO):
    return [
        r for r in hub.requests if r.repo_id == repo and r.file and r.file.endswith(".safetensors")
    ]


def downloads(hub, repo=REPO):
    """CDN requests that fetched weight bodies (not the ranged header reads)."""
    return [
        r
        for r in weight_requests(hub, repo)
        if r.origin == "cdn" and (r.range is None or re.fullmatch(r"bytes=\d+-", r.range))
    ]


def weight_size(model) -> int:
    return sum(len(b) for p, b in model.files.items() if p.endswith(".safetensors"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the CLI, --wait


def test_wait_json_prints_exactly_the_documented_fields(published):
    assert set(published) == {
        "run",
        "status",
        "reused",
        "artifact",
        "outputs",
        "bytes_fetched",
        "bytes_reused",
    }
    assert RUN_RE.match(published["run"])
    assert published["status"] == "succeeded"
    assert published["reused"] is False
    artifact = published["artifact"]
    assert set(artifact) == {"name", "version", "uri", "path"}
    assert artifact["name"] == NAME  # the default name of tiny/Llama-Multi.Part
    assert artifact["uri"] == "file://" + artifact["path"]
    assert published["outputs"] == [{"path": artifact["path"]}]


def test_published_files_are_byte_identical_to_the_hub_including_subfolders(
    published, repos, read_tree
):
    model, _ = repos["main"]
    got = read_tree(published["artifact"]["path"])
    assert set(got) == set(model.files)
    assert {"original/params.json", "extra/notes.txt"} <= set(got)
    for path, data in model.files.items():
        assert got[path] == data, f"{path} differs from the hub's copy"


def test_manifest_records_files_source_metadata_and_serving_facts(
    published, module_preheat_env, repos
):
    model, commit = repos["main"]
    manifest = module_preheat_env.cli("artifacts", "get", NAME, "--json").ok().json
    assert manifest["name"] == NAME and manifest["version"] == published["artifact"]["version"]
    assert manifest["path"] == published["artifact"]["path"]
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        p: (len(b), sha256(b)) for p, b in model.files.items()
    }
    assert manifest["source"] == {"type": "hf", "repo": REPO, "revision": "main", "commit": commit}

    meta = manifest["metadata"]
    assert meta["architecture"] == "LlamaForCausalLM"
    assert meta["model_type"] == "llama"
    assert meta["task"] == "text-generation"
    assert meta["format"] == "safetensors"
    assert meta["modality"] == ["text"]
    assert meta["license"] == "apache-2.0"
    assert meta["short_description"] == (
        "A randomly initialised llama model with 2 layers and hidden size 256, for tests. "
        "Its outputs mean nothing."
    )

    serving = manifest["serving"]
    params = sum(math.prod(w.shape) for w in model.weights.values())
    assert serving["parameters"] == params
    assert serving["bytes_by_dtype"] == {"bfloat16": 2 * params}
    assert serving["weight_bytes"] == 2 * params
    assert serving["dtype"] == "bfloat16"
    cfg = model.config
    assert (serving["layers"], serving["hidden"], serving["heads"], serving["kv_heads"]) == (
        cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
    )  # fmt: skip
    assert serving["head_dim"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert serving["vocab"] == cfg["vocab_size"] == 512
    assert serving["intermediate"] == cfg["intermediate_size"]
    assert serving["tied_embeddings"] is False


def test_the_same_request_twice_is_reused_without_fetching_weight_bytes(
    published, module_hub, module_preheat_env
):
    module_hub.reset_stats()
    again = module_preheat_env.cli("prefetch", "hf-model", REPO, "--wait", "--json").ok().json
    assert again["reused"] is True
    assert again["status"] == "succeeded"
    assert again["run"] != published["run"]
    assert again["artifact"] == published["artifact"]
    assert weight_requests(module_hub) == []
    assert module_hub.bytes_served(WEIGHTS) == 0


def test_wait_without_json_prints_the_artifact_path_last(published, module_preheat_env):
    result = module_preheat_env.cli("prefetch", "hf-model", REPO, "--wait").ok()
    assert result.stdout.splitlines()[-1] == published["artifact"]["path"]


# --------------------------------------------------------------------------- revisions and selection


@pytest.mark.parametrize("which", ["branch", "tag", "commit"])
def test_revision_can_be_a_branch_a_tag_or_a_commit(env, repos, read_tree, which):
    key, revision = {
        "branch": ("dev", "dev"),
        "tag": ("v1", "v1.0"),
        "commit": ("v1", repos["v1"][1]),
    }[which]
    model, commit = repos[key]
    record = env.prefetch(REPO, revision=revision)
    assert record.status == "succeeded", record.error
    manifest = env.catalog().resolve(str(record.artifact))
    assert manifest.source.revision == revision
    assert manifest.source.commit == commit
    assert manifest.version.startswith(commit[:8])
    assert read_tree(env.store / "artifacts" / NAME / manifest.version) == model.files


def test_a_tag_and_its_commit_pin_the_same_version(env, repos):
    by_tag = env.prefetch(REPO, revision="v1.0")
    by_commit = env.prefetch(REPO, revision=repos["v1"][1])
    assert by_tag.artifact == by_commit.artifact
    assert (by_tag.reused, by_commit.reused) == (False, True)


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["*.json"], [], lambda p: p.endswith(".json")),
        ([], ["original/", "extra/*"], lambda p: "/" not in p),
        (["*.safetensors", "config.json"], ["model-00003*"], lambda p: p in {
            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "config.json"}),
    ],
)  # fmt: skip
def test_include_and_exclude_globs_select_files(
    env, repos, read_tree, module_hub, include, exclude, expected
):
    model, _ = repos["main"]
    module_hub.reset_stats()
    record = env.prefetch(REPO, include=include, exclude=exclude)
    assert record.status == "succeeded", record.error
    manifest = env.catalog().resolve(str(record.artifact))
    want = {p: b for p, b in model.files.items() if expected(p)}
    assert {f.path for f in manifest.files} == set(want)
    assert (manifest.include, manifest.exclude) == (tuple(include), tuple(exclude))
    assert read_tree(env.store / "artifacts" / NAME / manifest.version) == want
    fetched = {r.file for r in downloads(module_hub)}
    assert fetched == {p for p in want if p.endswith(".safetensors")}


def test_different_selections_make_different_versions(env):
    everything = env.prefetch(REPO)
    configs = env.prefetch(REPO, include=["*.json"])
    assert everything.artifact.version != configs.artifact.version
    assert env.catalog().alias(NAME, "latest") == configs.artifact.version


def test_default_artifact_name_comes_from_the_repo_name(env, repos):
    record = env.prefetch(QWEN)
    assert record.status == "succeeded", record.error
    assert record.artifact.name == "qwen3-0-6b"
    manifest = env.catalog().resolve("qwen3-0-6b")
    assert manifest.serving.parameters == sum(
        math.prod(w.shape) for w in repos["qwen"][0].weights.values()
    )


def test_artifact_name_overrides_the_default(env):
    record = env.prefetch(QWEN, artifact_name="my-qwen")
    assert record.artifact.name == "my-qwen"
    assert [m.name for m in env.catalog().artifacts()] == ["my-qwen"]


# --------------------------------------------------------------------------- force, latest, artifacts


def test_force_makes_a_new_version_fetches_again_and_moves_latest(
    env, module_hub, repos, read_tree
):
    model, _ = repos["main"]
    first = env.prefetch(REPO, artifact_name="llama-force")
    module_hub.reset_stats()
    forced = (
        env.cli(
            "prefetch",
            "hf-model",
            REPO,
            "--artifact-name",
            "llama-force",
            "--force",
            "1",
            "--wait",
            "--json",
        )
        .ok()
        .json
    )
    assert forced["reused"] is False
    v0, v1 = first.artifact.version, forced["artifact"]["version"]
    assert v1 != v0
    fetched = downloads(module_hub)
    assert sum(r.body_bytes for r in fetched) == weight_size(model)
    assert sorted(r.file for r in fetched) == sorted(
        p for p in model.files if p.endswith(".safetensors")
    )
    assert read_tree(forced["artifact"]["path"]) == model.files

    catalog = env.catalog()
    assert catalog.alias("llama-force", "latest") == v1
    assert catalog.resolve("llama-force").force == 1
    listed = env.cli("artifacts", "list", "--json").ok().json["artifacts"]
    assert {(a["name"], a["version"], a["latest"]) for a in listed} == {
        ("llama-force", v0, False),
        ("llama-force", v1, True),
    }
    assert env.cli("resolve", "llama-force").ok().stdout.strip() == forced["artifact"]["path"]
    assert catalog.resolve("llama-force:latest").version == v1
    assert catalog.resolve(f"llama-force:{v0}").version == v0


def test_artifacts_rm_deletes_one_version_and_its_alias(env):
    v0 = env.prefetch(REPO, artifact_name="llama-rm").artifact.version
    v1 = env.prefetch(REPO, artifact_name="llama-rm", force=1).artifact.version
    removed = env.cli("artifacts", "rm", f"llama-rm:{v1}", "--json").ok().json
    assert removed == {"removed": {"name": "llama-rm", "version": v1}}
    assert not (env.store / "artifacts" / "llama-rm" / v1).exists()
    assert (env.store / "artifacts" / "llama-rm" / v0).is_dir()
    catalog = env.catalog()
    assert [m.version for m in catalog.versions("llama-rm")] == [v0]
    assert catalog.alias("llama-rm", "latest") is None
    error = env.cli("resolve", "llama-rm").error_line()
    assert "llama-rm:latest not found" in error and v0 in error
    assert catalog.resolve(f"llama-rm:{v0}").version == v0


# --------------------------------------------------------------------------- resolve


def test_resolve_prints_the_local_directory(published, module_preheat_env):
    result = module_preheat_env.cli("resolve", NAME, "--json").ok().json
    assert result == {
        "artifact": {"name": NAME, "version": published["artifact"]["version"]},
        "uri": published["artifact"]["uri"],
        "path": published["artifact"]["path"],
    }


def test_resolve_to_copies_a_verified_tree_and_repairs_a_damaged_copy(
    published, module_preheat_env, repos, read_tree, tmp_path
):
    from preheat.resolve import materialize

    model, _ = repos["main"]
    dest = tmp_path / "serving" / "model"
    first = module_preheat_env.cli("resolve", NAME, "--to", str(dest), "--json").ok().json
    assert first["path"] == str(dest)
    assert read_tree(dest) == model.files

    damaged = dest / "model-00002-of-00003.safetensors"
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    (dest / "extra" / "notes.txt").unlink()
    catalog = module_preheat_env.catalog()
    materialize(catalog, catalog.resolve(NAME), dest)
    assert read_tree(dest) == model.files


def test_resolve_to_refuses_a_damaged_store_copy(env, tmp_path):
    record = env.prefetch(REPO, include=["*.safetensors", "config.json"])
    stored = (
        env.store
        / "artifacts"
        / NAME
        / record.artifact.version
        / "model-00001-of-00003.safetensors"
    )
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = tmp_path / "copy"
    error = env.cli("resolve", NAME, "--to", str(dest)).error_line()
    assert "model-00001-of-00003.safetensors" in error and "sha256" in error
    assert not (dest / "model-00001-of-00003.safetensors").exists()


# --------------------------------------------------------------------------- runs


def test_runs_list_get_and_logs_show_a_finished_run(published, module_preheat_env):
    env = module_preheat_env
    name = published["run"]
    listed = env.cli("runs", "list", "--json").ok().json["runs"]
    assert name in [r["name"] for r in listed]
    assert [r["created"] for r in listed] == sorted((r["created"] for r in listed), reverse=True)

    record = env.cli("runs", "get", name, "--json").ok().json
    assert record["name"] == name
    assert record["status"] == "succeeded"
    assert record["artifact"] == {"name": NAME, "version": published["artifact"]["version"]}
    assert record["request"]["repo"] == REPO
    assert record["error"] is None and record["pid"] is not None

    logs = env.cli("runs", "logs", name).ok().stdout
    assert f"run {name} succeeded" in logs
    assert "verified model-00001-of-00003.safetensors" in logs

    # cancelling a finished run changes nothing
    cancelled = env.cli("runs", "cancel", name, "--json").ok().json
    assert cancelled["signalled"] is False and cancelled["status"] == "succeeded"
    assert env.catalog().run(name).status == "succeeded"


def test_without_wait_the_cli_returns_at_once_and_runs_wait_attaches(
    env, module_hub, repos, read_tree
):
    model, _ = repos["main"]
    module_hub.inject(
        Fault("slow", path=WEIGHTS, origin="cdn", bytes_per_sec=1_000_000, times=None)
    )
    try:
        started = env.cli("prefetch", "hf-model", REPO, "--artifact-name", "llama-nowait").ok()
        name = started.stdout.strip()
        assert RUN_RE.match(name), started
        assert env.catalog().run(name).status in ("queued", "running")
        assert env.catalog().manifest("llama-nowait", "latest") is None

        waited = env.cli("runs", "wait", name, "--json").ok().json
    finally:
        module_hub.clear_faults()
    assert waited["run"] == name and waited["status"] == "succeeded"
    assert waited["artifact"]["name"] == "llama-nowait"
    assert read_tree(waited["artifact"]["path"]) == model.files
    record = env.catalog().run(name)
    assert record.pid is not None and record.pid != os.getpid()


# --------------------------------------------------------------------------- the Python API


def test_python_api_prefetch_wait_outputs_and_run_output(env, repos, read_tree):
    import preheat
    from preheat.errors import PreheatError

    model, commit = repos["main"]
    run = preheat.prefetch.hf_model(repo=REPO, artifact_name="llama-api", force=0)
    assert RUN_RE.match(run.name)
    assert run.status in ("queued", "running", "succeeded")
    assert run.wait(timeout=90) is run
    assert run.status == "succeeded"
    out = run.outputs()[0]
    assert out.path == str(env.store / "artifacts" / "llama-api" / out.artifact.version)
    assert out.artifact.version.startswith(commit[:8])
    assert read_tree(out.path) == model.files

    model_path = preheat.app.RunOutput(type="directory", run_name=run.name)
    assert model_path.path == out.path
    assert os.fspath(model_path) == out.path
    assert (
        json.loads((env.store / "runs" / f"{run.name}.json").read_text())["status"] == "succeeded"
    )

    with pytest.raises(PreheatError, match="not supported"):
        preheat.app.RunOutput(type="file", run_name=run.name)
