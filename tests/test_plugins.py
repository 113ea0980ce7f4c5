"""Plugins: discovery through entry points, what each provides, broken plugins reported
without breaking the CLI, collisions naming both sides, fakes injected through the factory.

Entry-point plugins are real: a temporary `*.dist-info` on PYTHONPATH of a `preheat`
subprocess.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest

from preheat.hookspecs import hookimpl
from preheat.plugins import PluginCollision, get_registry, make_registry, set_registry

BUILTIN = {
    "hf": ("preheat_register_fetchers", {"fetchers": ["hf"]}),
    "local": ("preheat_register_stores", {"stores": ["file"]}),
    "local-executor": ("preheat_register_executors", {"executors": ["local"]}),
}


def write_dist(
    root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]
) -> Path:
    """A minimal installed distribution under `root` (put `root` on PYTHONPATH)."""
    dist = root / f"{name.replace('-', '_')}-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[preheat]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def registry_override():
    """Replace the process-wide registry for one test; restore it afterwards."""
    previous = get_registry()
    yield set_registry
    set_registry(previous)


# --------------------------------------------------------------------------- installed plugins


def test_plugins_json_lists_the_builtin_plugins_with_hooks_and_provides(preheat_env):
    import preheat

    infos = {p["name"]: p for p in preheat_env.cli("plugins", "--json").ok().json["plugins"]}
    for name, (hook, provides) in BUILTIN.items():
        info = infos[name]
        assert info["distribution"] == "preheat" and info["version"] == preheat.__version__
        assert info["hooks"] == [hook]
        assert info["provides"] == provides
        assert info["error"] is None


BROKEN_PLUGINS = {
    "broken-import": "fake_broken_at_import",
    "missing-module": "fake_module_that_does_not_exist",
    "hook-raises": "fake_hook_raises",
    "hello": "fake_hello_commands",
}
BROKEN_MODULES = {
    "fake_broken_at_import": 'raise RuntimeError("this plugin is broken at import")\n',
    "fake_hook_raises": """
        from preheat.hookspecs import hookimpl

        @hookimpl
        def preheat_register_fetchers(register):
            raise ValueError("no fetchers today")
    """,
    "fake_hello_commands": """
        import typer
        from preheat.hookspecs import hookimpl

        hello = typer.Typer(help="Say hello.")

        @hello.command("greet")
        def greet(who: str = "world") -> None:
            print(f"hello {who}")

        @hookimpl
        def preheat_register_commands(register):
            register("hello", hello)
    """,
}


@pytest.fixture
def broken_plugins(preheat_env, tmp_path):
    root = write_dist(tmp_path / "site", "fake-preheat-plugins", BROKEN_PLUGINS, BROKEN_MODULES)
    preheat_env.set("PYTHONPATH", str(root))
    return preheat_env


def test_plugins_that_fail_are_reported_with_their_error(broken_plugins):
    listed = broken_plugins.cli("plugins", "--json").ok().json["plugins"]
    infos = {p["name"]: p for p in listed}
    assert len(infos) == len(listed), "a plugin is listed once"
    assert infos["broken-import"]["error"] == "RuntimeError: this plugin is broken at import"
    assert infos["broken-import"]["distribution"] == "fake-preheat-plugins"
    assert infos["broken-import"]["version"] == "0.3"
    assert infos["missing-module"]["error"].startswith("ModuleNotFoundError")
    assert (
        infos["hook-raises"]["error"]
        == "preheat_register_fetchers failed: ValueError: no fetchers today"
    )
    assert infos["hello"]["error"] is None and infos["hello"]["provides"] == {"commands": ["hello"]}
    for name in BUILTIN:
        assert infos[name]["error"] is None


def test_the_cli_still_works_with_broken_plugins_installed(broken_plugins):
    assert broken_plugins.cli("runs", "list", "--json").ok().json == {"runs": []}
    assert broken_plugins.cli("hello", "greet", "--who", "preheat").ok().stdout == "hello preheat\n"


def test_a_plugin_whose_hook_raises_is_reported_once_and_the_others_still_load():
    class Broken:
        @hookimpl
        def preheat_register_stores(self, register):
            register("half", object)
            raise RuntimeError("no store today")

    registry = make_registry(
        entry_points=False, extra=[("local", "preheat.builtin.local"), ("broken", Broken())]
    )
    infos = registry.plugins()
    assert [i.name for i in infos] == ["broken", "local"]
    broken = infos[0]
    assert broken.error == "preheat_register_stores failed: RuntimeError: no store today"
    assert broken.hooks == ("preheat_register_stores",)
    assert registry.get("stores", "file").plugin == "local"


# --------------------------------------------------------------------------- collisions


class FileStoreAgain:
    @hookimpl
    def preheat_register_stores(self, register):
        register("file", lambda url: None)


def test_two_plugins_registering_the_same_store_scheme_collide_naming_both():
    with pytest.raises(PluginCollision) as info:
        make_registry(
            entry_points=False,
            extra=[("local", "preheat.builtin.local"), ("shadow-store", FileStoreAgain())],
        )
    message = str(info.value)
    assert "'file'" in message and "'local'" in message and "'shadow-store'" in message


DUPLICATE_MODULE = {
    "fake_duplicate_store": """
        from preheat.hookspecs import hookimpl

        @hookimpl
        def preheat_register_stores(register):
            register("file", lambda url: None)
    """
}


def test_a_colliding_entry_point_plugin_is_a_one_line_cli_error_until_disabled(
    preheat_env, tmp_path
):
    root = write_dist(
        tmp_path / "site", "fake-dup-store", {"dup-store": "fake_duplicate_store"}, DUPLICATE_MODULE
    )
    preheat_env.set("PYTHONPATH", str(root))
    line = preheat_env.cli("runs", "list").error_line()
    assert "store 'file' is registered by both plugin" in line
    assert "'local'" in line and "'dup-store'" in line
    disabled = preheat_env.cli(
        "runs", "list", "--json", env={"PREHEAT_DISABLE_PLUGINS": "dup-store"}
    )
    assert disabled.ok().json == {"runs": []}


# --------------------------------------------------------------------------- fakes via the factory


@attrs.frozen
class FakeShardArgs:
    tensor_parallel_size: int = 1


class FakeEngine:
    @hookimpl
    def preheat_register_sharders(self, register):
        register("fake", lambda: None, args_class=FakeShardArgs)


def test_shard_args_classes_come_from_installed_engine_plugins(registry_override):
    import preheat.prefetch

    registry_override(make_registry(entry_points=False, extra=[("fake-engine", FakeEngine())]))
    assert preheat.prefetch.FakeShardArgs is FakeShardArgs
    with pytest.raises(ImportError, match="pip install preheat-nope"):
        preheat.prefetch.NopeShardArgs  # noqa: B018
    with pytest.raises(AttributeError):
        preheat.prefetch.something_else  # noqa: B018


def test_stores_are_opened_through_the_plugin_owning_the_scheme(registry_override, tmp_path):
    from preheat.builtin.local import LocalStore
    from preheat.config import open_store
    from preheat.errors import PreheatError

    opened = []

    class TeamStore:
        @hookimpl
        def preheat_register_stores(self, register):
            def factory(url):
                opened.append(url)
                return LocalStore(tmp_path / "team")

            register("team", factory)

    registry_override(
        make_registry(
            entry_points=False, extra=[("local", "preheat.builtin.local"), ("team", TeamStore())]
        )
    )
    store = open_store("team://bucket/prefix")
    assert opened == ["team://bucket/prefix"] and store.root == tmp_path / "team"
    assert isinstance(open_store(str(tmp_path / "plain")), LocalStore)
    with pytest.raises(PreheatError, match="supported: file://, team://"):
        open_store("s3://bucket")


@pytest.mark.parametrize("url", ["s3://b/x", "gs://b/x", "az://c/x", "memory://m/x"])
def test_a_cloud_store_without_the_storage_plugin_names_its_install_line(registry_override, url):
    from preheat.config import open_store
    from preheat.errors import PreheatError

    registry_override(make_registry(entry_points=False, extra=[("local", "preheat.builtin.local")]))
    scheme = url.split("://", 1)[0]
    expected = (
        f"unknown store URL scheme {scheme}:// in '{url}': pip install preheat-storage "
        "(supported: file://)"
    )
    with pytest.raises(PreheatError) as info:
        open_store(url)
    assert str(info.value) == expected


def test_an_unknown_store_scheme_names_no_install_line(registry_override):
    from preheat.config import open_store
    from preheat.errors import PreheatError

    registry_override(make_registry(entry_points=False, extra=[("local", "preheat.builtin.local")]))
    with pytest.raises(PreheatError) as info:
        open_store("gopher://x")
    assert (
        str(info.value) == "unknown store URL scheme gopher:// in 'gopher://x' (supported: file://)"
    )


def test_lookup_of_a_missing_name_lists_what_is_installed():
    from preheat.errors import PreheatError
    from preheat.plugins import lookup

    with pytest.raises(
        PreheatError, match=r"no fetcher named 'gitlab' is installed \(installed: hf\)"
    ):
        lookup("fetchers", "gitlab")
