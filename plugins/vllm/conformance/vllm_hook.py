"""Dump each tensor-parallel rank's state dict as vLLM loaded it.

Runs inside the vLLM venv only (never imports preheat).

vLLM's ``BaseModelLoader.load_model`` does ``create_model`` ->
``load_weights`` -> ``process_weights_after_loading``; the CPU build repacks
linear weights in the last step (leaving empty tensors behind), so the state
dict is only meaningful right after ``load_weights``.  We wrap the loader
class registered for the chosen ``load_format`` (vLLM's public
``register_model_loader`` registry) with a subclass whose ``load_weights``
calls the original and then writes ``rank-{r}.safetensors`` plus
``rank-{r}.json`` into ``$PREHEAT_VLLM_DUMP_DIR``.

vLLM runs the model in spawned processes (engine core, workers); those
re-import the main script as ``__mp_main__``, so the main script must call
``install_from_env()`` at module level, outside its ``__main__`` guard.
"""

from __future__ import annotations

import json
import os

DUMP_ENV = "PREHEAT_VLLM_DUMP_DIR"
FORMAT_ENV = "PREHEAT_VLLM_DUMP_FORMAT"


def _dump(model, model_config, out_dir: str) -> None:
    from safetensors.torch import save_file
    from vllm.distributed import (
        get_tensor_model_parallel_rank,
        get_tensor_model_parallel_world_size,
    )
    from vllm.model_executor.model_loader import ShardedStateLoader

    rank = get_tensor_model_parallel_rank()
    full = model.state_dict()
    # Same dedup that save_sharded_state and the sharded loader apply:
    # drops empty tensors and aliases (smallest key of a shared storage wins).
    kept = ShardedStateLoader._filter_subtensors(full)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in kept.items()}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, f"rank-{rank}.safetensors"))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    meta = {
        "rank": rank,
        "tp": get_tensor_model_parallel_world_size(),
        # True when the config says tied but the checkpoint ships its own
        # lm_head: vLLM then loads both and re-ties them only in
        # process_weights_after_loading if they are equal.
        "untied_by_checkpoint": bool(
            getattr(model_config, "word_embeddings_untied_by_checkpoint", False)
        ),
        "entries": {
            k: {
                "shape": list(v.shape),
                "dtype": str(v.dtype).removeprefix("torch."),
                "kind": "parameter" if k in params else "buffer",
                "kept": k in kept,
            }
            for k, v in full.items()
        },
    }
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(meta, f, indent=1)


def install(load_format: str, out_dir: str) -> None:
    """Wrap the loader registered for ``load_format`` so it dumps after loading."""
    from vllm.model_executor.model_loader import (
        _LOAD_FORMAT_TO_MODEL_LOADER,
        register_model_loader,
    )

    base = _LOAD_FORMAT_TO_MODEL_LOADER[load_format]
    if getattr(base, "_dumps_state", False):
        return

    def load_weights(self, model, model_config):
        base.load_weights(self, model, model_config)
        _dump(model, model_config, out_dir)

    cls = type(
        f"Dumping{base.__name__}", (base,), {"load_weights": load_weights, "_dumps_state": True}
    )
    register_model_loader(load_format)(cls)


def install_from_env() -> None:
    """Install the dump hook when the parent process asked for it."""
    out_dir = os.environ.get(DUMP_ENV)
    if out_dir:
        install(os.environ.get(FORMAT_ENV, "auto"), out_dir)


def request(load_format: str, out_dir: str) -> None:
    """Ask this process and every process vLLM spawns to dump state."""
    os.environ[DUMP_ENV] = os.path.abspath(out_dir)
    os.environ[FORMAT_ENV] = load_format
    install_from_env()


def set_cpu_env(tp: int) -> None:
    """Defaults that let vLLM's CPU build start on a small machine."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cpus = sorted(os.sched_getaffinity(0))
        # One core per rank, wrapping around ("0|1", "0|1|0|1" on 2 cores):
        # "auto" fails with "Not enough allowed NUMA nodes" on one NUMA node.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
            str(cpus[i % len(cpus)]) for i in range(tp)
        )
