"""The `preheat` command: command groups, plugin sub-commands, one-line errors."""

from __future__ import annotations

import os
import sys

import typer

from preheat.cli import artifacts, cache, gc, plugins, prefetch, resolve, runs, serve
from preheat.cli.options import Command, RootGroup

EXIT_CODES = """\b
Exit codes:
  0    success
  1    failure, told in one `error: ...` line on stderr
  2    usage error (unknown option, missing or bad argument)
  130  cancelled or interrupted
Set PREHEAT_DEBUG=1 to see the traceback of a failure."""

app = typer.Typer(
    name="preheat",
    cls=RootGroup,
    rich_markup_mode=None,
    help="Prepare large language models for serving before the server starts.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(prefetch.app, name="prefetch")
app.add_typer(runs.app, name="runs")
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(cache.app, name="cache")
app.command("resolve", cls=Command)(resolve.resolve)
app.command("serve", cls=Command)(serve.serve)
app.command("plugins", cls=Command)(plugins.plugins)
app.command("gc", cls=Command)(gc.gc)


def _version(value: bool) -> None:
    if value:
        from preheat import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Prepare large language models for serving before the server starts."""


def _mount_plugin_commands() -> None:
    from preheat.plugins import get_registry

    for reg in get_registry().all("commands"):
        app.add_typer(reg.value, name=reg.name)


def main() -> None:
    """Run the CLI: PreheatError becomes one line on stderr; PREHEAT_DEBUG=1 shows the traceback."""
    from preheat.errors import PreheatError

    debug = os.environ.get("PREHEAT_DEBUG", "") not in ("", "0")
    try:
        _mount_plugin_commands()
        code = app(standalone_mode=False)
        # without standalone mode, Click returns the code of a `typer.Exit` instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except PreheatError as exc:
        if debug:
            raise
        from preheat.redact import redact

        sys.stderr.write(f"error: {redact(str(exc))}\n")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        from preheat.redact import redact

        name = type(exc).__name__
        if name in (
            "UsageError",
            "BadParameter",
            "NoSuchOption",
            "MissingParameter",
            "BadArgumentUsage",
            "NoArgsIsHelpError",
        ):
            show = getattr(exc, "show", None)
            if show is not None:
                show()
            sys.exit(getattr(exc, "exit_code", 2))
        sys.stderr.write(
            f"error: {name}: {redact(str(exc)).splitlines()[0] if str(exc) else ''} (PREHEAT_DEBUG=1 for details)\n"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
