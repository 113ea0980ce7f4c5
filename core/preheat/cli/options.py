"""Option aliases shared by every command group, and the command class every command uses."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

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


class RootGroup(TyperGroup):
    """The root command group: converts plain parameter values without pydantic (see below)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        plain_conversions(self, ctx)
        return super().parse_args(ctx, args)


# Typer converts every non-flag value through a pydantic TypeAdapter built on first use; importing
# pydantic and building the adapters costs more than a whole no-op prefetch may take. The values
# preheat's commands take (str, int, list[str], Path without checks) convert as Typer converts
# them, here; anything else (a bad integer, a path that needs checking, a type not listed) still
# goes through Typer's own conversion, with its messages. Typer is pinned to one minor version:
# tests/test_startup.py checks that the conversions agree and that pydantic stays unimported.
_INT = re.compile(r"-?[0-9]+")


def plain_conversions(command: Any, ctx: Any) -> None:
    """Convert the plain parameters of `command` and of every command under it without pydantic.

    `ctx` is the root context: the help option each command adds (and caches) is named by it.
    """
    params = list(getattr(command, "params", ()))
    get_help = getattr(command, "get_help_option", None)
    if get_help is not None:
        params.append(get_help(ctx))
    for param in params:
        if param is not None:
            _plain_coercion(param)
    for sub in getattr(command, "commands", {}).values():
        plain_conversions(sub, ctx)


def _plain_coercion(param: Any) -> None:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", False) is not None:
        return
    kind = _kind(descriptor)
    if kind is not None:
        param._runtime_param = _Plain(kind, descriptor)


def _kind(descriptor: Any) -> str | None:
    info, annotation = descriptor.parameter_info, descriptor.annotation
    if getattr(info, "parser", None) is not None or descriptor.file_annotation is not None:
        return None
    if annotation is str:
        return "str"
    if annotation is bool:
        return "bool"
    if annotation == list[str]:
        return "list"
    if annotation is int and info.min is None and info.max is None and not info.clamp:
        return "int"
    if annotation is Path and (
        info.path_type is None
        and info.file_okay
        and info.dir_okay
        and not (info.exists or info.writable or info.resolve_path or info.allow_dash)
    ):
        return "path"
    return None


class _Plain:
    """Typer's conversion of one parameter for the plain cases; Typer's own for the rest."""

    def __init__(self, kind: str, descriptor: Any) -> None:
        self.kind = kind
        self.descriptor = descriptor
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        if multi:
            if (
                self.kind == "list"
                and isinstance(value, (list, tuple))
                and all(isinstance(v, str) for v in value)
            ):
                return list(value)
        elif (
            self.kind == "str"
            and isinstance(value, str)
            or self.kind == "bool"
            and isinstance(value, bool)
        ):
            return value
        elif self.kind == "int" and isinstance(value, str) and _INT.fullmatch(value):
            return int(value)
        elif self.kind == "int" and type(value) is int:
            return value
        elif self.kind == "path" and isinstance(value, str) and value:
            path = Path(value)
            if not os.path.exists(path) or os.access(path, os.R_OK):
                return path
        return self._fallback().coerce(value, param=param, ctx=ctx)

    def _fallback(self) -> Any:
        if self._typer is None:
            from typer.core import build_runtime_param

            self._typer = build_runtime_param(self.descriptor)
        return self._typer
