"""The hooks a preheat plugin may implement.

Every hook is a registration hook: it receives a `register` callback and
calls it once per thing it provides, keyed by a name. Two plugins providing
the same name is an error that names both. Plugins are modules or objects
listed under the `preheat` entry-point group; built-in plugins load the
same way.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("preheat")
hookimpl = pluggy.HookimplMarker("preheat")


@hookspec
def preheat_register_fetchers(register):
    """Register model sources: `register(name, fetcher_factory)`.

    `fetcher_factory(token_key=NAME)` returns a `preheat.fetch.Fetcher` that lists and
    streams the files of a model repository (the built-in one is `hf`);
    `token_key` names the secret (environment variable) holding its credentials.
    """


@hookspec
def preheat_register_stores(register):
    """Register stores by URL scheme: `register(scheme, store_factory)`.

    `store_factory(url)` returns a `preheat.store.Store` rooted at `url`,
    e.g. `register("s3", S3Store.from_url)`. The scheme `file` is built in.
    """


@hookspec
def preheat_register_sharders(register):
    """Register shard engines: `register(engine, sharder_factory, args_class)`.

    `engine` is the name used in shard configs (`engine: NAME`);
    `args_class` is the attrs class of the engine's shard arguments (exported
    from `preheat.prefetch` under its class name); `sharder_factory()`
    returns a `preheat.shard.Sharder`.
    """


@hookspec
def preheat_register_resolvers(register):
    """Register engine resolvers: `register(engine, resolver_factory)`.

    `resolver_factory()` returns a `preheat.resolve.Resolver` that turns an
    artifact into the engine's launch arguments and environment.
    """


@hookspec
def preheat_register_executors(register):
    """Register run executors: `register(name, executor_factory)`.

    `executor_factory()` returns a `preheat.execute.Executor` that starts a
    run record's pipeline somewhere (the built-in one is `local`).
    """


@hookspec
def preheat_register_commands(register):
    """Register CLI sub-command groups: `register(name, typer_app)`.

    The app is mounted as `preheat NAME ...`; plugins never receive the
    root app.
    """
