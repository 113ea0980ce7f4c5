"""What serving needs of this machine: a free port, the engine installed, key and log files."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from pathlib import Path

from preheat.errors import PreheatError
from preheat.serving.spec import ServePlan

_PROBE = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"


def port_free(host: str, port: int) -> bool:
    """Whether this machine can listen on `host:port`; PreheatError when it never could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise PreheatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return True


def check_engine_installed(plan: ServePlan) -> None:
    """Fail fast, in one line, when the engine's interpreter lacks the engine."""
    python = plan.command.argv[0]
    try:
        done = subprocess.run([python, "-c", _PROBE, plan.module], capture_output=True, timeout=120)
    except OSError as exc:
        raise PreheatError(
            f"cannot run {python} for {plan.engine}: {exc.strerror or exc}"
            + (f" (check {plan.python_env})" if os.environ.get(plan.python_env) else "")
        ) from None
    except subprocess.TimeoutExpired:
        raise PreheatError(f"{python} did not answer within 120 s: is it a Python?") from None
    if done.returncode != 0:
        raise PreheatError(
            f"{plan.module} is not installed for {python}: {plan.install_hint}, or set "
            f"{plan.python_env} to an interpreter that has it"
        )


def write_key_file(path: str | os.PathLike[str], key: str) -> Path:
    """Write `key` to `path`, readable by its owner only (mode 0600, also when it existed)."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise PreheatError(f"cannot write the API key to {path}: {exc.strerror or exc}") from None
    return path


def engine_log_path(name: str, log_dir: str | os.PathLike[str] | None) -> Path:
    """A new log file for app `name`'s engine (default under `$PREHEAT_HOME/serve/logs`)."""
    from preheat.config import preheat_home

    folder = Path(log_dir) if log_dir is not None else preheat_home() / "serve" / "logs"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return folder / f"{name}-{stamp}-{os.getpid()}.log"
