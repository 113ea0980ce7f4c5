"""Option aliases shared by every command group, and the command class every command uses."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand

Store = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="Store URL (default: $PREHEAT_STORE, else a local store under $PREHEAT_HOME).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]


def _argument_label(param: Any) -> str:
    label = param.metavar or param.name.upper()
    return label if param.nargs == 1 else f"{label}..."


class Command(TyperCommand):
    """A command whose help names each argument by its metavar alone.

    Typer writes a required argument as `{repo}` in the usage line and `repo <str>` in the
    argument list; this writes `REPO` (the argument's `metavar`) in both. Pass it to every
    command: `@app.command("NAME", cls=Command)`, and give every argument and valued
    option a `metavar` (`REPO`, `--store URL`).
    """

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                label = _argument_label(param)
                pieces.append(label if param.required else f"[{label}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_label(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
