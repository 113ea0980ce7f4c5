"""Serving code's view of preheat: references to artifacts, resources, scaling, app environments.

    import preheat

    app = AppEnvironmentOfYourEngine(   # from the engine's plugin
        name="qwen-serving-app",
        model_path=preheat.app.RunOutput(type="directory", run_name=run.name),
        model_id="qwen3-0.6b",
        resources=preheat.Resources(cpu="4", memory="16Gi", gpu="L40s:1", disk="10Gi"),
        stream_model=True,
        scaling=preheat.app.Scaling(replicas=(0, 1), scaledown_after=600),
        requires_auth=True,
    )
    handle = preheat.serve(app)

`AppEnvironment` is the engine-neutral base of the engine plugins' app environments
(registered with `preheat_register_apps`): it holds the fields above, resolves the
artifact (pinned to the version found then) and checks everything that can be checked
before an engine starts; the engine plugin only turns the result into its command line.
"""

from __future__ import annotations

import abc
import os
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from preheat.errors import PreheatError

if TYPE_CHECKING:
    from preheat.models import Manifest
    from preheat.resolve import Launch, Location
    from preheat.serving.spec import EngineCommand, EngineOptions, ServePlan


@attrs.define
class RunOutput:
    """The artifact a run produced, resolved lazily to a local directory or a store URI.

    Pass it wherever an artifact reference is taken (`model_path=`, `preheat.api.resolve_artifact`):
    it resolves to the exact `NAME:VERSION` the run published, never to a later version.
    """

    type: str = "directory"
    run_name: str | None = None
    store: str | None = None
    index: int = 0

    def __attrs_post_init__(self) -> None:
        if self.type != "directory":
            raise PreheatError(
                f"RunOutput type {self.type!r} is not supported: use type='directory'"
            )
        if not self.run_name:
            raise PreheatError("RunOutput needs run_name=: the name printed by `preheat prefetch`")

    def _output(self):
        from preheat.runs import Run

        outputs = Run(self.run_name, self.store).outputs()
        return outputs[self.index]

    @property
    def path(self) -> str:
        """The artifact directory (a local path for a local store, else the store URI)."""
        return self._output().path

    @property
    def uri(self) -> str:
        """The artifact's URI in its store."""
        return self._output().uri

    @property
    def artifact(self) -> str:
        """`NAME:VERSION` of the artifact the run published."""
        return str(self._output().artifact)

    def resolve(self) -> tuple[Manifest, Location]:
        """The manifest and location of the run's artifact (see `preheat.api.resolve_artifact`)."""
        from preheat.references import resolve_reference

        found = resolve_reference(self, self.store)
        return found.manifest, found.location

    def __fspath__(self) -> str:
        path = self.path
        if "://" in path:
            raise PreheatError(f"{path} is not local: use `preheat resolve ... --to DIR` first")
        return path

    def __str__(self) -> str:
        return self.path


def _replicas(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise PreheatError(
            f"invalid replicas {value!r}: use (min, max), e.g. (0, 1) to scale to zero or (1, 1)"
        ) from None
    if low < 0 or high < 1 or low > high:
        raise PreheatError(
            f"invalid replicas {value!r}: need 0 <= min <= max and max >= 1, e.g. (0, 1) or (1, 1)"
        )
    return low, high


def _seconds(what: str):
    def convert(value: Any) -> float:
        from preheat.config import parse_duration

        seconds = parse_duration(value, what)
        if seconds <= 0:
            raise PreheatError(f"invalid {what} {value!r}: it must be more than 0 seconds")
        return seconds

    return convert


@attrs.frozen
class Scaling:
    """How many engine replicas to keep: `replicas=(min, max)`, `scaledown_after` seconds idle.

    `(0, 1)` scales to zero: a small proxy owns the port, starts the engine on the first
    request (holding it until the engine is ready) and stops it after `scaledown_after`
    seconds without requests. `(1, 1)` keeps one engine up. One machine runs one replica:
    a maximum above 1 is refused by `preheat.serve`.
    """

    replicas: tuple[int, int] = attrs.field(default=(1, 1), converter=_replicas)
    scaledown_after: float = attrs.field(default=600.0, converter=_seconds("scaledown_after"))

    @property
    def scale_to_zero(self) -> bool:
        return self.replicas[0] == 0


@attrs.frozen
class Resources:
    """What a served app asks for: `cpu`, `memory`, `gpu` (`TYPE:COUNT`) and `disk`.

    Not the prefetch request's `preheat.api.Resources` (cpu, mem, ephemeral_storage,
    accelerator): these are the serving side's names, as in `preheat.Resources(cpu="4",
    memory="16Gi", gpu="L40s:4", disk="100Gi")`. Every value is parsed when the record is
    made. `preheat.serve` checks `gpu` (one GPU per tensor-parallel rank; the weights per
    GPU must fit the accelerator's memory) and `disk` (room for the local copy of an
    artifact that is not streamed); `cpu` and `memory` are recorded for schedulers.
    """

    cpu: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    memory: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    gpu: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    disk: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))

    def __attrs_post_init__(self) -> None:
        from preheat.resources import parse_accelerator, parse_cpu, parse_quantity

        if self.cpu is not None:
            parse_cpu(self.cpu)
        if self.memory is not None:
            parse_quantity(self.memory, "memory")
        if self.disk is not None:
            parse_quantity(self.disk, "disk")
        if self.gpu is not None:
            parse_accelerator(self.gpu)

    @property
    def gpus(self) -> tuple[str, int] | None:
        """(type, count) of `gpu`, or None."""
        from preheat.resources import parse_accelerator

        return None if self.gpu is None else parse_accelerator(self.gpu)

    @property
    def disk_bytes(self) -> int | None:
        from preheat.resources import parse_quantity

        return None if self.disk is None else parse_quantity(self.disk, "disk")


def _extra_args(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise PreheatError(
            f"extra_args must be a list of arguments, not the string {value!r}: "
            f"use extra_args={value.split()!r}"
        )
    return tuple(str(v) for v in value)


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise PreheatError(f"invalid port {value!r}: use a number from 1 to 65535") from None
    if not 0 < port < 65536:
        raise PreheatError(f"invalid port {value!r}: use a number from 1 to 65535")
    return port


def _resources(value: Any) -> Resources | None:
    if value is None or isinstance(value, Resources):
        return value
    if isinstance(value, dict):
        return Resources(**value)
    raise PreheatError(
        f"resources must be preheat.Resources(cpu=, memory=, gpu=, disk=), not {value!r}"
    )


def _scaling(value: Any) -> Scaling:
    if value is None:
        return Scaling()
    if isinstance(value, Scaling):
        return value
    if isinstance(value, dict):
        return Scaling(**value)
    raise PreheatError(
        f"scaling must be preheat.app.Scaling(replicas=(min, max), scaledown_after=S), not {value!r}"
    )


def _tp(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PreheatError(f"invalid tensor_parallel_size {value!r}: use a positive integer")
    return value


@attrs.define
class AppEnvironment(abc.ABC):
    """An engine serving one artifact: the seed's fields, engine-neutral checks and plans.

    :param model_path: what to serve: `NAME[:VERSION]` (the `latest` alias by default), a
        `RunOutput`, or the artifact's directory / store URI as `prefetch` printed it.
        `model=` is accepted as another name for it.
    :param name: the app's name (logs and progress lines); defaults to the artifact name.
    :param model_id: the model name clients send (`"model": ...`); default: the artifact name.
    :param resources: `preheat.Resources`; `gpu` is checked against the artifact.
    :param stream_model: let the engine stream the weights from the object store itself
        (no local copy) where it can; otherwise a verified local copy is made first.
    :param extra_args: more engine arguments, appended as given.
    :param scaling: `preheat.app.Scaling`; `replicas=(0, 1)` scales to zero.
    :param requires_auth: generate an API key that every API route requires (`/health`
        stays open); returned by the handle and printed once by the CLI.
    :param port: the port clients connect to. `host` is the address it listens on.
    :param store: the store holding the artifact (default: the user's store).
    :param tensor_parallel_size: checked against a pre-sharded artifact; used as given for
        an unsharded one (default: the number of GPUs in `resources`, else 1).
    :param startup_timeout: seconds the engine has to answer its health check.

    Engine plugins subclass it, set the class variables below and implement
    `engine_command`.
    """

    #: the engine's name: its plugin's registrations, shard specs, `--engine NAME`
    engine: ClassVar[str] = ""
    #: the module that must be importable by the engine's interpreter
    module: ClassVar[str] = ""
    #: the variable naming the engine's interpreter (default: this one)
    python_env: ClassVar[str] = ""
    #: how to install the engine, for the error when it is missing
    install_hint: ClassVar[str] = ""
    #: the variable the engine reads its API key from; None when it only takes a flag
    #: (then preheat's proxy checks the key and the engine listens on loopback only)
    api_key_env: ClassVar[str | None] = None
    #: the engine's flags for the tensor-parallel size (the first is the one it writes)
    tp_flags: ClassVar[tuple[str, ...]] = ()
    #: flags preheat sets itself, with what to use instead, refused in `extra_args`
    managed_flags: ClassVar[dict[str, str]] = {}
    #: the route answering 200 once the engine is ready
    health_path: ClassVar[str] = "/health"
    #: the share of each GPU's memory the engine uses by default (weights must fit in it)
    memory_fraction: ClassVar[float] = 0.9
    #: the flag that changes `memory_fraction`, if any
    memory_fraction_flag: ClassVar[str | None] = None

    model_path: Any = None
    name: str | None = attrs.field(default=None, kw_only=True)
    model_id: str | None = attrs.field(default=None, kw_only=True)
    resources: Resources | None = attrs.field(default=None, kw_only=True, converter=_resources)
    stream_model: bool = attrs.field(default=False, kw_only=True, converter=bool)
    extra_args: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=_extra_args)
    scaling: Scaling = attrs.field(factory=Scaling, kw_only=True, converter=_scaling)
    requires_auth: bool = attrs.field(default=True, kw_only=True, converter=bool)
    port: int = attrs.field(default=8000, kw_only=True, converter=_port)
    host: str = attrs.field(default="0.0.0.0", kw_only=True)
    store: str | None = attrs.field(default=None, kw_only=True)
    tensor_parallel_size: int | None = attrs.field(default=None, kw_only=True, converter=_tp)
    startup_timeout: float = attrs.field(
        default=900.0, kw_only=True, converter=_seconds("startup_timeout")
    )
    model: Any = attrs.field(default=None, kw_only=True, repr=False)
    _resolved: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.model is not None:
            if self.model_path is not None and self.model_path != self.model:
                raise PreheatError(
                    "model= and model_path= name different artifacts: give only model_path="
                )
            self.model_path = self.model
        if self.model_path is None:
            raise PreheatError(
                f"{type(self).__name__} needs model_path=: NAME[:VERSION], a "
                "preheat.app.RunOutput, or an artifact directory or store URI"
            )
        if isinstance(self.model_path, os.PathLike) and not isinstance(self.model_path, RunOutput):
            self.model_path = os.fspath(self.model_path)
        self.model = self.model_path

    # ------------------------------------------------------------------ engine plugin hooks

    @abc.abstractmethod
    def engine_command(
        self, manifest: Manifest, location: Location, options: EngineOptions
    ) -> EngineCommand:
        """The engine's command line and environment for `manifest` at `location`.

        Called after every engine-neutral check has passed; `options` holds the
        interpreter, the address to listen on, the served model name, the
        tensor-parallel size and whether `location` is streamed. Never put a secret
        on the command line: preheat hands the API key over through `api_key_env`.

        :raises PreheatError: the artifact cannot be served this way.
        """

    def can_stream(self, location: Location) -> bool:
        """Whether the engine streams weights from `location.uri` itself (default: never)."""
        return False

    # ------------------------------------------------------------------ what preheat does

    def resolve(self) -> tuple[Manifest, Location]:
        """The artifact's manifest and location, pinned to the version found on first call."""
        if self._resolved is None:
            from preheat.references import resolve_reference

            self._resolved = resolve_reference(self.model_path, self.store)
        return self._resolved.manifest, self._resolved.location

    def plan(self) -> ServePlan:
        """Everything `preheat.serve(app)` would run, checked, without starting or copying anything."""
        from preheat.serving.plan import build_plan

        return build_plan(self)

    def command(self) -> list[str]:
        """The engine's whole command line."""
        return list(self.plan().command.argv)

    def env(self) -> dict[str, str]:
        """The variables preheat sets for the engine on top of the caller's (never the API key)."""
        return dict(self.plan().command.env)

    def launch(self) -> Launch:
        """The engine resolver's launch arguments for the artifact (`preheat resolve --engine`)."""
        from preheat.resolve import engine_launch

        manifest, where = self.resolve()
        return engine_launch(self.engine, manifest, where, self.tensor_parallel_size)

    def serve(self, **options: Any):
        """`preheat.serve(self, **options)`."""
        from preheat.serving import serve

        return serve(self, **options)


__all__ = ["AppEnvironment", "Resources", "RunOutput", "Scaling"]
