"""`preheat prefetch hf-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from preheat.cli.options import Json, Quiet, Store

app = typer.Typer(
    rich_markup_mode=None,
    help="Fetch a model into the store, verified, optionally pre-sharded.",
    no_args_is_help=True,
)


def run_summary(record, catalog) -> dict:
    """The `--json` object of a run: run, status, reused, artifact and outputs."""
    from preheat.resolve import location

    artifact = None
    outputs = []
    if record.artifact is not None and record.status == "succeeded":
        manifest = catalog.resolve(str(record.artifact))
        where = location(catalog, manifest)
        path = where.path or where.uri
        artifact = {
            "name": manifest.name,
            "version": manifest.version,
            "uri": where.uri,
            "path": path,
        }
        outputs = [{"path": path}]
    summary = {
        "run": record.name,
        "status": record.status,
        "reused": record.reused,
        "artifact": artifact,
        "outputs": outputs,
    }
    if record.error:
        summary["error"] = record.error
    return summary


@app.command("hf-model")
def hf_model(
    repo: Annotated[str, typer.Argument(help="Hub repo id, e.g. Qwen/Qwen3-0.6B.")],
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: main).")
    ] = None,
    artifact_name: Annotated[
        str | None, typer.Option(help="Artifact name (default: from the repo name).")
    ] = None,
    architecture: Annotated[
        str | None, typer.Option(help="Override the detected architecture.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Override the detected task.")] = None,
    modality: Annotated[
        list[str] | None, typer.Option(help="Modality (repeatable; default text).")
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="Override the detected weight format.")
    ] = None,
    model_type: Annotated[
        str | None, typer.Option(help="Override the detected model_type.")
    ] = None,
    short_description: Annotated[
        str | None, typer.Option(help="Override the detected description.")
    ] = None,
    force: Annotated[
        int, typer.Option(help="Bump to redo the work instead of reusing the artifact.")
    ] = 0,
    wait: Annotated[
        bool, typer.Option("--wait", help="Run in the foreground and print the artifact path.")
    ] = False,
    hf_token_key: Annotated[
        str, typer.Option(help="Environment variable holding the Hub token.")
    ] = "HF_TOKEN",
    cpu: Annotated[str | None, typer.Option(help="CPU request, e.g. 4 or 500m.")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory request, e.g. 16Gi.")] = None,
    ephemeral_storage: Annotated[
        str | None, typer.Option(help="Local disk the run may use, e.g. 100Gi.")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="Serving accelerator TYPE:COUNT, e.g. L40s:4.")
    ] = None,
    shard_config: Annotated[
        Path | None, typer.Option(help="YAML shard config (engine + args).")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only files matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip files matching this glob (repeatable).")
    ] = None,
    store: Store = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Prefetch a Hugging Face model repository into the store."""
    import sys

    from preheat.cli.output import Bars, note, print_json, want_bars
    from preheat.models import PrefetchRequest, Resources
    from preheat.runs import new_run, submit
    from preheat.shard_config import ShardRequest

    shard = ShardRequest.parse(shard_config) if shard_config is not None else None
    metadata = {
        "architecture": architecture,
        "task": task,
        "modality": tuple(modality) if modality else None,
        "format": format,
        "model_type": model_type,
        "short_description": short_description,
    }
    request = PrefetchRequest(
        repo=repo,
        revision=revision,
        artifact_name=artifact_name,
        hf_token_key=hf_token_key,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        force=force,
        shard=shard,
        metadata={k: v for k, v in metadata.items() if v is not None},
        resources=Resources(
            cpu=cpu, mem=mem, ephemeral_storage=ephemeral_storage, accelerator=accelerator
        ),
    )
    if not wait:
        run = submit(request, store=store)
        if as_json:
            print_json(run_summary(run.catalog.run(run.name), run.catalog))
        else:
            note(f"started run {run.name}; follow it with `preheat runs wait {run.name}`", quiet)
            print(run.name)
        return

    import threading

    from preheat.runner import execute, install_cancel_signals

    run, created = new_run(request, store)
    cancel = threading.Event()
    install_cancel_signals(cancel)
    here = {"cancel": cancel, "record": created, "catalog": run.catalog}
    if want_bars(quiet):
        with Bars() as bars:
            record = execute(run.store_url, run.name, progress=bars, **here)
    else:
        record = execute(run.store_url, run.name, **here)
    summary = run_summary(record, run.catalog)
    if as_json:
        print_json(summary)
    elif record.status == "succeeded":
        note(f"{'reused' if record.reused else 'published'} {record.artifact}", quiet)
        print(summary["artifact"]["path"])
    if record.status != "succeeded":
        if not as_json:
            sys.stderr.write(f"error: run {record.name} {record.status}: {record.error}\n")
        raise typer.Exit(130 if record.status == "cancelled" else 1)
