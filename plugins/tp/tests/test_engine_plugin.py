"""The registration helper engine plugins share, and the engine-backed shard path with a fake engine.

The real engines' save routines need GPUs; here a fake runner stands in for
them, so what is checked is preheat's side: the artifact handed to the engine
(a local copy, verified, when the store is remote), and which of its output
files are stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from preheat.api import SourceArtifact
from preheat_tp.engine import shard_with_engine
from preheat_tp.engine_plugin import load
from preheat_tp.layout import TPJob


def test_load_names_what_it_expects():
    with pytest.raises(ValueError, match="'preheat_tp.layout' is not a 'module:attribute'"):
        load("preheat_tp.layout")
    assert load("preheat_tp.layout:TPJob") is TPJob


def _view(files):
    from preheat_testing.core import model_view

    return model_view(files)


# --------------------------------------------------------------------------- the engine-backed path


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An unsharded tiny Llama published in a local store: (store root, manifest)."""
    from preheat_testing.hub import HubServer
    from preheat_testing.sharding import World

    with HubServer() as hub:
        world = World(tmp_path_factory.mktemp("engine-path"), hub)
        outcome = world.prefetch(world.case_repo("llama_gqa"), artifact_name="engine-path")
        yield world.store, world.manifest(outcome)


@pytest.mark.parametrize("remote", [False, True], ids=["local-store", "remote-store"])
def test_the_engine_runs_on_the_artifact_and_only_its_rank_files_are_stored(
    stored, remote, tmp_path
):
    from preheat_testing.core import local_store_class

    LocalStore = local_store_class()

    class RemoteStore(LocalStore):
        """A local store that offers no local paths, as an object store does."""

        def local_path(self, key):
            return None

    root, manifest = stored
    store = (RemoteStore if remote else LocalStore)(root)
    source = SourceArtifact(store, f"artifacts/{manifest.name}/{manifest.version}/", manifest)
    seen = {}

    def runner(src: str, out: str, job: TPJob) -> None:
        src_dir = Path(src)
        seen.update(src=src_dir, job=job, files=sorted(p.name for p in src_dir.iterdir()))
        for name in ("model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors"):
            (Path(out) / name).write_bytes(name.encode() * 1000)
        (Path(out) / "engine.log").write_text("not an output")

    written, progress = {}, []

    def write(path, chunks):
        written[path] = b"".join(bytes(c) for c in chunks)
        return path

    job = TPJob(tp=2)
    files = shard_with_engine(runner, source, job, write, progress.append)
    assert seen["job"] is job
    assert seen["files"] == sorted({f.path.split("/")[0] for f in manifest.files})
    if remote:  # a verified copy in a temporary directory, removed afterwards
        assert not seen["src"].is_relative_to(root) and not seen["src"].exists()
    else:  # the stored artifact itself
        assert seen["src"] == root / "artifacts" / manifest.name / manifest.version
    assert files == ["model-rank-0-part-0.safetensors", "model-rank-1-part-0.safetensors"]
    assert {p: len(b) for p, b in written.items()} == {p: len(p) * 1000 for p in files}
    assert sum(progress) == sum(len(p) * 1000 for p in files)
