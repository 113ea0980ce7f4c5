"""From an app environment to a checked `ServePlan`: every check made before anything starts.

The checks the troubleshooting of a deployment would otherwise ask for by hand, each a
one-line `PreheatError`:

- a shard written for another engine;
- a tensor-parallel size in `extra_args` or `tensor_parallel_size=` that contradicts the
  shard (or each other);
- a GPU count in `resources.gpu` that is not one GPU per tensor-parallel rank;
- weights per GPU that do not fit the named accelerator (the manifest's serving facts
  against `preheat.api.accelerator_info`, at the engine's default memory share);
- a `disk` smaller than the artifact when it must be copied to this machine;
- flags in `extra_args` that preheat sets itself (`--port`, the model, the API key);
- more than one replica on one machine.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from preheat.errors import PreheatError
from preheat.resolve import Location
from preheat.resources import accelerator_info, human_bytes
from preheat.serving.spec import EngineOptions, ServePlan

if TYPE_CHECKING:
    from preheat.app import AppEnvironment
    from preheat.models import Manifest


def flag_values(args: Sequence[str], flags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(index, number of items, value) of every `FLAG VALUE` / `FLAG=VALUE` of `flags` in `args`."""
    found = []
    i = 0
    while i < len(args):
        arg = args[i]
        for flag in flags:
            if arg == flag:
                value = args[i + 1] if i + 1 < len(args) else ""
                found.append((i, 2 if i + 1 < len(args) else 1, value))
                break
            if arg.startswith(flag + "="):
                found.append((i, 1, arg[len(flag) + 1 :]))
                break
        i += 1
    return found


def without(args: Sequence[str], spans: Sequence[tuple[int, int, str]]) -> tuple[str, ...]:
    """`args` with the (index, count) spans removed."""
    drop = {i + k for i, n, _ in spans for k in range(n)}
    return tuple(a for i, a in enumerate(args) if i not in drop)


def _int_flag(app: AppEnvironment, spans: list[tuple[int, int, str]]) -> int | None:
    values = set()
    for _, _, value in spans:
        try:
            values.add(int(value))
        except ValueError:
            raise PreheatError(
                f"extra_args {app.tp_flags[0]} {value!r} is not a number: give a positive integer"
            ) from None
    if len(values) > 1:
        raise PreheatError(
            f"extra_args give {app.tp_flags[0]} more than once with different values "
            f"({', '.join(map(str, sorted(values)))}): keep one"
        )
    return values.pop() if values else None


def _tensor_parallel_size(
    app: AppEnvironment, manifest: Manifest, extra_tp: int | None, gpus: tuple[str, int] | None
) -> tuple[int, list[str]]:
    """The checked tensor-parallel size and the notes about how it was chosen."""
    notes: list[str] = []
    flag = app.tp_flags[0] if app.tp_flags else "the tensor-parallel flag"
    asked = app.tensor_parallel_size
    if asked is not None and extra_tp is not None and asked != extra_tp:
        raise PreheatError(
            f"extra_args {flag} {extra_tp} contradicts tensor_parallel_size={asked}: give one of them"
        )
    asked = asked if asked is not None else extra_tp
    shard = manifest.shard
    if shard is not None:
        if shard.engine != app.engine:
            raise PreheatError(
                f"{manifest.ref} is pre-sharded for {shard.engine}, not {app.engine}: serve it "
                f"with --engine {shard.engine}, or prefetch it with `engine: {app.engine}`"
            )
        tp = shard.tensor_parallel_size
        if asked is not None and asked != tp:
            where = (
                f"extra_args {flag} {asked}"
                if extra_tp is not None
                else f"tensor_parallel_size={asked} (--tp)"
            )
            raise PreheatError(
                f"{where} contradicts the shard: {manifest.ref} is sharded for tensor-parallel "
                f"size {tp}; serve it at {tp}, or prefetch it again with a tp={asked} shard config"
            )
        return tp, notes
    if asked is not None:
        return asked, notes
    if gpus is not None and gpus[1] > 1:
        notes.append(f"tensor-parallel size {gpus[1]}: one rank per GPU of gpu={gpus[0]}:{gpus[1]}")
        return gpus[1], notes
    return 1, notes


def _check_gpus(app: AppEnvironment, manifest: Manifest, tp: int) -> None:
    gpus = app.resources.gpus if app.resources is not None else None
    if gpus is None:
        return
    kind, count = gpus
    if count != tp:
        what = (
            f"{manifest.ref} is sharded for tensor-parallel size {tp}"
            if manifest.shard is not None
            else f"the tensor-parallel size is {tp}"
        )
        raise PreheatError(
            f"resources gpu={kind}:{count} does not match the shard: {what}, one GPU per rank; "
            f'use gpu="{kind}:{tp}"'
            + (" or a shard for that many GPUs" if manifest.shard is not None else "")
        )
    info = accelerator_info(kind)
    serving = manifest.serving
    per_rank = serving.weight_bytes_per_rank if manifest.shard is not None else None
    if per_rank is None and serving.weight_bytes:
        per_rank = -(-serving.weight_bytes // tp)
    if info is None or not per_rank:
        return
    fraction = app.memory_fraction
    if app.memory_fraction_flag:
        spans = flag_values(app.extra_args, [app.memory_fraction_flag])
        if spans:
            try:
                fraction = float(spans[-1][2])
            except ValueError:
                raise PreheatError(
                    f"extra_args {app.memory_fraction_flag} {spans[-1][2]!r} is not a number"
                ) from None
    room = int(info.memory * fraction)
    if per_rank > room:
        raise PreheatError(
            f"{manifest.ref} needs {human_bytes(per_rank)} of weights per GPU at tensor-parallel "
            f"size {tp}, more than {info.name} gives {app.engine} ({human_bytes(room)}: "
            f"{fraction:.0%} of {human_bytes(info.memory)}, before any KV cache): use more GPUs "
            "(a larger tp shard) or a larger accelerator"
        )


def _check_flags(app: AppEnvironment) -> None:
    for flag, instead in app.managed_flags.items():
        if flag_values(app.extra_args, [flag]):
            raise PreheatError(f"extra_args must not set {flag}: {instead}")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_cache_dir(manifest: Manifest, store_url: str) -> str:
    """Where the node cache keeps (or will keep) the artifact's verified copy."""
    try:
        from preheat.cache import NodeCache, entry_key
        from preheat.config import cache_settings

        cache = NodeCache(cache_settings())
        return str(cache.model_dir(entry_key(store_url, manifest.name, manifest.version)))
    except Exception:  # noqa: BLE001 - only a name for people; the copy itself says where it is
        return f"<node cache>/{manifest.name}--{manifest.version}"


def engine_python(app: AppEnvironment) -> str:
    """`$<python_env>` when set, else the current interpreter."""
    return (os.environ.get(app.python_env) if app.python_env else None) or sys.executable


def build_plan(
    app: AppEnvironment, *, engine_port: int | None = None, local_copy: str | None = None
) -> ServePlan:
    """The checked plan of `app` (see the module docs); starts, copies and writes nothing.

    :param engine_port: the engine's loopback port behind the proxy (default: a free one).
    :param local_copy: the directory the artifact was copied to (default: the node
        cache's directory for it).
    """
    low, high = app.scaling.replicas
    if high > 1:
        raise PreheatError(
            f"replicas=({low}, {high}): preheat.serve runs one engine on this machine, so the "
            "maximum is 1; run one `preheat serve` per machine behind a load balancer for more"
        )
    _check_flags(app)
    resolved_manifest, source = app.resolve()
    manifest = resolved_manifest
    store_url = app._resolved.store.url

    tp_spans = flag_values(app.extra_args, app.tp_flags)
    extra_tp = _int_flag(app, tp_spans)
    gpus = app.resources.gpus if app.resources is not None else None
    tp, notes = _tensor_parallel_size(app, manifest, extra_tp, gpus)
    _check_gpus(app, manifest, tp)

    remote = source.path is None
    stream = False
    copy_to, local_copy = local_copy, None
    if remote and app.stream_model and app.can_stream(source):
        stream = True
    else:
        if app.stream_model and remote:
            scheme = source.uri.split("://", 1)[0]
            notes.append(
                f"{app.engine} cannot stream from {scheme}:// here: serving a verified local copy"
            )
        elif app.stream_model:
            notes.append("the store is local: the engine loads the artifact in place")
        if remote:
            disk = app.resources.disk_bytes if app.resources is not None else None
            if disk is not None and manifest.total_bytes > disk:
                raise PreheatError(
                    f"disk={app.resources.disk} is smaller than {manifest.ref} "
                    f"({human_bytes(manifest.total_bytes)}), which is copied to this machine "
                    "before serving: raise disk, or stream it with stream_model=True (--stream)"
                )
            local_copy = copy_to or node_cache_dir(manifest, store_url)
    where = source if not remote or stream else Location(uri=source.uri, path=local_copy, env={})

    proxy = app.requires_auth or app.scaling.scale_to_zero
    if proxy:
        engine_host = "127.0.0.1"
        engine_port = engine_port or _free_port()
    else:
        engine_host, engine_port = app.host, app.port
    served = app.model_id or manifest.name
    options = EngineOptions(
        python=engine_python(app),
        host=engine_host,
        port=engine_port,
        served_model_name=served,
        tensor_parallel_size=tp,
        stream=stream,
        extra_args=without(app.extra_args, tp_spans),
    )
    command = app.engine_command(manifest, where, options)
    return ServePlan(
        app_name=app.name or manifest.name,
        engine=app.engine,
        module=app.module,
        python_env=app.python_env,
        install_hint=app.install_hint,
        manifest=manifest,
        source=source,
        store_url=store_url,
        command=command,
        served_model_name=served,
        tensor_parallel_size=tp,
        stream=stream,
        local_copy=local_copy,
        host=app.host,
        port=app.port,
        engine_host=engine_host,
        engine_port=engine_port,
        proxy=proxy,
        auth=app.requires_auth,
        api_key_env=app.api_key_env if app.requires_auth else None,
        health_path=app.health_path,
        min_replicas=low,
        scaledown_after=app.scaling.scaledown_after,
        startup_timeout=app.startup_timeout,
        notes=tuple(notes),
    )
