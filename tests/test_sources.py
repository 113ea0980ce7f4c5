"""Sources other than the Hub: a fetcher plugin picked with `--source` / `source=` checks its
repository references and names its artifacts in the submitting process, before any run.

The third-party fetcher here is fake (a local directory) and injected through the registry
factory, so it only exists in this process: runs that use it execute in-process (`--wait`,
or an inline executor registered beside it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from preheat.errors import NotFound, PreheatError
from preheat.execute import Executor
from preheat.fetch import Fetcher, RemoteFile, Snapshot
from preheat.hookspecs import hookimpl
from preheat.models import Source
from preheat.plugins import get_registry, make_registry, set_registry

BUILTINS = [
    ("hf", "preheat.builtin.hf"),
    ("local", "preheat.builtin.local"),
    ("local-executor", "preheat.builtin.executor"),
]


class FsFetcher(Fetcher):
    """A third-party source: a model directory on this machine, named by its absolute path."""

    def __init__(self, token_key: str = "HF_TOKEN") -> None:
        self.token_key = token_key

    @staticmethod
    def check_repo(repo: str) -> str:
        if not isinstance(repo, str) or not os.path.isabs(repo):
            raise PreheatError(
                f"invalid model directory {repo!r}: give an absolute path, e.g. /models/qwen"
            )
        return repo

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        root = Path(repo)
        if not root.is_dir():
            raise NotFound(f"no model directory at {repo}")
        files = tuple(
            RemoteFile(
                path=p.relative_to(root).as_posix(),
                size=p.stat().st_size,
                sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
            )
            for p in sorted(root.rglob("*"))
            if p.is_file()
        )
        commit = hashlib.sha1(repr([(f.path, f.sha256) for f in files]).encode()).hexdigest()
        source = Source(type="fs", repo=repo, revision=revision or "main", commit=commit)
        return Snapshot(source=source, files=files)

    def read(self, snapshot: Snapshot, path: str) -> bytes:
        return (Path(snapshot.source.repo) / path).read_bytes()

    def read_range(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        with open(Path(snapshot.source.repo) / path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def download(self, snapshot, file, writer, *, on_bytes=lambda n: None) -> str:
        data = self.read(snapshot, file.path)
        writer.write(data[writer.offset :])
        on_bytes(len(data))
        return hashlib.sha256(data).hexdigest()


class InlineExecutor(Executor):
    """Runs the pipeline in the submitting process (the fake source exists only here)."""

    def submit(self, record):
        from preheat.runner import execute

        execute(record.store, record.name)
        return record

    def cancel(self, record) -> bool:
        return False


def plain_factory(*, token_key: str = "HF_TOKEN") -> Fetcher:
    """A factory that is not a Fetcher subclass: it gets Fetcher's default checks."""
    raise AssertionError("the submitting process never builds a fetcher")


class FsPlugin:
    @hookimpl
    def preheat_register_fetchers(self, register):
        register("fs", FsFetcher)
        register("plain", plain_factory)

    @hookimpl
    def preheat_register_executors(self, register):
        register("inline", InlineExecutor)


@pytest.fixture
def fs_source():
    """The registry of this process: the built-in plugins plus the fake `fs` source."""
    previous = get_registry()
    set_registry(make_registry(entry_points=False, extra=[*BUILTINS, ("fs", FsPlugin())]))
    yield
    set_registry(previous)


@pytest.fixture
def model_dir(tmp_path, tiny_model) -> Path:
    """A tiny model's files in a directory named like a repo with a dot in it."""
    root = tmp_path / "models" / "My.Model"
    for path, data in tiny_model("qwen2_small_vocab_tied").files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def runs_in(env) -> list:
    return list(env.catalog().runs()) if env.store.exists() else []


# --------------------------------------------------------------------------- checking requests


def test_the_python_api_checks_the_repo_with_the_sources_fetcher(preheat_env, fs_source):
    import preheat

    with pytest.raises(PreheatError, match=r"invalid model directory 'models/x': give an abs"):
        preheat.prefetch.model("models/x", source="fs")
    with pytest.raises(PreheatError, match=r"invalid repo id 'not a repo!'"):
        preheat.prefetch.model("not a repo!", source="hf")
    with pytest.raises(PreheatError, match=r"invalid repo id 'not a repo!'"):
        preheat.prefetch.model("not a repo!")  # source defaults to hf
    with pytest.raises(PreheatError, match=r"invalid repo id 'not a repo!'"):
        preheat.prefetch.hf_model("not a repo!")
    with pytest.raises(PreheatError, match=r"no fetcher named 'nope' is installed"):
        preheat.prefetch.model("/models/x", source="nope")
    assert runs_in(preheat_env) == []


def test_the_fetchers_check_is_what_prepare_uses(fs_source):
    from preheat.models import PrefetchRequest
    from preheat.pipeline import prepare

    prepared = prepare(PrefetchRequest(repo="/data/Models/My.Model", source="fs"))
    assert prepared.name == "my-model"  # Fetcher.default_artifact_name of the last part
    assert prepare(PrefetchRequest(repo="/data/q/", source="fs")).name == "q"
    with pytest.raises(PreheatError, match="give an absolute path"):
        prepare(PrefetchRequest(repo="Qwen/Qwen3-0.6B", source="fs"))
    # the hub's ids are not paths, and paths are not hub ids
    assert prepare(PrefetchRequest(repo="Qwen/Qwen3-0.6B")).name == "qwen3-0-6b"
    with pytest.raises(PreheatError, match="invalid repo id '/data/q'"):
        prepare(PrefetchRequest(repo="/data/q"))


def test_a_factory_that_is_not_a_fetcher_class_gets_the_default_checks(fs_source):
    from preheat.models import PrefetchRequest
    from preheat.pipeline import prepare

    assert prepare(PrefetchRequest(repo="any thing/At All", source="plain")).name == "at-all"
    for bad in ("", "tab\there", "new\nline"):
        with pytest.raises(PreheatError) as caught:
            prepare(PrefetchRequest(repo=bad, source="plain"))
        assert "\n" not in str(caught.value)
    with pytest.raises(PreheatError, match=r"cannot name the artifact after '/x/\.hidden'.*--art"):
        prepare(PrefetchRequest(repo="/x/.hidden", source="plain"))
    assert prepare(PrefetchRequest(repo="/x/.hidden", source="plain", artifact_name="h")).name


def test_the_builtin_hub_fetcher_is_registered_as_its_class():
    from preheat.builtin.hf import HfFetcher
    from preheat.names import validate_repo_id
    from preheat.plugins import lookup

    factory = lookup("fetchers", "hf").value
    assert factory is HfFetcher and factory.check_repo is validate_repo_id
    assert factory.default_artifact_name("Qwen/Qwen3-0.6B") == "qwen3-0-6b"


def test_the_hub_fetcher_reads_its_token_from_the_key_it_is_built_with(monkeypatch):
    from preheat.builtin.hf import HfFetcher

    monkeypatch.setenv("MY_HUB_TOKEN", "hf_FromMyKey_1234")
    built = HfFetcher(token_key="MY_HUB_TOKEN")
    assert (built._token, built._token_name) == ("hf_FromMyKey_1234", "MY_HUB_TOKEN")
    given = HfFetcher(token="hf_Given_5678", token_name="OTHER")
    assert (given._token, given._token_name) == ("hf_Given_5678", "OTHER")
    assert HfFetcher()._token is None


# --------------------------------------------------------------------------- fetching


def test_the_python_api_fetches_from_a_plugin_source(preheat_env, fs_source, model_dir, read_tree):
    import preheat

    run = preheat.prefetch.model(str(model_dir), source="fs", executor="inline")
    assert run.wait(timeout=60).status == "succeeded", run.record.error
    out = run.outputs()[0]
    assert out.artifact.name == "my-model"
    assert read_tree(out.path) == read_tree(model_dir)
    manifest = preheat_env.catalog().resolve("my-model")
    assert (manifest.source.type, manifest.source.repo) == ("fs", str(model_dir))
    assert run.record.request.source == "fs"


def test_the_cli_prefetches_from_a_plugin_source_with_hf_models_json(
    preheat_env, fs_source, model_dir
):
    result = preheat_env.cli_in_process(
        "prefetch", "model", str(model_dir), "--source", "fs", "--artifact-name", "my.model",
        "--wait", "--json",
    ).ok()  # fmt: skip
    summary = result.json
    assert set(summary) == {
        "run",
        "status",
        "reused",
        "artifact",
        "outputs",
        "bytes_fetched",
        "bytes_reused",
    }
    assert set(summary["artifact"]) == {"name", "version", "uri", "path"}
    assert summary["status"] == "succeeded" and summary["reused"] is False
    assert summary["artifact"]["name"] == "my.model"
    assert summary["outputs"] == [{"path": summary["artifact"]["path"]}]
    again = preheat_env.cli_in_process(
        "prefetch", "model", str(model_dir), "--source", "fs", "--artifact-name", "my.model",
        "--wait", "--json",
    ).ok()  # fmt: skip
    assert again.json["reused"] is True
    assert again.json["artifact"]["version"] == summary["artifact"]["version"]


def test_the_cli_refuses_what_the_sources_fetcher_refuses(preheat_env, fs_source):
    line = preheat_env.cli_in_process(
        "prefetch", "model", "relative/dir", "--source", "fs", "--wait", "--json"
    ).error_line()
    assert line == (
        "error: invalid model directory 'relative/dir': give an absolute path, e.g. /models/qwen"
    )
    hub = preheat_env.cli_in_process("prefetch", "model", "not a repo!").error_line()
    assert "invalid repo id 'not a repo!'" in hub
    assert runs_in(preheat_env) == []


def test_an_unknown_source_is_one_line_before_any_run(preheat_env):
    result = preheat_env.cli("prefetch", "model", "x", "--source", "nope")
    assert result.returncode == 1
    assert result.error_line() == "error: no fetcher named 'nope' is installed (installed: hf)"
    assert result.stdout == ""
    assert runs_in(preheat_env) == []


def test_model_takes_every_option_of_hf_model(preheat_env):
    def options(*command: str) -> list[str]:
        text = preheat_env.cli_in_process(*command, "--help").ok().stdout
        section = text.split("Options:", 1)[1]
        return [line.split()[0].rstrip(",") for line in section.splitlines() if line[:3] == "  -"]

    hf = options("prefetch", "hf-model")
    assert options("prefetch", "model") == ["--source", *hf]
