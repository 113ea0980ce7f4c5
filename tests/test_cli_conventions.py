"""CLI conventions as a new user meets them: readable `--help`, documented exit codes, one
`error:` line for every failure (with `--json` too), artifact names with dots.

Most checks run `main()` in-process; the exit codes and one plugin failure go through the
real binary.
"""

from __future__ import annotations

import re
import threading

import pytest

QWEN = "Qwen/Qwen3-0.6B"
MISSING = "tiny/Nothing-Here"
RUN = "r20990101-000000-abcdef"


@pytest.fixture(scope="module")
def hub(module_hub, tiny_model):
    module_hub.add_repo(QWEN, tiny_model("qwen3_qk_norm").files)
    return module_hub


@pytest.fixture
def env(preheat_env, hub):
    return preheat_env.connect(hub)


def runs_in(env) -> list:
    return list(env.catalog().runs()) if env.store.exists() else []


# --------------------------------------------------------------------------- help


def subcommands(env, *group: str) -> list[tuple[str, ...]]:
    """The commands listed in a group's help."""
    text = env.cli_in_process(*group, "--help").ok().stdout
    listed = text.split("Commands:", 1)[1].split("\n\n", 1)[0]
    return [(*group, line.split()[0]) for line in listed.splitlines() if line.strip()]


CORE_GROUPS = ("prefetch", "runs", "artifacts")
CORE_COMMANDS = (("resolve",), ("plugins",), ("gc",))


def test_prefetch_help_shows_readable_metavars(env):
    text = env.cli_in_process("prefetch", "hf-model", "--help").ok().stdout
    assert text.splitlines()[0] == "Usage: preheat prefetch hf-model [OPTIONS] REPO"
    assert re.search(r"^  REPO  Hub repo id", text, re.M)
    for option in (
        "--revision REV",
        "--artifact-name NAME",
        "--modality TEXT",
        "--force N",
        "--hf-token-key KEY",
        "--cpu CPU",
        "--mem QUANTITY",
        "--ephemeral-storage QUANTITY",
        "--accelerator TYPE:COUNT",
        "--shard-config FILE",
        "--include GLOB",
        "--exclude GLOB",
        "--store URL",
    ):
        assert re.search(rf"^  {re.escape(option)}  ", text, re.M), option
    model = env.cli_in_process("prefetch", "model", "--help").ok().stdout
    assert model.splitlines()[0] == "Usage: preheat prefetch model [OPTIONS] REPO"
    assert re.search(r"^  --source NAME  ", model, re.M)


def test_no_help_text_shows_type_names_or_braces(env):
    commands = [()] + [(g,) for g in CORE_GROUPS] + list(CORE_COMMANDS)
    for group in CORE_GROUPS:
        commands += subcommands(env, group)
    assert ("prefetch", "model") in commands and ("artifacts", "rm") in commands
    for command in commands:
        text = env.cli_in_process(*command, "--help").ok().stdout
        where = f"preheat {' '.join(command)} --help:\n{text}"
        assert "{" not in text and "}" not in text, where
        assert not re.search(r"<\w", text), where  # <str>, <int>, <list[str]>, <path>
        assert not re.search(r"^  --\S+ PATH\b", text, re.M), where


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (("runs", "get"), "RUN"),
        (("runs", "wait"), "RUN"),
        (("artifacts", "get"), "NAME[:VERSION]"),
        (("artifacts", "rm"), "NAME:VERSION"),
        (("resolve",), "REF"),
    ],
)
def test_arguments_are_named_as_in_the_design(env, command, usage):
    text = env.cli_in_process(*command, "--help").ok().stdout
    assert text.splitlines()[0] == f"Usage: preheat {' '.join(command)} [OPTIONS] {usage}"


def test_resolve_and_runs_options_have_metavars(env):
    resolve = env.cli_in_process("resolve", "--help").ok().stdout
    for option in ("--to DIR", "--engine NAME", "-tp, --tensor-parallel-size N", "--store URL"):
        assert f"  {option}  " in resolve, option
    assert "  --limit N  " in env.cli_in_process("runs", "list", "--help").ok().stdout


# --------------------------------------------------------------------------- exit codes


def test_the_root_help_documents_the_exit_codes(env):
    text = env.cli_in_process("--help").ok().stdout
    epilog = text.split("Exit codes:", 1)[1]
    for code, meaning in (
        ("0", "success"),
        ("1", "failure"),
        ("2", "usage error"),
        ("130", "cancelled or interrupted"),
    ):
        assert re.search(rf"^\s+{code}\s+{meaning}", epilog, re.M), code
    assert "PREHEAT_DEBUG=1" in epilog


def test_a_usage_error_exits_2_and_a_failure_exits_1(env):
    usage = env.cli("artifacts", "list", "--no-such-option")
    assert usage.returncode == 2
    assert "No such option: --no-such-option" in usage.stderr and usage.stdout == ""
    failure = env.cli("artifacts", "get", "nosuch")
    assert failure.returncode == 1
    assert "artifact nosuch:latest not found" in failure.error_line()


# --------------------------------------------------------------------------- --json failures


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prefetch", "hf-model", "not a repo"], "invalid repo id 'not a repo'"),
        (["prefetch", "hf-model", "not a repo", "--wait"], "invalid repo id 'not a repo'"),
        (["prefetch", "model", "x", "--source", "nope"], "no fetcher named 'nope'"),
        (["prefetch", "hf-model", QWEN, "--artifact-name", "a..b"], "invalid artifact name"),
        (["runs", "list", "--store", "gopher://x"], "unknown store URL scheme gopher://"),
        (["runs", "get", RUN], f"run {RUN} not found"),
        (["runs", "wait", RUN], f"run {RUN} not found"),
        (["runs", "cancel", RUN], f"run {RUN} not found"),
        (["artifacts", "list", "--store", "gopher://x"], "unknown store URL scheme gopher://"),
        (["artifacts", "get", "nosuch"], "artifact nosuch:latest not found"),
        (["artifacts", "rm", "nosuch"], "give the version to delete"),
        (["artifacts", "rm", "nosuch:v1"], "artifact nosuch:v1 not found"),
        (["resolve", "nosuch"], "artifact nosuch:latest not found"),
        (["gc", "--store", "gopher://x"], "unknown store URL scheme gopher://"),
    ],
)
def test_a_failure_with_json_is_still_one_error_line(env, args, message):
    result = env.cli_in_process(*args, "--json")
    assert result.returncode == 1
    assert message in result.error_line()
    assert result.stdout == ""  # nothing got far enough to print a JSON object
    assert runs_in(env) == []


def test_a_failure_of_plugins_json_is_one_error_line(env, tmp_path):
    site = tmp_path / "site"
    dist = site / "fake_clash-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-clash\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[preheat]\nclash = fake_clash\n")
    (site / "fake_clash.py").write_text(
        "from preheat.hookspecs import hookimpl\n\n\n"
        "@hookimpl\ndef preheat_register_stores(register):\n"
        "    register('file', lambda url: None)\n"
    )
    result = env.cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "store 'file' is registered by both plugin" in result.error_line()


def test_a_failed_wait_with_json_prints_the_summary_and_one_error_line(env):
    result = env.cli_in_process("prefetch", "hf-model", MISSING, "--wait", "--json")
    assert result.returncode == 1
    summary = result.json
    assert summary["status"] == "failed" and f"{MISSING} not found" in summary["error"]
    assert result.error_line() == f"error: run {summary['run']} failed: {summary['error']}"

    again = env.cli_in_process("runs", "wait", summary["run"], "--json")
    assert again.returncode == 1
    assert again.json == summary
    assert again.error_line() == f"error: run {summary['run']} failed: {summary['error']}"

    text = env.cli_in_process("runs", "wait", summary["run"])
    assert text.returncode == 1 and text.stdout == ""
    assert text.error_line() == f"error: run {summary['run']} failed: {summary['error']}"


def test_waiting_on_a_cancelled_run_exits_130_with_one_error_line(env):
    cancel = threading.Event()
    cancel.set()
    record = env.prefetch(QWEN, cancel=cancel)
    assert record.status == "cancelled"
    result = env.cli_in_process("runs", "wait", record.name, "--json")
    assert result.returncode == 130
    assert result.json["status"] == "cancelled"
    assert result.error_line() == f"error: run {record.name} cancelled"


# --------------------------------------------------------------------------- artifact names


def test_the_seeds_artifact_name_with_dots_validates_and_publishes(env):
    import preheat

    run = preheat.prefetch.hf_model(repo="Qwen/Qwen3-0.6B", artifact_name="qwen-0.6b-model")
    assert run.wait(timeout=90).status == "succeeded", run.record.error
    out = run.outputs()[0]
    assert out.artifact.name == "qwen-0.6b-model"
    assert out.path == str(env.store / "artifacts" / "qwen-0.6b-model" / out.artifact.version)
    ref = f"qwen-0.6b-model:{out.artifact.version}"
    got = env.cli_in_process("artifacts", "get", ref, "--json").ok().json
    assert (got["name"], got["version"], got["path"]) == (
        "qwen-0.6b-model",
        out.artifact.version,
        out.path,
    )
    assert env.cli_in_process("resolve", "qwen-0.6b-model", "--json").ok().json["path"] == out.path


@pytest.mark.parametrize("name", ["qwen..model", ".qwen", "qwen."])
def test_dotted_names_that_could_mislead_are_refused(env, name):
    import preheat
    from preheat.errors import PreheatError

    with pytest.raises(PreheatError) as caught:
        preheat.prefetch.hf_model(repo="Qwen/Qwen3-0.6B", artifact_name=name)
    message = str(caught.value)
    assert message.startswith(f"invalid artifact name {name!r}: ") and "\n" not in message
    line = env.cli_in_process("prefetch", "hf-model", QWEN, "--artifact-name", name).error_line()
    assert line == f"error: {message}"
    assert f"invalid artifact name {name!r}" in (
        env.cli_in_process("artifacts", "get", f"{name}:v1").error_line()
    )
    assert runs_in(env) == []


def test_names_and_references_stay_unambiguous():
    from preheat.errors import PreheatError
    from preheat.names import default_artifact_name, parse_ref, validate_artifact_name

    assert default_artifact_name("Qwen/Qwen3-0.6B") == "qwen3-0-6b"  # the mapping is unchanged
    assert default_artifact_name("tiny/Llama-Multi.Part") == "llama-multi-part"
    assert parse_ref("qwen-0.6b-model") == ("qwen-0.6b-model", "latest")
    assert parse_ref("qwen-0.6b-model:abc123-0.1") == ("qwen-0.6b-model", "abc123-0.1")
    for name in ("a", "a.b", "v1.2.3-x_y", "a" * 128):
        assert validate_artifact_name(name) == name
    for name in ("", "A.b", "a:b", "a/b", "a" * 129, "a.\n", "a\n", "-a", "a..b", "a."):
        with pytest.raises(PreheatError):
            validate_artifact_name(name)
    assert parse_ref("a.b:") == ("a.b", "latest")
    for ref in ("a.b:c:d", "a.b:..", ":v1", "a..b:v1"):
        with pytest.raises(PreheatError):
            parse_ref(ref)
