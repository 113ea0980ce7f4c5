"""Registers the `ray` executor (cheap: Ray itself is imported only when a run needs it)."""

from __future__ import annotations

from preheat.api import hookimpl


def ray_executor():
    """The `ray` executor (`--executor ray`)."""
    from preheat_ray.executor import RayExecutor

    return RayExecutor()


@hookimpl
def preheat_register_executors(register):
    register("ray", ray_executor)
