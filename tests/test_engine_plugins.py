"""The engine plugins on the shared registration helper: declarations that stay cheap to register."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from preheat.api import PreheatError, Resources
from preheat_testing import models
from preheat_testing.core import model_view
from preheat_tp.engine_plugin import TensorParallelEngine, load

ENGINES = {"vllm": "preheat_vllm.plugin", "sglang": "preheat_sglang.plugin"}
LAZY = ("numpy", "preheat_tp.sharder", "preheat_tp.layout", "preheat_tp.plan")


def test_registering_the_engine_plugins_imports_neither_numpy_nor_the_sharder():
    probe = (
        "import json, sys\n"
        "from preheat.plugins import make_registry\n"
        f"registry = make_registry(entry_points=False, extra={sorted(ENGINES.items())!r})\n"
        "names = {k: registry.names(k) for k in ('sharders', 'resolvers')}\n"
        "heavy = sorted(m for m in sys.modules if m in "
        f"{LAZY!r} or m.endswith(('.layout', '.resolver', '.engine', '.sharding')))\n"
        "print(json.dumps([names, heavy]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    names, heavy = json.loads(done.stdout)
    assert names == {"sharders": ["sglang", "vllm"], "resolvers": ["sglang", "vllm"]}
    assert heavy == []


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_the_plugin_modules_are_declarations_of_one_helper(engine):
    module = ENGINES[engine]
    plugin = load(f"{module}:PLUGIN")
    assert isinstance(plugin, TensorParallelEngine) and plugin.engine == engine
    for hook in ("preheat_register_sharders", "preheat_register_resolvers"):
        assert load(f"{module}:{hook}") == getattr(plugin, hook)
    sharder = plugin.make_sharder()
    assert sharder.layout.engine == engine and sharder.engine_runner is not None
    job = sharder.to_job(plugin.args_class(**{plugin.tp_field: 2}))
    assert (job.tp, job.dtype, job.args) == (2, "auto", {})
    assert plugin.make_resolver().__class__.__module__.endswith(".resolver")


def test_without_an_engine_process_method_engine_is_refused_and_never_run(monkeypatch):
    import preheat_vllm.plugin as declared

    plugin = TensorParallelEngine(
        engine="vllm-cpu-only",
        args_class=declared.PLUGIN.args_class,
        layout=declared.PLUGIN.layout,
        resolver=declared.PLUGIN.resolver,
        tp_field="tensor_parallel_size",
    )
    sharder = plugin.make_sharder()
    assert sharder.engine_runner is None
    view = model_view(models.build_case("llama_gqa").files)
    args = plugin.args_class(tensor_parallel_size=1, method="engine")
    with pytest.raises(
        PreheatError, match="^method: engine cannot run here: vllm is not installed"
    ):
        sharder.plan(view, args, Resources())
