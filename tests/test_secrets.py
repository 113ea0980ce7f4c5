"""Tokens never leak: not into the store, PREHEAT_HOME, run records, logs or CLI output.

Every test uses a gated repo that only opens with the token, checks that the token was
really sent, then greps every file under the test's directory and every output.
"""

from __future__ import annotations

import secrets

import pytest

from preheat_testing.hub import Fault

GATED = "tiny/Gated-Secrets"


def new_token() -> str:
    return "hf_" + secrets.token_hex(16)


@pytest.fixture
def gated(hub, tiny_model):
    model = tiny_model("llama_multipart")
    hub.add_repo(GATED, model.files, gated=True)
    return model


@pytest.fixture
def env(preheat_env, hub, gated):
    return preheat_env.connect(hub)


def assert_nowhere(env, token: str, *outputs) -> None:
    """`token` appears in no file under the environment and in none of the given outputs."""
    assert env.files(), "nothing was written at all"
    needle = token.encode()
    leaked = [str(p) for p in env.files() if needle in p.read_bytes()]
    assert leaked == [], f"the token leaked into {leaked}"
    for out in outputs:
        text = out if isinstance(out, str) else out.stdout + out.stderr
        assert token not in text


def assert_sent(hub, token_used: bool = True) -> None:
    gated_files = [r for r in hub.requests if r.repo_id == GATED and r.file and r.origin == "hub"]
    assert gated_files, "no file of the gated repo was requested"
    assert all(r.has_auth for r in gated_files) == token_used


def test_token_in_hf_token_never_leaks_on_success(env, hub, gated):
    token = new_token()
    hub.add_token(token, repos=[GATED])
    env.set("HF_TOKEN", token)
    done = env.cli("prefetch", "hf-model", GATED, "--wait", "--json").ok()
    assert done.json["status"] == "succeeded"
    assert_sent(hub)
    name = done.json["run"]
    shown = [
        env.cli("runs", "get", name, "--json").ok(),
        env.cli("runs", "logs", name).ok(),
        env.cli_in_process("runs", "list", "--json").ok(),
        env.cli_in_process("artifacts", "get", done.json["artifact"]["name"], "--json").ok(),
    ]
    assert f"run {name} succeeded" in shown[1].stdout
    assert '"hf_token_key": "HF_TOKEN"' in shown[0].stdout
    assert_nowhere(env, token, done, *shown)


def test_token_never_leaks_through_the_detached_worker(env, hub, gated):
    token = new_token()
    hub.add_token(token, repos=[GATED])
    env.set("HF_TOKEN", token)
    name = env.cli("prefetch", "hf-model", GATED, "--artifact-name", "via-worker").ok()
    waited = env.cli("runs", "wait", name.stdout.strip(), "--json").ok()
    assert waited.json["status"] == "succeeded"
    assert_sent(hub)
    assert list((env.home / "logs").glob("*.out")), "the worker's output file is checked too"
    assert_nowhere(env, token, name, waited)


def test_a_custom_token_key_is_used_and_never_leaks(env, hub, gated):
    token = new_token()
    hub.add_token(token, repos=[GATED])
    env.set("MY_ORG_HUB_TOKEN", token)
    done = env.cli_in_process(
        "prefetch", "hf-model", GATED, "--hf-token-key", "MY_ORG_HUB_TOKEN", "--wait", "--json"
    ).ok()
    assert done.json["status"] == "succeeded"
    assert_sent(hub)
    record = env.cli_in_process("runs", "get", done.json["run"], "--json").ok()
    assert record.json["request"]["hf_token_key"] == "MY_ORG_HUB_TOKEN"
    assert_nowhere(env, token, done, record)


def test_a_wrong_token_fails_clearly_and_never_leaks(env, hub, gated):
    wrong = new_token()  # unknown to the hub
    env.set("HF_TOKEN", wrong)
    failed = env.cli("prefetch", "hf-model", GATED, "--wait")
    assert "rejected the token in $HF_TOKEN" in failed.error_line()
    assert any(r.has_auth for r in hub.requests if r.repo_id == GATED), "the token was not sent"
    shown = env.cli_in_process("runs", "list", "--json").ok()
    (run,) = shown.json["runs"]
    assert run["status"] == "failed"
    logs = env.cli_in_process("runs", "logs", run["name"]).ok()
    assert "failed" in logs.stdout
    assert_nowhere(env, wrong, failed, shown, logs)


def test_a_download_failure_with_a_valid_token_never_leaks_it(env, hub, gated):
    token = new_token()
    hub.add_token(token, repos=[GATED])
    env.set("HF_TOKEN", token)
    hub.inject(
        Fault(
            "corrupt",
            path="model-00001-of-00003.safetensors",
            origin="cdn",
            after_bytes=200_000,
            times=None,
        )
    )
    failed = env.cli_in_process("prefetch", "hf-model", GATED, "--wait", "--json")
    assert failed.returncode == 1
    assert failed.json["status"] == "failed" and "sha256" in failed.json["error"]
    assert_sent(hub)
    assert_nowhere(env, token, failed)


def test_the_gated_error_without_a_token_sends_none(env, hub, gated):
    failed = env.cli_in_process("prefetch", "hf-model", GATED, "--wait")
    assert "set $HF_TOKEN" in failed.error_line()
    assert_sent(hub, token_used=False)
