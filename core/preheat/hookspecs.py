"""The hooks a preheat plugin may implement.

Every hook is a registration hook: preheat calls it once per process, the
first time a registry is built (the first CLI command or API call that
needs plugins), on the calling thread, and passes a `register` callback that
the plugin calls once per thing it provides, keyed by a name. Keep hooks
cheap: import heavy modules inside the factories, not at registration.

A hook that raises is reported against its plugin (`preheat plugins` shows
the error) and nothing it registered in that hook is kept; every other
plugin keeps working. Two plugins registering the same name for the same
job is an error naming both, until one of them is uninstalled or disabled
with `PREHEAT_DISABLE_PLUGINS=NAME`. Plugins are modules or objects listed
under the `preheat` entry-point group; the built-in ones load the same way.
Import what a hook needs from `preheat.api` only.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("preheat")
hookimpl = pluggy.HookimplMarker("preheat")


@hookspec
def preheat_register_fetchers(register):
    """Register model sources.

    :param register: call ``register(name, fetcher_factory)`` per source.
        ``name`` is what ``--source`` / ``source=`` select (the built-in one
        is ``hf``). ``fetcher_factory(token_key=KEY)`` returns a new
        `preheat.api.Fetcher` for one run, in the process that runs the
        pipeline; ``KEY`` names the environment variable holding its
        credentials. A `Fetcher` subclass is a valid factory, and its static
        ``check_repo`` / ``default_artifact_name`` then validate and name a
        request in the submitting process, before any run exists.
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_stores(register):
    """Register stores by URL scheme.

    :param register: call ``register(scheme, store_factory)`` per scheme,
        e.g. ``register("s3", S3Store.from_url)``. ``store_factory(url)``
        returns a `preheat.api.Store` rooted at ``url``; it is called in
        every process that opens that store (CLI, worker, resolver), so it
        must validate the URL and credentials quickly and raise
        `preheat.api.PreheatError` with a one-line message when they are
        wrong. The scheme ``file`` (and plain paths) is built in.
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_sharders(register):
    """Register shard engines.

    :param register: call ``register(engine, sharder_factory,
        args_class=ArgsClass)`` per engine. ``engine`` is the name used in
        shard configs (``engine: NAME``). ``args_class`` is an attrs class
        holding the engine's shard arguments: shard configs are validated by
        constructing it (its validators raise `preheat.api.PreheatError` to
        refuse a value), and it is exported from `preheat.prefetch` under
        its class name. ``sharder_factory()`` returns a
        `preheat.api.Sharder`; it is called in the process that runs the
        pipeline. A non-attrs ``args_class`` fails the plugin's hook.
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_resolvers(register):
    """Register engine resolvers.

    :param register: call ``register(engine, resolver_factory)`` per engine.
        ``resolver_factory()`` returns a `preheat.api.Resolver` that turns a
        published artifact into the engine's launch command and
        environment (``preheat resolve --engine NAME``).
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_apps(register):
    """Register app environments: how an engine serves an artifact.

    :param register: call ``register(engine, app_factory)`` per engine.
        ``app_factory(**fields)`` returns a subclass instance of
        `preheat.app.AppEnvironment` (the class itself is a valid factory);
        ``fields`` are its keyword arguments (``model_path``, ``model_id``,
        ``stream_model``, ``extra_args``, ``scaling``, ``requires_auth``,
        ``port``, ``host``, ``store``, ``tensor_parallel_size``, ...).
        ``preheat serve REF --engine NAME`` builds the app this way and runs it
        with ``preheat.serve``; the class turns a checked plan into the
        engine's command line (`AppEnvironment.engine_command`). Import the
        class inside the factory to keep registration cheap.
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_executors(register):
    """Register run executors.

    :param register: call ``register(name, executor_factory)`` per executor
        (``--executor NAME``; the built-in one is ``local``).
        ``executor_factory()`` returns a `preheat.api.Executor` that starts
        a saved run record somewhere, for example with
        `preheat.api.worker_command`, and can tell whether it is alive and
        cancel it.
    :return: nothing; return values are ignored.
    """


@hookspec
def preheat_register_commands(register):
    """Register CLI sub-command groups.

    :param register: call ``register(name, typer_app)`` per group; the app
        is mounted as ``preheat NAME ...`` when the CLI starts. Plugins
        never receive the root app.
    :return: nothing; return values are ignored.
    """
