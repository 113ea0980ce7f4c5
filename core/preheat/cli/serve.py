"""`preheat serve REF --engine NAME [...] [-- EXTRA ENGINE ARGS]`: serve an artifact on this machine."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from preheat.cli.options import Json, Quiet, Store
from preheat.errors import PreheatError


class _Terminated(Exception):
    """SIGTERM or SIGHUP: stop the engine and exit 0."""


def _on_signal(signum, frame) -> None:
    raise _Terminated()


def _plan_data(plan) -> dict:
    return {
        "app": plan.app_name,
        "engine": plan.engine,
        "artifact": {"name": plan.manifest.name, "version": plan.manifest.version},
        "model": plan.served_model_name,
        "url": plan.url,
        "engine_url": plan.engine_url,
        "proxy": plan.proxy,
        "auth": plan.auth,
        "stream": plan.stream,
        "local_copy": plan.local_copy,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "scale_to_zero": (
            {"scaledown_after": plan.scaledown_after} if plan.min_replicas == 0 else None
        ),
        "startup_timeout": plan.startup_timeout,
        "command": list(plan.command.argv),
        "env": plan.shown_env(),
        "notes": list(plan.notes),
    }


def _show_failure(exc) -> None:
    tail = getattr(exc, "log_tail", None)
    if tail:
        sys.stderr.write(f"last lines of the engine's log ({exc.log_path}):\n")
        for line in tail:
            sys.stderr.write(f"  | {line}\n")


def serve(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF",
            help="NAME[:VERSION] (default: latest), or the artifact's path or store URI.",
        ),
    ],
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar="NAME",
            help="The engine (`preheat plugins` lists them under apps).",
            show_default=False,
        ),
    ],
    extra_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- EXTRA ENGINE ARGS",
            help="Passed to the engine as given, after `--`.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", metavar="P", help="Port clients use.")] = 8000,
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to listen on.")
    ] = "0.0.0.0",
    model_id: Annotated[
        str | None,
        typer.Option(
            "--model-id",
            metavar="ID",
            help="Model name clients send (default: the artifact name).",
            show_default=False,
        ),
    ] = None,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp",
            metavar="N",
            help="Tensor-parallel size (a pre-sharded artifact must match it).",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Let the engine stream the weights from the object store (no local copy).",
        ),
    ] = False,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            help="Require a generated API key on every API route (printed once).",
        ),
    ] = True,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            metavar="F",
            help="Write the API key to F (mode 0600) instead of printing it.",
            show_default=False,
        ),
    ] = None,
    scale_to_zero: Annotated[
        str | None,
        typer.Option(
            "--scale-to-zero",
            metavar="SECONDS",
            help="Start the engine on the first request, stop it after this long idle "
            "(e.g. 600, 10m).",
            show_default=False,
        ),
    ] = None,
    startup_timeout: Annotated[
        str,
        typer.Option(
            "--startup-timeout", metavar="SECONDS", help="How long the engine has to get ready."
        ),
    ] = "900",
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            metavar="TYPE:COUNT",
            help="GPUs to check the artifact against, e.g. L40s:4.",
            show_default=False,
        ),
    ] = None,
    disk: Annotated[
        str | None,
        typer.Option(
            "--disk",
            metavar="Q",
            help="Local disk for a copied artifact, e.g. 100Gi.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The app's name (log file names).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the exact command and environment (secrets redacted)."
        ),
    ] = False,
    store: Store = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Serve an artifact with an engine on this machine, until Ctrl-C.

    Prints the URL (and the API key, once) when the engine answers; with --json, one
    object. The engine's log goes to $PREHEAT_HOME/serve/logs.
    """
    import shlex

    from preheat.app import Resources, Scaling
    from preheat.cli.output import note, print_json
    from preheat.plugins import get_registry
    from preheat.serving import EngineFailed
    from preheat.serving import serve as start

    registration = get_registry().get("apps", engine)
    if registration is None:
        known = ", ".join(get_registry().names("apps")) or "none installed"
        raise PreheatError(
            f"no app environment for engine {engine!r} (installed: {known}): "
            f"pip install preheat-{engine}"
        )
    scaling = Scaling()
    if scale_to_zero is not None:
        scaling = Scaling(replicas=(0, 1), scaledown_after=scale_to_zero)
    resources = Resources(gpu=gpu, disk=disk) if gpu or disk else None
    app = registration.value(
        model_path=ref,
        name=name,
        model_id=model_id,
        resources=resources,
        stream_model=stream,
        extra_args=tuple(extra_args or ()),
        scaling=scaling,
        requires_auth=auth or api_key_file is not None,
        port=port,
        host=host,
        store=store,
        tensor_parallel_size=tp,
        startup_timeout=startup_timeout,
    )

    if dry_run:
        plan = app.plan()
        data = _plan_data(plan)
        if as_json:
            print_json(data)
            return
        for line in plan.notes:
            note(line, quiet)
        if plan.proxy:
            what = "an API key on every API route" if plan.auth else "no API key"
            scale = (
                f", the engine started on demand and stopped after {plan.scaledown_after:g} s idle"
                if plan.min_replicas == 0
                else ""
            )
            note(
                f"preheat's proxy on {plan.host}:{plan.port} ({what}{scale}) -> {plan.engine_url}",
                quiet,
            )
        for key, value in sorted(data["env"].items()):
            print(f"export {key}={shlex.quote(value)}")
        print(shlex.join(data["command"]))
        return

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    server = None
    try:
        try:
            server = start(app, api_key_file=api_key_file, quiet=quiet)
        except EngineFailed as exc:
            _show_failure(exc)
            raise
        data = {
            **_plan_data(server.plan),
            "pid": server.pid,
            "log": str(server.log_path),
            "api_key": server.api_key if server.api_key_file is None else None,
            "api_key_file": str(server.api_key_file) if server.api_key_file else None,
        }
        if as_json:
            print_json(data)
        else:
            print(f"url: {server.url}/v1")
            print(f"model: {server.model}")
            if server.api_key_file is not None:
                print(f"api key: in {server.api_key_file}")
            elif server.api_key is not None:
                print(f"api key: {server.api_key}")
        sys.stdout.flush()
        note(f"serving {server.artifact} with {server.engine}; Ctrl-C stops it", quiet)
        while True:
            code = server.wait(timeout=1.0)
            if code is not None:
                tail = server.slot.current.tail(15) if server.slot.current else []
                failure = EngineFailed(
                    f"{server.engine} exited with code {code} (log: {server.log_path})",
                    tail,
                    str(server.log_path),
                )
                _show_failure(failure)
                raise failure
    except _Terminated:
        note("stopping the engine", quiet)
        if server is not None:
            server.stop()
        return
    except KeyboardInterrupt:
        note("stopping the engine", quiet)
        if server is not None:
            server.stop()
        raise typer.Exit(130) from None
    finally:
        if server is not None:
            server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
