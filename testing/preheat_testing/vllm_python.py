"""The interpreter that has the real vLLM, for the suites that run it (or a skip, or a failure)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import pytest

PYTHON_ENV = "PREHEAT_VLLM_PYTHON"
REQUIRE_ENV = "PREHEAT_REQUIRE_CONFORMANCE"


@dataclass(frozen=True)
class Vllm:
    """The interpreter that has vLLM, and vLLM's version there."""

    python: str
    version: str


def vllm_interpreter(*also: str) -> Vllm:
    """`$PREHEAT_VLLM_PYTHON` if it imports vllm (and the modules `also`), else a skip.

    A failure instead of a skip under PREHEAT_REQUIRE_CONFORMANCE=1 (the conformance session).
    """
    python = os.environ.get(PYTHON_ENV)
    modules = ", ".join(("vllm", *also))
    problem = None
    if not python:
        problem = f"{PYTHON_ENV} is not set (a Python that has vLLM; see `nox -s conformance`)"
    else:
        try:
            probe = subprocess.run(
                [python, "-c", f"import {modules}; print(vllm.__version__)"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"{PYTHON_ENV}={python} cannot run: {exc}"
        else:
            if probe.returncode != 0:
                tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
                problem = f"{PYTHON_ENV}={python} cannot import {modules}: {tail}"
    if problem:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{problem} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(problem)
    return Vllm(python, probe.stdout.strip().splitlines()[-1])
