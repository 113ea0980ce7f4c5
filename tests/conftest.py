# --- loopback Hugging Face Hub (preheat_testing.hub) ---------------------------------------
import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A clean huggingface_hub environment: HF_HOME in tmp, no token, no offline mode."""
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def hub():
    """A started `HubServer` (hub origin + CDN origin), stopped after the test."""
    from preheat_testing.hub import HubServer

    with HubServer() as server:
        yield server


# --- end loopback Hugging Face Hub ---------------------------------------------------------


# --- preheat environment, CLI runner, shared hub and tiny models (core suite) -------------
from core_support import PreheatEnv, StageHook, _tiny_model, tree_bytes  # noqa: E402


@pytest.fixture
def preheat_env(tmp_path):
    """A fresh PREHEAT_HOME, HF_HOME and working directory; applied to os.environ for the test.

    `preheat_env.cli(...)` runs the CLI as a subprocess; `preheat_env.prefetch(...)` runs the
    pipeline in-process; call `preheat_env.connect(hub)` to point it at a loopback hub.
    """
    env = PreheatEnv(tmp_path)
    try:
        with env.applied():
            yield env
    finally:
        env.cleanup()


@pytest.fixture(scope="module")
def module_preheat_env(tmp_path_factory):
    """Like `preheat_env`, shared by a module and NOT applied to os.environ (use `.applied()`)."""
    env = PreheatEnv(tmp_path_factory.mktemp("preheat"))
    yield env
    env.cleanup()


@pytest.fixture(scope="module")
def module_hub():
    """A `HubServer` shared by a module: add repos under unique names and clear any fault you arm."""
    from preheat_testing.hub import HubServer

    with HubServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_model(case, **overrides)`: a cached `preheat_testing.models` TinyModel (do not mutate)."""

    def get(case: str, **overrides):
        return _tiny_model(case, tuple(sorted(overrides.items())))

    return get


@pytest.fixture(scope="session")
def read_tree():
    """`read_tree(DIR)` -> {relative path: bytes} of every file under DIR."""
    return tree_bytes


@pytest.fixture(scope="session")
def stage_hook():
    """`stage_hook(on_stage=..., on_bytes=...)`: a Progress for `preheat_env.prefetch(progress=...)`."""
    return StageHook


# --- end preheat environment ------------------------------------------------------------------
