"""The records preheat keeps: manifests, run records and their parts (attrs, serialised by `preheat.serde`)."""

from __future__ import annotations

from typing import Any

import attrs

from preheat.shard_config import ShardRequest, to_shard_request

MANIFEST_SCHEMA = 1


@attrs.frozen
class Source:
    """Where an artifact's bytes came from, pinned to one commit."""

    type: str
    repo: str
    revision: str
    commit: str


@attrs.frozen
class FileEntry:
    """One file of an artifact: its path under the weights directory, size and digest.

    `etag` is the hub's etag of the file (the sha256 for LFS files, the git blob id for the
    rest), recorded when it is known; it is what a later run matches on to reuse the file.
    `origin` is "NAME:VERSION" of the artifact a reused file was copied from (None when the
    file was fetched from the source). `stored_etag` is the store's own etag of the file as
    published (see `ObjectInfo.etag`): a later run reuses the file only while the store still
    reports that etag, so a file changed in place since is fetched again, never copied.
    """

    path: str
    size: int
    sha256: str
    etag: str | None = None
    origin: str | None = None
    stored_etag: str | None = None


@attrs.frozen
class Metadata:
    """Descriptive metadata, given by the user or detected from config.json and the README."""

    architecture: str | None = None
    task: str | None = None
    modality: tuple[str, ...] = ("text",)
    format: str | None = None
    model_type: str | None = None
    short_description: str | None = None
    license: str | None = None


@attrs.frozen
class ServingFacts:
    """What an engine operator needs to size a deployment, read from config and safetensors headers."""

    parameters: int | None = None
    bytes_by_dtype: dict[str, int] = attrs.Factory(dict)
    weight_bytes: int | None = None
    dtype: str | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    max_positions: int | None = None
    tied_embeddings: bool | None = None
    quantization: str | None = None
    experts: int | None = None
    weight_bytes_per_rank: int | None = None


@attrs.frozen
class ShardSpec:
    """How an artifact was pre-sharded, as recorded in its manifest."""

    engine: str
    tensor_parallel_size: int
    dtype: str
    method: str
    file_pattern: str
    engine_versions: str | None = None
    signature: str | None = None
    args: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class ArtifactRef:
    """A name and a version: one published artifact."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@attrs.frozen
class Manifest:
    """Everything known about one published artifact version; written last, it makes the version visible."""

    name: str
    version: str
    created: str
    source: Source
    files: tuple[FileEntry, ...]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: int = 0
    metadata: Metadata = Metadata()
    serving: ServingFacts = ServingFacts()
    shard: ShardSpec | None = None
    shard_request: dict[str, Any] | None = None
    lineage: ArtifactRef | None = None
    schema: int = MANIFEST_SCHEMA

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.name, self.version)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@attrs.frozen
class Resources:
    """What a run asks of its executor; the local executor checks what it can and records the rest."""

    cpu: str | None = None
    mem: str | None = None
    ephemeral_storage: str | None = None
    accelerator: str | None = None


@attrs.frozen
class PrefetchRequest:
    """A prefetch as the user asked for it (never holds a secret, only the name of one)."""

    repo: str
    revision: str | None = None
    artifact_name: str | None = None
    hf_token_key: str = "HF_TOKEN"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: int = 0
    shard: ShardRequest | None = attrs.field(default=None, converter=to_shard_request)
    metadata: dict[str, Any] = attrs.Factory(dict)
    resources: Resources = Resources()
    source: str = "hf"


RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


@attrs.frozen
class RunRecord:
    """The state of one run, kept in the store so any machine sharing the store can read it."""

    name: str
    status: str
    request: PrefetchRequest
    created: str
    store: str
    updated: str | None = None
    executor: str = "local"
    host: str | None = None
    pid: int | None = None
    artifact: ArtifactRef | None = None
    reused: bool = False
    error: str | None = None
    bytes_total: int = 0
    bytes_done: int = 0
    stage: str | None = None
    # bytes of the selected source files fetched from the source by this run, and bytes the
    # store already held (copied from another version, resumed, or the whole artifact reused)
    bytes_fetched: int = 0
    bytes_reused: int = 0
    # the executor's options as given (`--executor-option KEY=VALUE`), e.g. a cluster
    # address: read by whoever waits on or cancels the run, so never a secret
    executor_options: dict[str, str] = attrs.Factory(dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATES
