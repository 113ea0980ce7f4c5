"""`preheat runs list | get | wait | logs | cancel`."""

from __future__ import annotations

from typing import Annotated

import typer

from preheat.cli.options import Command, Json, Quiet, Store

app = typer.Typer(rich_markup_mode=None, help="Follow and control runs.", no_args_is_help=True)
RunName = Annotated[
    str, typer.Argument(metavar="RUN", help="Run name, as printed by `preheat prefetch`.")
]


def _record_json(record) -> dict:
    from preheat import serde

    return serde.to_dict(record)


@app.command("list", cls=Command)
def list_runs(
    store: Store = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Show at most this many runs.")] = 50,
    as_json: Json = False,
) -> None:
    """List runs, newest first."""
    from itertools import islice

    from preheat.catalog import Catalog
    from preheat.cli.output import human, print_json, table
    from preheat.config import open_store

    records = list(islice(Catalog(open_store(store)).runs(), limit))
    if as_json:
        print_json({"runs": [_record_json(r) for r in records]})
        return
    table(
        [
            {
                "run": r.name,
                "status": r.status,
                "repo": r.request.repo,
                "artifact": str(r.artifact or ""),
                "progress": f"{human(r.bytes_done)}/{human(r.bytes_total)}"
                if r.bytes_total and not r.done
                else "",
                "created": r.created,
            }
            for r in records
        ],
        ["run", "status", "repo", "artifact", "progress", "created"],
    )


@app.command("get", cls=Command)
def get(run: RunName, store: Store = None, as_json: Json = False) -> None:
    """Show one run."""
    from preheat.cli.output import print_json
    from preheat.runs import Run

    record = Run(run, store).record
    if as_json:
        print_json(_record_json(record))
        return
    for key, value in _record_json(record).items():
        if key != "request":
            print(f"{key}: {value}")
    print(f"repo: {record.request.repo}@{record.request.revision or 'main'}")


@app.command("wait", cls=Command)
def wait(run: RunName, store: Store = None, as_json: Json = False, quiet: Quiet = False) -> None:
    """Wait for a run to end; print its artifact path (exit 1 if it failed, 130 if cancelled)."""
    from preheat.cli.output import Bars, fail_run, print_json, want_bars
    from preheat.cli.prefetch import run_summary
    from preheat.runs import Run

    handle = Run(run, store)
    if want_bars(quiet):
        state = {"stage": None, "done": 0}
        with Bars() as bars:

            def on_update(record) -> None:
                if record.stage != state["stage"]:
                    state["stage"], state["done"] = record.stage, 0
                    bars.stage(record.stage or record.status, record.bytes_total)
                if record.bytes_done > state["done"]:
                    bars.advance(record.bytes_done - state["done"])
                    state["done"] = record.bytes_done

            handle.wait(on_update=on_update)
    else:
        handle.wait()
    record = handle.record
    summary = run_summary(record, handle.catalog)
    if as_json:
        print_json(summary)
    elif record.status == "succeeded":
        print(summary["artifact"]["path"])
    if record.status != "succeeded":
        fail_run(record)


@app.command("logs", cls=Command)
def logs(run: RunName, store: Store = None) -> None:
    """Print a run's log."""
    import sys

    from preheat.runs import Run

    sys.stdout.write(Run(run, store).logs())


@app.command("cancel", cls=Command)
def cancel(run: RunName, store: Store = None, as_json: Json = False) -> None:
    """Stop a running run cleanly."""
    from preheat.cli.output import note, print_json
    from preheat.runs import Run

    handle = Run(run, store)
    signalled = handle.cancel()
    if as_json:
        print_json(
            {"run": run, "cancel_requested": True, "signalled": signalled, "status": handle.status}
        )
    else:
        note(f"cancel requested for run {run}" + ("" if signalled else f" (it is {handle.status})"))
