"""The public plugin surface: plugins import only `preheat.api`; broken plugins are reported, not fatal."""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

import preheat.api as api
from preheat.api import hookimpl
from preheat.plugins import PluginCollision, make_registry

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"preheat.api", "preheat.prefetch", "preheat.app"}


def plugin_modules() -> list[Path]:
    """Every module of every plugin package and example plugin (their tests included)."""
    found = []
    for top in ("plugins", "examples"):
        found += [p for p in (ROOT / top).rglob("*.py") if "/." not in str(p)]
    return sorted(found)


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`preheat.*` modules other than the public ones that `path` imports, anywhere in it."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "preheat":
                names = [f"preheat.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("preheat.") and name not in PUBLIC:
                bad.append((node.lineno, f"{path.relative_to(root)}:{node.lineno} imports {name}"))
    return [line for _, line in sorted(bad)]


def test_plugins_import_only_the_public_api():
    modules = plugin_modules()
    assert len(modules) > 40, "the plugin packages were not found"
    offenders = [line for path in modules for line in private_imports(path)]
    assert offenders == [], "plugins must import only preheat.api:\n" + "\n".join(offenders)


def test_the_boundary_check_catches_a_private_import(tmp_path):
    module = tmp_path / "sneaky.py"
    module.write_text(
        "from preheat.api import Store\n"
        "def f():\n    from preheat.catalog import Catalog\n    import preheat.runs\n"
        "from preheat import models\n"
    )
    bad = private_imports(module, tmp_path)
    assert [line.rsplit(" ", 1)[-1] for line in bad] == [
        "preheat.catalog",
        "preheat.runs",
        "preheat.models",
    ]


def test_every_public_name_exists_and_is_documented():
    for name in api.__all__:
        value = getattr(api, name)
        if callable(value) or isinstance(value, type):
            assert (value.__doc__ or "").strip(), f"preheat.api.{name} has no docstring"


INTERFACES = (
    api.Store,
    api.ObjectWriter,
    api.Fetcher,
    api.Sharder,
    api.Resolver,
    api.Executor,
    api.SourceArtifact,
    api.TransferPool,
)


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda c: c.__name__)
def test_every_interface_method_is_documented(interface):
    for name, member in vars(interface).items():
        if callable(member) and not name.startswith("_"):
            assert (member.__doc__ or "").strip(), f"{interface.__name__}.{name} has no docstring"


def test_hooks_document_parameters_and_return_values():
    from preheat import hookspecs

    hooks = [n for n in dir(hookspecs) if n.startswith("preheat_register_")]
    assert len(hooks) == 7
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert ":param register:" in doc and ":return:" in doc, name


# --------------------------------------------------------------------------- broken plugins


@attrs.frozen
class GoodArgs:
    tp: int = 1


class NotAttrsArgs:
    pass


class GoodEngine:
    @hookimpl
    def preheat_register_sharders(self, register):
        register("good", lambda: None, args_class=GoodArgs)


class PlainArgsEngine:
    @hookimpl
    def preheat_register_sharders(self, register):
        register("plain", lambda: None, args_class=NotAttrsArgs)


class PositionalArgsEngine:
    @hookimpl
    def preheat_register_sharders(self, register):
        register("positional", lambda: None, GoodArgs)


class TwiceStore:
    @hookimpl
    def preheat_register_stores(self, register):
        register("twice", lambda url: None)
        register("twice", lambda url: None)


class RaisingResolver:
    @hookimpl
    def preheat_register_resolvers(self, register):
        register("half", lambda: None)
        raise RuntimeError("resolvers are down")


def broken_registry():
    return make_registry(
        entry_points=False,
        extra=[
            ("local", "preheat.builtin.local"),
            ("good", GoodEngine()),
            ("plain", PlainArgsEngine()),
            ("positional", PositionalArgsEngine()),
            ("twice", TwiceStore()),
            ("raising", RaisingResolver()),
        ],
    )


def test_a_non_attrs_args_class_is_reported_against_its_plugin():
    registry = broken_registry()
    errors = {i.name: i.error for i in registry.plugins()}
    assert errors["plain"] == (
        "preheat_register_sharders failed: PluginError: sharder 'plain' needs args_class= "
        f"an attrs class, got {NotAttrsArgs!r}"
    )
    assert registry.get("sharders", "plain") is None
    assert registry.get("sharders", "good").args_class is GoodArgs


def test_an_args_class_passed_positionally_is_reported():
    errors = {i.name: i.error for i in broken_registry().plugins()}
    assert errors["positional"].startswith("preheat_register_sharders failed: TypeError: ")


def test_a_plugin_registering_one_name_twice_is_reported_and_keeps_nothing():
    registry = broken_registry()
    errors = {i.name: i.error for i in registry.plugins()}
    assert (
        errors["twice"]
        == "preheat_register_stores failed: PluginError: registered store 'twice' twice"
    )
    assert registry.get("stores", "twice") is None
    assert registry.get("stores", "file").plugin == "local"


def test_a_raising_hook_keeps_nothing_it_registered():
    registry = broken_registry()
    errors = {i.name: i.error for i in registry.plugins()}
    assert (
        errors["raising"] == "preheat_register_resolvers failed: RuntimeError: resolvers are down"
    )
    assert registry.get("resolvers", "half") is None
    for name in ("good", "local"):
        assert errors[name] is None


def test_two_plugins_with_one_sharder_name_collide_naming_both():
    with pytest.raises(
        PluginCollision, match="sharder 'good' is registered by both plugin 'a' and plugin 'b'"
    ):
        make_registry(entry_points=False, extra=[("a", GoodEngine()), ("b", GoodEngine())])


BROKEN_DIST = {
    "not-attrs": """
        from preheat.api import hookimpl

        class Args:
            pass

        @hookimpl
        def preheat_register_sharders(register):
            register("weird", lambda: None, args_class=Args)
    """,
    "twice": """
        from preheat.api import hookimpl

        @hookimpl
        def preheat_register_fetchers(register):
            register("dup", object)
            register("dup", object)
    """,
}


def test_the_cli_reports_broken_plugins_in_one_line_and_keeps_working(preheat_env, tmp_path):
    from test_plugins import write_dist

    modules = {f"fake_{k.replace('-', '_')}": v for k, v in BROKEN_DIST.items()}
    entry_points = {k: f"fake_{k.replace('-', '_')}" for k in BROKEN_DIST}
    root = write_dist(tmp_path / "site", "fake-broken-registrations", entry_points, modules)
    preheat_env.set("PYTHONPATH", str(root))
    infos = {p["name"]: p for p in preheat_env.cli("plugins", "--json").ok().json["plugins"]}
    assert "needs args_class= an attrs class" in infos["not-attrs"]["error"]
    assert infos["twice"]["error"].endswith("registered fetcher 'dup' twice")
    for error in (infos["not-attrs"]["error"], infos["twice"]["error"]):
        assert "\n" not in error
    assert preheat_env.cli("runs", "list", "--json").ok().json == {"runs": []}
    text = preheat_env.cli("plugins").ok().stdout
    assert "not-attrs" in text and "twice" in text


def test_two_distributions_declaring_one_plugin_name_is_an_error_naming_both(preheat_env, tmp_path):
    from test_plugins import write_dist

    module = {"fake_same_name": "from preheat.api import hookimpl\n"}
    root = write_dist(tmp_path / "site", "fake-dist-one", {"samename": "fake_same_name"}, module)
    write_dist(root, "fake-dist-two", {"samename": "fake_same_name"}, {})
    preheat_env.set("PYTHONPATH", str(root))
    line = preheat_env.cli("runs", "list").error_line()
    assert "plugin name 'samename' is declared by both distribution" in line
    assert "'fake-dist-one'" in line and "'fake-dist-two'" in line


def test_request_cancel_leaves_the_request_the_worker_polls_for(preheat_env):
    from preheat.api import RunRecord, request_cancel
    from preheat.catalog import Catalog
    from preheat.config import open_store
    from preheat.models import PrefetchRequest

    with preheat_env.applied():
        store = preheat_env.store
        record = RunRecord(
            name="r20260101-000000-abcdef",
            status="running",
            request=PrefetchRequest(repo="org/name"),
            created="2026-01-01T00:00:00Z",
            store=str(store),
        )
        catalog = Catalog(open_store(str(store)))
        assert catalog.store.head(catalog.cancel_key(record.name)) is None
        request_cancel(record)
        assert catalog.store.head(catalog.cancel_key(record.name)) is not None
