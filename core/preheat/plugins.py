"""Plugin discovery and the registry of what plugins provide.

Built-in plugins are listed under the `preheat` entry-point group of the
`preheat` distribution itself, so they load exactly like external ones.
A plugin that fails to import is recorded and skipped; two plugins that
register the same name raise an error naming both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from preheat import hookspecs
from preheat.errors import PreheatError

ENTRY_POINT_GROUP = "preheat"
KINDS = ("fetchers", "stores", "sharders", "resolvers", "executors", "commands", "apps")


@attrs.frozen
class PluginInfo:
    """One loaded (or failed) plugin: where it came from and what it provides."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...] = ()
    provides: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    error: str | None = None


@attrs.frozen
class Registration:
    """One thing a plugin registered under a name (`args_class` for sharders only)."""

    kind: str
    name: str
    plugin: str
    value: Any
    args_class: type | None = None


class PluginCollision(PreheatError):
    """Two plugins registered the same name for the same job."""


class PluginError(PreheatError):
    """A plugin registered something preheat cannot use (reported against that plugin only)."""


def _check_args_class(engine: str, args_class: Any) -> type:
    if not (isinstance(args_class, type) and attrs.has(args_class)):
        raise PluginError(
            f"sharder {engine!r} needs args_class= an attrs class, got {args_class!r}"
        )
    return args_class


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        failures: dict[str, PluginInfo] | None = None,
        dists: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.pm = pm
        self.failures = failures or {}
        self.dists = dists or {}
        self._entries: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, f"preheat_register_{kind}")
        for impl in hook.get_hookimpls():
            try:
                self._entries[kind].update(self._call(kind, impl))
            except PluginCollision:
                raise
            except Exception as exc:  # one broken plugin must not take the others down
                self._fail(impl.plugin_name, f"{hook.name} failed: {type(exc).__name__}: {exc}")

    def _call(self, kind: str, impl: pluggy.HookImpl) -> dict[str, Registration]:
        """What one plugin's registration hook registers (kept only when the whole hook succeeds)."""
        plugin = impl.plugin_name
        mine: dict[str, Registration] = {}

        def add(name: str, value: Any, args_class: type | None = None) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"registered a {kind[:-1]} under {name!r}: use a non-empty name")
            if name in mine:
                raise PluginError(f"registered {kind[:-1]} {name!r} twice")
            existing = self._entries[kind].get(name)
            if existing is not None:
                raise PluginCollision(
                    f"{kind[:-1]} {name!r} is registered by both plugin {existing.plugin!r} "
                    f"and plugin {plugin!r}: uninstall or disable one of them"
                )
            mine[name] = Registration(kind, name, plugin, value, args_class)

        if kind == "sharders":

            def register(engine: str, sharder_factory: Any, *, args_class: type) -> None:
                add(engine, sharder_factory, _check_args_class(engine, args_class))
        else:

            def register(name: str, factory: Any) -> None:
                add(name, factory)

        impl.function(register=register)
        return mine

    def _fail(self, plugin: str, error: str) -> None:
        dist, version = self.dists.get(plugin, (None, None))
        previous = self.failures.get(plugin)
        if previous is not None and previous.error:
            error = f"{previous.error}; {error}"
        self.failures[plugin] = PluginInfo(
            name=plugin, distribution=dist, version=version, error=error
        )

    def get(self, kind: str, name: str) -> Registration | None:
        """The registration of `name` for `kind`, or None."""
        return self._entries[kind].get(name)

    def names(self, kind: str) -> list[str]:
        """Registered names for `kind`, sorted."""
        return sorted(self._entries[kind])

    def all(self, kind: str) -> list[Registration]:
        """Every registration for `kind`, sorted by name."""
        return [self._entries[kind][n] for n in self.names(kind)]

    def plugins(self) -> list[PluginInfo]:
        """Every plugin loaded or failed, with its hooks and what it provides."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self.dists.get(name, (None, None))
            provides = {
                kind: tuple(r.name for r in self.all(kind) if r.plugin == name)
                for kind in KINDS
                if any(r.plugin == name for r in self.all(kind))
            }
            hooks = tuple(
                sorted(
                    caller.name
                    for caller in self.pm.get_hookcallers(plugin) or ()
                    if caller.name.startswith("preheat_")
                )
            )
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=dist,
                    version=version,
                    hooks=hooks,
                    provides=provides,
                    error=self.failures[name].error if name in self.failures else None,
                )
            )
        # a plugin whose hook failed is registered and listed above; add those that failed to load
        infos.extend(info for name, info in self.failures.items() if not self.pm.has_plugin(name))
        return sorted(infos, key=lambda i: i.name)


def make_registry(
    *,
    entry_points: bool = True,
    extra: Iterable[tuple[str, object]] = (),
    blocked: Iterable[str] = (),
) -> Registry:
    """Build a plugin manager and the registry from the entry-point plugins and any `extra` (name, plugin) pairs.

    Tests pass `entry_points=False` and their own plugins in `extra`.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    failures: dict[str, PluginInfo] = {}
    dists: dict[str, tuple[str, str]] = {}
    if entry_points:
        declared: dict[str, str | None] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            if ep.name in declared:
                if declared[ep.name] != dist_name:
                    raise PluginCollision(
                        f"plugin name {ep.name!r} is declared by both distribution "
                        f"{declared[ep.name]!r} and distribution {dist_name!r}: uninstall one of them"
                    )
                continue
            declared[ep.name] = dist_name
            if pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                if dist is not None:
                    dists[ep.name] = (dist.metadata["Name"], dist.version)
            except Exception as exc:  # a broken plugin must not take the CLI down
                failures[ep.name] = PluginInfo(
                    name=ep.name,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    error=f"{type(exc).__name__}: {exc}",
                )
    for name, plugin in extra:
        if isinstance(plugin, str):
            plugin = importlib.import_module(plugin)
        pm.register(plugin, name=name)
    return Registry(pm, failures, dists)


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry built from installed plugins (built once, on first use)."""
    global _registry
    with _lock:
        if _registry is None:
            disabled = os.environ.get("PREHEAT_DISABLE_PLUGINS", "")
            _registry = make_registry(blocked=[n.strip() for n in disabled.split(",") if n.strip()])
        return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests inject fake plugins this way)."""
    global _registry
    with _lock:
        _registry = registry


def lookup(kind: str, name: str, hint: Callable[[str], str] | None = None) -> Registration:
    """The registration of `name`, or a PreheatError listing what is installed."""
    reg = get_registry().get(kind, name)
    if reg is None:
        known = ", ".join(get_registry().names(kind)) or "none"
        message = f"no {kind[:-1]} named {name!r} is installed (installed: {known})"
        if hint is not None:
            message += f"; {hint(name)}"
        raise PreheatError(message)
    return reg
