"""Reaching a Ray cluster, what its nodes offer, and a run's requests as Ray resources.

A cluster has two addresses: the head's GCS address `HOST:PORT` (what `ray.init`
and `ray start --address` take) and the Jobs API `http://HOST:PORT` (the
dashboard). The Jobs API client and the state API take either.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import attrs

from preheat.api import (
    PreheatError,
    Resources,
    human_bytes,
    parse_accelerator,
    parse_cpu,
    parse_quantity,
)

CONNECT_TIMEOUT = 3.0


def address_of(options: dict[str, str]) -> str | None:
    """The cluster address of a run: its `address` option, else `$RAY_ADDRESS`, else None."""
    address = (options.get("address") or os.environ.get("RAY_ADDRESS") or "").strip()
    return address or None


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of a GCS address `HOST:PORT` or a Jobs API URL `http(s)://HOST:PORT`."""
    text = address if "://" in address else f"gcs://{address}"
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("gcs", "http", "https", "ray"):
        raise PreheatError(
            f"unsupported Ray address {address!r}: give the head's HOST:PORT or its Jobs API "
            "http://HOST:PORT (--ray-address / RAY_ADDRESS)"
        )
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        default = {"http": 80, "https": 443}.get(parsed.scheme)
        if parsed.hostname and default:
            return parsed.hostname, default
        raise PreheatError(
            f"invalid Ray address {address!r}: give HOST:PORT or http://HOST:PORT "
            "(--ray-address / RAY_ADDRESS)"
        )
    return parsed.hostname, port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail in a few seconds, with one line, when nothing listens at `address`.

    (Ray itself waits 40 s or more for an unreachable GCS before giving up.)
    """
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PreheatError(
            f"cannot reach the Ray cluster at {address}: {reason.lower()}; check --ray-address "
            "/ RAY_ADDRESS (the head's HOST:PORT or its Jobs API http://HOST:PORT)"
        ) from None


@attrs.frozen
class Node:
    """One alive node and the resources it offers in total."""

    ip: str
    node_id: str
    resources: dict[str, float]

    @property
    def cpus(self) -> float:
        return self.resources.get("CPU", 0.0)

    @property
    def memory(self) -> float:
        return self.resources.get("memory", 0.0)

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)

    @property
    def accelerators(self) -> list[str]:
        return [k.split(":", 1)[1] for k in self.resources if k.startswith("accelerator_type:")]

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU", f"{human_bytes(int(self.memory))} memory"]
        if self.gpus:
            kinds = ",".join(self.accelerators) or "GPU"
            parts.append(f"{self.gpus:g} {kinds}")
        return f"{self.ip}: {', '.join(parts)}"


def list_nodes(address: str) -> list[Node]:
    """The cluster's alive nodes, from its state API."""
    from ray.util.state import list_nodes as state_nodes

    try:
        found = state_nodes(address=address, detail=True, raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; one line for the user
        raise PreheatError(
            f"cannot list the nodes of the Ray cluster at {address}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return [
        Node(n.node_ip, n.node_id, dict(n.resources_total or {}))
        for n in found
        if n.state == "ALIVE"
    ]


@attrs.frozen
class Requests:
    """A run's requests in Ray's terms: per transfer task, and for the job's driver."""

    num_cpus: float = 1.0
    memory: int | None = None
    num_gpus: float = 0.0
    accelerator_type: str | None = None

    def task_options(self) -> dict:
        """`.options(...)` of a Ray task or actor asking for these resources."""
        options: dict = {"num_cpus": self.num_cpus}
        if self.memory:
            options["memory"] = self.memory
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.accelerator_type:
            options["accelerator_type"] = self.accelerator_type
        return options

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.memory:
            parts.append(f"{human_bytes(self.memory)} memory")
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} {self.accelerator_type or 'GPU'}")
        return ", ".join(parts)


def requests(resources: Resources, *, gpu: bool = False) -> Requests:
    """A run's `cpu`, `mem` and (for steps that need GPUs only) `accelerator` as Ray requests.

    `cpu` (default 1) becomes `num_cpus`, `mem` becomes `memory` (bytes);
    `accelerator="L40s:4"` becomes `accelerator_type="L40S"` and `num_gpus=4` when
    `gpu` is true, and nothing otherwise (transfers and CPU sharding need no GPU).
    """
    cpus = parse_cpu(resources.cpu) if resources.cpu else 1.0
    memory = parse_quantity(resources.mem, "mem") if resources.mem else None
    kind, count = None, 0
    if resources.accelerator:
        kind, count = parse_accelerator(resources.accelerator)  # validated even when unused
    if not gpu:
        kind, count = None, 0
    return Requests(
        num_cpus=cpus,
        memory=memory,
        num_gpus=float(count),
        accelerator_type=kind.upper() if kind else None,
    )


def fits(node: Node, need: Requests) -> bool:
    """Whether one node alone offers everything `need` asks for."""
    if node.cpus < need.num_cpus or (need.memory and node.memory < need.memory):
        return False
    if need.num_gpus and node.gpus < need.num_gpus:
        return False
    if need.accelerator_type:
        kinds = {k.upper() for k in node.accelerators}
        if need.accelerator_type not in kinds:
            return False
    return True


def check_satisfiable(address: str, nodes: list[Node], need: Requests, what: str) -> list[Node]:
    """The nodes that can run `need`; PreheatError naming what the cluster has when none can.

    A Ray task asking for more than any node offers waits forever, so this is checked
    before anything is submitted.
    """
    if not nodes:
        raise PreheatError(f"the Ray cluster at {address} has no alive node")
    able = [n for n in nodes if fits(n, need)]
    if not able:
        offered = "; ".join(n.describe() for n in nodes)
        raise PreheatError(
            f"no node of the Ray cluster at {address} can run {what} asking for "
            f"{need.describe()}: its nodes offer {offered}; lower --cpu / --mem / "
            "--accelerator or add a larger node"
        )
    return able
