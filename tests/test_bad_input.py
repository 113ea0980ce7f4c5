"""Bad input: one clear error line on stderr, a non-zero exit, nothing published, nothing
written outside the store.

One case per kind of mistake runs the real `preheat` binary (those are independent, each
with its own PREHEAT_HOME, so they start together); their variants run the same `main()`
in-process. Each test checks one case's result.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from core_support import CliResult, PreheatEnv

from preheat_testing.hub import Fault

TOKEN = "hf_GoodToken_7f3a9c"
LIMITED = "hf_OtherRepoOnly_51d2"
HOSTILE = {
    "parent": "../escape.txt",
    "nested": "weights/../../escape.txt",
    "absolute": "/tmp/preheat-hostile-escape.txt",
    "backslash": "..\\escape.txt",
    "drive": "C:/escape.txt",
}


@dataclass
class Case:
    id: str
    args: list[str]
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    process: bool = False  # run as a real subprocess


def _cases(cfg: Path) -> list[Case]:
    P = ["prefetch", "hf-model"]
    return [
        Case(
            "repo-id-with-spaces",
            [*P, "not a repo"],
            ("invalid repo id 'not a repo'", "ORG/NAME"),
            process=True,
        ),
        Case("repo-id-three-parts", [*P, "org/name/extra"], ("invalid repo id 'org/name/extra'",)),
        Case("repo-id-dot-dot", [*P, "../etc"], ("invalid repo id '../etc'",)),
        Case("repo-id-leading-dash", [*P, "org/-name"], ("invalid repo id",)),
        Case(
            "repo-not-found",
            [*P, "tiny/Missing"],
            ("repo tiny/Missing not found", "HF_TOKEN"),
            process=True,
        ),
        Case(
            "revision-not-found",
            [*P, "tiny/Llama", "--revision", "nope"],
            ("revision 'nope' not found", "tiny/Llama"),
            process=True,
        ),
        Case(
            "gated-without-token",
            [*P, "tiny/Gated"],
            ("tiny/Gated is gated", "$HF_TOKEN"),
            process=True,
        ),
        Case(
            "gated-without-custom-token",
            [*P, "tiny/Gated", "--hf-token-key", "MY_HUB_TOKEN"],
            ("tiny/Gated is gated", "$MY_HUB_TOKEN"),
            process=True,
        ),
        Case(
            "wrong-token",
            [*P, "tiny/Gated"],
            ("rejected the token in $HF_TOKEN",),
            env={"HF_TOKEN": "hf_Wrong_0000"},
            process=True,
        ),
        Case(
            "token-without-access",
            [*P, "tiny/Gated"],
            ("tiny/Gated is gated", "token in $HF_TOKEN has no access"),
            env={"HF_TOKEN": LIMITED},
        ),
        Case(
            "artifact-name-uppercase",
            [*P, "tiny/Llama", "--artifact-name", "MyModel"],
            ("invalid artifact name 'MyModel'",),
            process=True,
        ),
        Case(
            "artifact-name-slash",
            [*P, "tiny/Llama", "--artifact-name", "a/b"],
            ("invalid artifact name 'a/b'",),
        ),
        Case(
            "store-scheme",
            [*P, "tiny/Llama", "--store", "ftp://host/models"],
            ("unknown store URL scheme ftp://", "file://"),
            process=True,
        ),
        Case(
            "store-scheme-from-env",
            [*P, "tiny/Llama"],
            ("unknown store URL scheme nope://",),
            env={"PREHEAT_STORE": "nope://bucket"},
        ),
        Case(
            "shard-config-missing",
            [*P, "tiny/Llama", "--shard-config", str(cfg / "missing.yaml")],
            ("cannot read shard config", "missing.yaml"),
        ),
        Case(
            "shard-config-directory",
            [*P, "tiny/Llama", "--shard-config", str(cfg)],
            ("cannot read shard config",),
        ),
        Case(
            "shard-config-bad-yaml",
            [*P, "tiny/Llama", "--shard-config", str(cfg / "bad.yaml")],
            ("not valid YAML at line 2",),
            process=True,
        ),
        Case(
            "shard-config-not-mapping",
            [*P, "tiny/Llama", "--shard-config", str(cfg / "list.yaml")],
            ("must be a mapping with `engine: NAME`",),
        ),
        Case(
            "shard-config-unknown-key",
            [*P, "tiny/Llama", "--shard-config", str(cfg / "extra.yaml")],
            ("unknown key(s) tp",),
        ),
        Case(
            "shard-config-unknown-engine",
            [*P, "tiny/Llama", "--shard-config", str(cfg / "engine.yaml")],
            ("no sharder for engine 'warp-drive'", "preheat-warp-drive"),
        ),
        Case(
            "accelerator-count-word",
            [*P, "tiny/Llama", "--accelerator", "L40s:four"],
            ("invalid accelerator 'L40s:four'", "TYPE:COUNT"),
            process=True,
        ),
        Case(
            "accelerator-no-type",
            [*P, "tiny/Llama", "--accelerator", ":4"],
            ("invalid accelerator ':4'",),
        ),
        Case(
            "accelerator-zero",
            [*P, "tiny/Llama", "--accelerator", "H100:0"],
            ("invalid accelerator 'H100:0'", "at least 1"),
        ),
        Case("mem-quantity", [*P, "tiny/Llama", "--mem", "16 gigs"], ("invalid mem '16 gigs'",)),
        Case("cpu-count", [*P, "tiny/Llama", "--cpu", "lots"], ("invalid cpu 'lots'",)),
        Case("negative-force", [*P, "tiny/Llama", "--force", "-1"], ("invalid force -1",)),
        Case(
            "include-matches-nothing",
            [*P, "tiny/Llama", "--include", "*.gguf"],
            ("no file of tiny/Llama", "include/exclude"),
        ),
        *(
            Case(
                f"hostile-name-{key}",
                [*P, f"tiny/Hostile-{key}"],
                ("unsafe file name", "nothing was written"),
                process=key == "parent",
            )
            for key in HOSTILE
        ),
        Case(
            "corrupt-bytes",
            [*P, "tiny/Corrupt"],
            ("model-00002-of-00003.safetensors", "sha256", "nothing was published"),
            process=True,
        ),
    ]


@pytest.fixture(scope="module")
def hub_repos(module_hub, tiny_model):
    llama = tiny_model("llama_multipart")
    module_hub.add_repo("tiny/Llama", llama.files)
    module_hub.add_repo("tiny/Gated", llama.files, gated=True)
    module_hub.add_token(TOKEN)
    module_hub.add_token(LIMITED, repos=["tiny/Llama"])
    small = {p: llama.files[p] for p in ("config.json", "README.md")}
    for key, path in HOSTILE.items():
        entry = {"type": "file", "oid": "0" * 40, "size": 5, "path": path}
        module_hub.add_repo(f"tiny/Hostile-{key}", small, extra_entries=[entry])
    corrupt = tiny_model("llama_multipart", seed=3)
    module_hub.add_repo("tiny/Corrupt", corrupt.files)
    target = hashlib.sha256(corrupt.files["model-00002-of-00003.safetensors"]).hexdigest()
    # flip one byte past the header on every download of that one blob
    module_hub.inject(
        Fault("corrupt", path=f"/lfs/{target}", origin="cdn", after_bytes=300_000, times=None)
    )
    yield {"llama": llama, "corrupt": corrupt}
    module_hub.clear_faults()


@pytest.fixture(scope="module")
def results(module_hub, hub_repos, tmp_path_factory):
    """Every case, run at once as a separate `preheat ... --wait` process."""
    cfg = tmp_path_factory.mktemp("shard-configs")
    (cfg / "bad.yaml").write_text("engine: [vllm\nargs: {}\n")
    (cfg / "list.yaml").write_text("- engine\n- vllm\n")
    (cfg / "extra.yaml").write_text("engine: vllm\ntp: 2\n")
    (cfg / "engine.yaml").write_text("engine: warp-drive\nargs: {}\n")
    cases = _cases(cfg)

    def run(case: Case) -> tuple[PreheatEnv, CliResult]:
        env = PreheatEnv(tmp_path_factory.mktemp(case.id)).connect(module_hub)
        if case.process:
            return env, env.cli(*case.args, "--wait", env=case.env)
        return env, env.cli_in_process(*case.args, "--wait", env=case.env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        started = {c.id: pool.submit(run, c) for c in cases if c.process}
        done = {c.id: run(c) for c in cases if not c.process}
        done.update({key: future.result() for key, future in started.items()})
    yield done
    for env, _ in done.values():
        env.cleanup()


CASE_IDS = [c.id for c in _cases(Path("/nonexistent"))]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_fails_with_one_clear_line_and_publishes_nothing(results, case_id):
    case = next(c for c in _cases(Path("/nonexistent")) if c.id == case_id)
    env, result = results[case_id]
    line = result.error_line()
    for fragment in case.expect:
        assert fragment in line, f"{fragment!r} missing from {line!r}"
    assert result.stdout == ""
    assert env.catalog().artifacts() == []
    assert not (env.store / "aliases").exists()

    outside = [p for p in env.files() if env.store not in p.parents]
    assert outside == [], f"files written outside the store: {outside}"


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_hostile_file_names_write_nothing_at_all(results, key):
    env, _ = results[f"hostile-name-{key}"]
    assert not Path(HOSTILE["absolute"]).exists()
    for base in (env.root, env.root.parent, env.store, env.store.parent):
        assert not (base / "escape.txt").exists()
    assert not (env.store / "artifacts").exists()
    assert not list(env.store.glob(".partial/*"))


def test_runs_that_failed_after_starting_are_recorded_as_failed(results):
    env, result = results["repo-not-found"]
    records = list(env.catalog().runs())
    assert len(records) == 1
    assert records[0].status == "failed"
    assert records[0].error in result.error_line()
    assert records[0].artifact is None


def test_invalid_requests_leave_no_run_record(results):
    for case_id in (
        "repo-id-with-spaces",
        "artifact-name-uppercase",
        "accelerator-count-word",
        "shard-config-bad-yaml",
    ):
        env, _ = results[case_id]
        assert not (env.store / "runs").exists(), case_id


def test_corrupt_bytes_are_never_committed_and_a_clean_rerun_publishes(
    results, module_hub, hub_repos, read_tree
):
    env, _ = results["corrupt-bytes"]
    assert not list(env.store.glob("manifests/**/*.json"))
    # the damaged file never reached its final key
    assert not list(env.store.glob("artifacts/*/*/model-00002-of-00003.safetensors"))

    faults = module_hub.faults
    module_hub.clear_faults()
    try:
        with env.applied():
            record = env.prefetch("tiny/Corrupt")
    finally:
        for fault in faults:
            module_hub.inject(fault)
    assert record.status == "succeeded", record.error
    path = env.store / "artifacts" / record.artifact.name / record.artifact.version
    assert read_tree(path) == hub_repos["corrupt"].files
