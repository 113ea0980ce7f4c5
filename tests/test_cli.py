"""CLI conventions: help and version, `--json` on every command that prints data, store
selection, one-line errors and exit codes, PREHEAT_DEBUG, quiet mode, gc.

Commands whose process boundary matters run as real subprocesses; the rest run the same
`main()` in-process.
"""

from __future__ import annotations

import json

import pytest

REPO = "tiny/Cli-Model"
NAME = "cli-model"


@pytest.fixture(scope="module")
def model(module_hub, tiny_model):
    m = tiny_model("qwen2_small_vocab_tied")
    module_hub.add_repo(REPO, m.files)
    return m


@pytest.fixture
def env(preheat_env, module_hub, model):
    return preheat_env.connect(module_hub)


@pytest.fixture
def published(env):
    """REPO prefetched (in-process) into the test's store."""
    record = env.prefetch(REPO)
    assert record.status == "succeeded", record.error
    return record


def test_help_lists_every_command_group(env):
    result = env.cli("--help").ok()
    for command in ("prefetch", "runs", "artifacts", "resolve", "plugins", "gc"):
        assert command in result.stdout
    assert "hf-model" in env.cli("prefetch", "--help").ok().stdout


def test_version(env):
    import preheat

    assert env.cli("--version").ok().stdout.strip() == preheat.__version__


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prefetch", "hf-model"], "Missing argument"),
        (["runs", "get", "r20260101-000000-abcdef", "--bogus"], "No such option: --bogus"),
        (["prefetch", "hf-model", REPO, "--force", "many"], "Invalid value for '--force'"),
    ],
)
def test_usage_errors_exit_2(env, args, message):
    result = env.cli_in_process(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_data_command_prints_one_json_object(env, published):
    version = published.artifact.version
    outputs = {
        "plugins": env.cli_in_process("plugins", "--json").ok().json,
        "runs list": env.cli_in_process("runs", "list", "--json").ok().json,
        "runs get": env.cli_in_process("runs", "get", published.name, "--json").ok().json,
        "runs wait": env.cli_in_process("runs", "wait", published.name, "--json").ok().json,
        "runs cancel": env.cli_in_process("runs", "cancel", published.name, "--json").ok().json,
        "artifacts list": env.cli_in_process("artifacts", "list", "--json").ok().json,
        "artifacts get": env.cli_in_process("artifacts", "get", NAME, "--json").ok().json,
        "resolve": env.cli_in_process("resolve", NAME, "--json").ok().json,
        "gc": env.cli_in_process("gc", "--json").ok().json,
        "prefetch": env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--json").ok().json,
    }
    assert {p["name"] for p in outputs["plugins"]["plugins"]} >= {"hf", "local", "local-executor"}
    assert [r["name"] for r in outputs["runs list"]["runs"]] == [published.name]
    assert outputs["runs get"]["status"] == "succeeded"
    assert outputs["runs wait"]["artifact"]["version"] == version
    assert outputs["runs cancel"] == {
        "run": published.name,
        "cancel_requested": True,
        "signalled": False,
        "status": "succeeded",
    }
    assert [a["version"] for a in outputs["artifacts list"]["artifacts"]] == [version]
    assert outputs["artifacts get"]["version"] == version and outputs["artifacts get"]["files"]
    assert outputs["resolve"]["artifact"] == {"name": NAME, "version": version}
    assert outputs["gc"]["removed"] == 0 and outputs["gc"]["unreferenced"]["keys"] == []
    assert outputs["prefetch"]["reused"] is True


def test_empty_store_lists_are_empty_json(env):
    assert env.cli_in_process("runs", "list", "--json").ok().json == {"runs": []}
    assert env.cli_in_process("artifacts", "list", "--json").ok().json == {"artifacts": []}


def test_text_tables_for_people(env, published):
    runs = env.cli_in_process("runs", "list").ok().stdout.splitlines()
    assert runs[0].split()[:3] == ["RUN", "STATUS", "REPO"]
    assert runs[1].split()[:3] == [published.name, "succeeded", REPO]
    artifacts = env.cli_in_process("artifacts", "list").ok().stdout.splitlines()
    assert artifacts[1].split()[:4] == [NAME, published.artifact.version, "*", REPO]
    shown = env.cli_in_process("artifacts", "get", NAME).ok().stdout
    assert f"artifact: {NAME}:{published.artifact.version}" in shown
    assert "architecture: Qwen2ForCausalLM" in shown


@pytest.mark.parametrize("how", ["--store file://", "PREHEAT_STORE"])
def test_the_store_can_be_chosen_by_url_or_environment(env, tmp_path, how):
    other = tmp_path / "team store"
    if how == "PREHEAT_STORE":
        result = env.cli(
            "prefetch", "hf-model", REPO, "--wait", "--json", env={"PREHEAT_STORE": str(other)}
        )
    else:
        result = env.cli(
            "prefetch", "hf-model", REPO, "--wait", "--json", "--store", other.as_uri()
        )
    path = result.ok().json["artifact"]["path"]
    assert path.startswith(str(other / "artifacts" / NAME))
    assert not env.store.exists()
    assert (
        env.cli_in_process("artifacts", "list", "--json", "--store", str(other))
        .ok()
        .json["artifacts"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "get", "r20990101-000000-abcdef"], "run r20990101-000000-abcdef not found"),
        (["runs", "wait", "../../etc/passwd"], "invalid run name '../../etc/passwd'"),
        (["runs", "logs", "r20990101-000000-abcdef"], "run r20990101-000000-abcdef not found"),
        (["artifacts", "get", "nosuch"], "artifact nosuch:latest not found"),
        (["artifacts", "get", "Bad:Ref"], "invalid artifact name 'Bad'"),
        (["artifacts", "rm", "nosuch"], "give the version to delete"),
        (["artifacts", "rm", "nosuch:v1"], "artifact nosuch:v1 not found"),
        (["resolve", "nosuch"], "artifact nosuch:latest not found"),
        (["runs", "list", "--store", "gopher://x"], "unknown store URL scheme gopher://"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(env, args, message):
    line = env.cli_in_process(*args).error_line()
    assert message in line


def test_an_unknown_engine_for_resolve_names_the_package(env, published):
    line = env.cli_in_process("resolve", NAME, "--engine", "warp-drive").error_line()
    assert "warp-drive" in line and "preheat-warp-drive" in line


def test_errors_from_the_real_binary_are_one_line(env):
    result = env.cli("artifacts", "get", "nosuch")
    assert result.returncode == 1
    assert "artifact nosuch:latest not found" in result.error_line()


def test_preheat_debug_shows_the_traceback(env):
    result = env.cli("artifacts", "get", "nosuch", env={"PREHEAT_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "NotFound" in result.stderr


def test_offline_mode_refuses_what_is_not_stored(env):
    result = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", env={"HF_HUB_OFFLINE": "1"})
    line = result.error_line()
    assert "HF_HUB_OFFLINE" in line and REPO in line
    assert env.catalog().artifacts() == []


def test_offline_mode_reuses_a_stored_artifact_without_the_hub(env, published, module_hub):
    module_hub.reset_stats()
    offline = {"HF_HUB_OFFLINE": "1"}
    again = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--json", env=offline).ok()
    assert again.json["reused"] is True
    assert again.json["artifact"]["version"] == published.artifact.version
    assert [r for r in module_hub.requests if r.repo_id == REPO] == []
    other = env.cli_in_process("prefetch", "hf-model", REPO, "--force", "7", "--wait", env=offline)
    assert "HF_HUB_OFFLINE" in other.error_line()


def test_quiet_wait_prints_only_the_path(env):
    result = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--quiet").ok()
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith(str(env.store / "artifacts" / NAME))


def test_a_failed_wait_exits_1_and_prints_the_json_summary(env):
    result = env.cli_in_process("prefetch", "hf-model", "tiny/Nothing-Here", "--wait", "--json")
    assert result.returncode == 1
    summary = result.json
    assert (
        summary["status"] == "failed" and summary["artifact"] is None and summary["outputs"] == []
    )
    assert "tiny/Nothing-Here not found" in summary["error"]


def test_gc_removes_leftover_partial_files(env, published):
    partials = env.store / ".partial"
    (partials / "w-leftover").write_bytes(b"half a file")
    assert env.cli_in_process("gc", "--json").ok().json["removed"] == 1
    assert not list(partials.iterdir())
    assert env.catalog().resolve(NAME).version == published.artifact.version


def test_plugins_table(env):
    lines = env.cli_in_process("plugins").ok().stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "DISTRIBUTION", "VERSION"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "fetchers: hf" in rows["hf"] and "stores: file" in rows["local"]


def test_json_output_is_parseable_by_tools(env, published):
    """`--json` output is exactly one JSON document, no status lines mixed into stdout."""
    result = env.cli_in_process("prefetch", "hf-model", REPO, "--wait", "--json").ok()
    assert json.loads(result.stdout)["run"] != published.name
    assert result.stderr == ""
