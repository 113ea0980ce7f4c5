"""Run with the vLLM venv's python: vLLM's own server argument parser as a JSON service.

    PY vllm_parser.py flags            -> {"version", "flags": {FLAG: {"nargs", "choices"}}}
    PY vllm_parser.py parse < ARGVS    -> [{"ok", "error", "args": {...}}, ...]

ARGVS is a JSON list of argument lists (what follows `-m vllm.entrypoints.openai.api_server`).
Does not import preheat.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys


def make_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # vLLM >= 0.2x
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # older releases
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser())


def nargs(action) -> object:
    if action.nargs is not None:
        return action.nargs
    zero = (
        argparse._StoreTrueAction,
        argparse._StoreFalseAction,
        argparse._StoreConstAction,
        argparse._CountAction,
        argparse._HelpAction,
        argparse._VersionAction,
    )
    if isinstance(action, zero):
        return 0
    if isinstance(action, argparse.BooleanOptionalAction):
        return "?0"  # --flag / --no-flag, no value
    return 1


def flags(parser) -> dict:
    out = {}
    for action in parser._actions:
        choices = sorted(str(c) for c in action.choices) if action.choices else None
        for option in action.option_strings:
            out[option] = {"nargs": nargs(action), "choices": choices}
    return out


def parse(parser, argvs: list[list[str]]) -> list[dict]:
    results = []
    for argv in argvs:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = parser.parse_args(argv)
        except SystemExit:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            results.append({"ok": False, "error": lines[-1] if lines else "exit"})
            continue
        keep = (
            "model", "served_model_name", "host", "port", "load_format",
            "tensor_parallel_size", "api_key", "dtype", "max_model_len",
            "model_loader_extra_config", "enforce_eager",
        )  # fmt: skip
        results.append({"ok": True, "args": {k: getattr(ns, k, None) for k in keep}})
    return results


def main() -> None:
    import vllm

    parser = make_parser()
    if sys.argv[1] == "flags":
        from vllm.model_executor import model_loader

        formats = sorted(model_loader._LOAD_FORMAT_TO_MODEL_LOADER)
        data = {"version": vllm.__version__, "load_formats": formats, "flags": flags(parser)}
        print(json.dumps(data, default=str, indent=0, sort_keys=True))
    else:
        print(json.dumps(parse(parser, json.load(sys.stdin)), default=str))


if __name__ == "__main__":
    main()
