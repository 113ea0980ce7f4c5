"""`scripts/gpu_check.py --engine sglang|vllm` without the engine or CUDA: exit 2, a message, a JSON verdict.

The checks themselves need a CUDA GPU with the engine installed; here only the
refusal path runs (an engine present here is hidden behind an interpreter that
cannot import it).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_check.py"


def run(engine: str, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--engine", engine, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return proc.returncode, json.loads(lines[0]), proc.stderr


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_missing_engine_exits_2_with_a_clear_message(engine, tmp_path):
    if importlib.util.find_spec(engine) is None:
        code, verdict, stderr = run(engine)
        assert verdict["message"] == f"{engine} is not installed for {sys.executable}"
    else:
        fake = tmp_path / "python"
        fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no engine here' >&2\nexit 1\n")
        fake.chmod(0o755)
        code, verdict, stderr = run(engine, "--python", str(fake))
        assert verdict["message"].startswith(f"cannot import {engine} with torch: ")
    assert code == 2
    assert verdict["engine"] == engine and verdict["status"] == "unavailable"
    assert verdict["ok"] is False
    assert stderr.strip() == f"gpu_check ({engine}): {verdict['message']}"


def test_an_engine_interpreter_that_cannot_import_it_exits_2(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named sglang' >&2\nexit 1\n")
    fake.chmod(0o755)
    code, verdict, _ = run("sglang", "--python", str(fake), str(tmp_path))
    assert code == 2 and verdict["status"] == "unavailable"
    assert verdict["message"] == (
        "cannot import sglang with torch: ModuleNotFoundError: No module named sglang"
    )


def test_the_engine_must_be_named_and_known():
    for args in ((), ("--engine", "tgi")):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2 and proc.stdout == ""
        assert "--engine" in proc.stderr
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "--engine vllm" in shown.stdout
    options = subprocess.run(
        [sys.executable, str(SCRIPT), "--engine", "sglang", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert options.returncode == 0 and "gpu_check.py --engine sglang" in options.stdout
    assert "--max-tokens" in options.stdout
