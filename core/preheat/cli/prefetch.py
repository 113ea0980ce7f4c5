"""`preheat prefetch hf-model` and `preheat prefetch model --source NAME`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from preheat.cli.options import Command, Json, Quiet, Store

app = typer.Typer(
    rich_markup_mode=None,
    help="Fetch a model into the store, verified, optionally pre-sharded.",
    no_args_is_help=True,
)


def run_summary(record, catalog) -> dict:
    """The `--json` object of a run: run, status, reused, artifact, outputs, bytes_fetched, bytes_reused.

    `bytes_fetched` counts the bytes of source files fetched from the source by the run,
    `bytes_reused` those the store already held (copied from another version, resumed,
    or the whole artifact reused).
    """
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
        "bytes_fetched": record.bytes_fetched,
        "bytes_reused": record.bytes_reused,
    }
    if record.error:
        summary["error"] = record.error
    return summary


# The options of `hf-model`; `model` takes the same ones (its signature is built from
# `hf_model`'s below), plus `--source`.
HubRepo = Annotated[str, typer.Argument(metavar="REPO", help="Hub repo id, e.g. Qwen/Qwen3-0.6B.")]
Revision = Annotated[
    str | None, typer.Option(metavar="REV", help="Branch, tag or commit (default: main).")
]
ArtifactName = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Artifact name (default: from the repo name)."),
]
Architecture = Annotated[
    str | None, typer.Option(metavar="NAME", help="Override the detected architecture.")
]
Task = Annotated[str | None, typer.Option(metavar="TASK", help="Override the detected task.")]
Modality = Annotated[
    list[str] | None,
    typer.Option(metavar="TEXT", help="Modality (repeatable; default text)."),
]
Format = Annotated[
    str | None,
    typer.Option("--format", metavar="FORMAT", help="Override the detected weight format."),
]
ModelType = Annotated[
    str | None, typer.Option(metavar="TYPE", help="Override the detected model_type.")
]
ShortDescription = Annotated[
    str | None, typer.Option(metavar="TEXT", help="Override the detected description.")
]
Force = Annotated[
    int,
    typer.Option(metavar="N", help="Bump to redo the work instead of reusing the artifact."),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="Run in the foreground and print the artifact path.")
]
TokenKey = Annotated[
    str, typer.Option(metavar="KEY", help="Environment variable holding the source's token.")
]
Cpu = Annotated[str | None, typer.Option(metavar="CPU", help="CPU request, e.g. 4 or 500m.")]
Mem = Annotated[str | None, typer.Option(metavar="QUANTITY", help="Memory request, e.g. 16Gi.")]
EphemeralStorage = Annotated[
    str | None,
    typer.Option(metavar="QUANTITY", help="Local disk the run may use, e.g. 100Gi."),
]
Accelerator = Annotated[
    str | None,
    typer.Option(metavar="TYPE:COUNT", help="Serving accelerator, e.g. L40s:4."),
]
ShardConfigFile = Annotated[
    Path | None, typer.Option(metavar="FILE", help="YAML shard config (engine + args).")
]
Include = Annotated[
    list[str] | None,
    typer.Option(metavar="GLOB", help="Only files matching this glob (repeatable)."),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(metavar="GLOB", help="Skip files matching this glob (repeatable)."),
]
ExecutorName = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        envvar="PREHEAT_EXECUTOR",
        help="Where the run executes (`preheat plugins` lists executors; default: local).",
    ),
]
ExecutorOptions = Annotated[
    list[str] | None,
    typer.Option(
        metavar="KEY=VALUE",
        help="An option for the executor (repeatable); saved in the run record, never a secret.",
    ),
]
ExecutorAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDRESS",
        envvar="RAY_ADDRESS",
        help="The cluster address for the ray executor: a head's HOST:PORT or its Jobs API "
        "http://HOST:PORT (same as --executor-option address=ADDRESS).",
    ),
]
SourceRepo = Annotated[
    str,
    typer.Argument(
        metavar="REPO", help="The repository, as the source names it (hf: a Hub repo id)."
    ),
]
Source = Annotated[
    str,
    typer.Option(metavar="NAME", help="The fetcher to fetch from (`preheat plugins` lists them)."),
]


@app.command("hf-model", cls=Command)
def hf_model(
    repo: HubRepo,
    revision: Revision = None,
    artifact_name: ArtifactName = None,
    architecture: Architecture = None,
    task: Task = None,
    modality: Modality = None,
    format: Format = None,
    model_type: ModelType = None,
    short_description: ShortDescription = None,
    force: Force = 0,
    wait: Wait = False,
    hf_token_key: TokenKey = "HF_TOKEN",
    cpu: Cpu = None,
    mem: Mem = None,
    ephemeral_storage: EphemeralStorage = None,
    accelerator: Accelerator = None,
    shard_config: ShardConfigFile = None,
    include: Include = None,
    exclude: Exclude = None,
    store: Store = None,
    executor: ExecutorName = "local",
    executor_option: ExecutorOptions = None,
    ray_address: ExecutorAddress = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Prefetch a Hugging Face model repository into the store."""
    prefetch(source="hf", **locals())  # locals() holds exactly the parameters here


def model(**options) -> None:
    """Prefetch a model repository from any installed source (`preheat plugins` lists them)."""
    prefetch(**options)


def _model_signature() -> inspect.Signature:
    """`hf_model`'s signature with its own REPO help and `--source NAME` after REPO."""
    repo, *shared = inspect.signature(hf_model, eval_str=True).parameters.values()
    source = inspect.Parameter(
        "source", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="hf", annotation=Source
    )
    return inspect.Signature([repo.replace(annotation=SourceRepo), source, *shared])


model.__signature__ = _model_signature()
app.command("model", cls=Command)(model)


def prefetch(
    *,
    source: str,
    repo: str,
    revision: str | None,
    artifact_name: str | None,
    architecture: str | None,
    task: str | None,
    modality: list[str] | None,
    format: str | None,
    model_type: str | None,
    short_description: str | None,
    force: int,
    wait: bool,
    hf_token_key: str,
    cpu: str | None,
    mem: str | None,
    ephemeral_storage: str | None,
    accelerator: str | None,
    shard_config: Path | None,
    include: list[str] | None,
    exclude: list[str] | None,
    store: str | None,
    executor: str,
    executor_option: list[str] | None,
    ray_address: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """What `hf-model` and `model` do: submit the run, or with `wait` run it here.

    With `wait` and an executor other than `local`, the run is submitted to it and
    waited for.
    """
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
        source=source,
    )
    options = executor_options(executor_option, ray_address if executor != "local" else None)
    if not wait or executor != "local":
        run = submit(request, store=store, executor=executor, executor_options=options)
        if wait:
            report(run.wait().record, run.catalog, as_json, quiet)
            return
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
    report(record, run.catalog, as_json, quiet)


def report(record, catalog, as_json: bool, quiet: bool) -> None:
    """Print a finished run as `--wait` does: its summary (JSON, or the artifact path), or fail."""
    from preheat.cli.output import fail_run, note, print_json

    summary = run_summary(record, catalog)
    if as_json:
        print_json(summary)
    elif record.status == "succeeded":
        note(f"{'reused' if record.reused else 'published'} {record.artifact}", quiet)
        print(summary["artifact"]["path"])
    if record.status != "succeeded":
        fail_run(record)


def executor_options(pairs: list[str] | None, address: str | None) -> dict[str, str]:
    """`--executor-option KEY=VALUE`s as a dict; `address` (from `--ray-address`) unless given."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="'--executor-option'"
            )
        options[key.strip()] = value
    if address:
        options.setdefault("address", address)
    return options
