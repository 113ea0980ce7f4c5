"""Run olah, a third-party Hugging Face mirror, offline over local git repos.

olah lives in its own venv (`.venvs/olah` at the repo root, or $PREHEAT_OLAH_VENV)
because it pins its own huggingface_hub. `OlahServer` writes each repo as a git repo on
branch `main` at `ROOT/mirrors/models/ORG/NAME`, LFS files as git-lfs pointers with their objects under
`.git/lfs/objects` (what git-lfs itself would leave; the git-lfs binary is not needed).

What olah 0.5.4 answers offline, checked with huggingface_hub 2.4 (tests/test_olah_server.py):

- `model_info(repo, revision=R)` for R = "main", a tag or the full commit sha: works
  (`sha`, `siblings[].rfilename`, `cardData`). `revision=None` (the bare
  `/api/models/{repo}`) fails with 401 RepoNotFound: resolve the branch explicitly.
  `files_metadata=True` is ignored: siblings carry no size, blobId or lfs.
- `list_repo_tree(repo, recursive=True, revision=R)`: works, with a 307 from
  `/tree/R` to `/tree/R/` (huggingface_hub follows it). One page, never a `Link`
  header. LFS entries carry `lfs: {oid: sha256, size, pointerSize}` and the real size;
  `path_in_repo=` and `expand=True` (lastCommit) work.
- `get_paths_info`: works for files and folders, with the `lfs` block.
- `hf_hub_download(revision=R)` and `snapshot_download(revision=R or None)`: work for
  plain and LFS files. HEAD `/resolve` answers 200 on the same origin (no 302, no CDN)
  with `X-Repo-Commit`, `Content-Length` and an unquoted `ETag` (git blob sha1 for plain
  files, sha256 for LFS files); no `X-Linked-Etag`/`X-Linked-Size`. GET ignores `Range`
  (200 with the whole body) and reads LFS objects whole into memory: keep repos small.
- `list_repo_refs`: works (branches, tags). `list_repo_commits`: fails (KeyError
  "user": olah's author objects lack it).
- Errors: a missing revision, file or tree path all answer 401 RepoNotFound (not
  RevisionNotFound/EntryNotFound). Tokens are not checked; gating does not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from preheat_testing.hub import DEFAULT_LFS_PATTERNS, lfs_pointer

OLAH_REQUIREMENT = "olah==0.5.4"
REPO_ROOT = Path(__file__).resolve().parents[2]
OLAH_VENV = Path(os.environ.get("PREHEAT_OLAH_VENV") or REPO_ROOT / ".venvs" / "olah")
GIT_DATE = "2024-01-01T00:00:00+00:00"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "preheat-testing",
    "GIT_AUTHOR_EMAIL": "testing@preheat.invalid",
    "GIT_COMMITTER_NAME": "preheat-testing",
    "GIT_COMMITTER_EMAIL": "testing@preheat.invalid",
    "GIT_AUTHOR_DATE": GIT_DATE,
    "GIT_COMMITTER_DATE": GIT_DATE,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


class OlahUnavailable(RuntimeError):
    """olah could not be installed or started."""


def ensure_olah_venv(venv: str | os.PathLike[str] | None = None) -> Path:
    """Create the olah venv once (pip install olah) and return its `olah-cli` path."""
    venv = Path(venv) if venv is not None else OLAH_VENV
    cli = venv / "bin" / "olah-cli"
    if cli.exists():
        return cli
    existed = venv.exists()
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / ".olah.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cli.exists():
                _install_olah(venv)
    except (OSError, subprocess.SubprocessError) as exc:
        if not existed:
            shutil.rmtree(venv, ignore_errors=True)
        detail = (getattr(exc, "stderr", b"") or b"")[-2000:]
        raise OlahUnavailable(f"cannot install {OLAH_REQUIREMENT}: {exc} {detail!r}") from exc
    if not cli.exists():
        raise OlahUnavailable(f"{cli} missing after installing {OLAH_REQUIREMENT}")
    return cli


def _install_olah(venv: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", OLAH_REQUIREMENT]
    subprocess.run(pip, check=True, capture_output=True, timeout=900)


def write_git_repo(
    path: Path,
    files: Mapping[str, bytes | str],
    *,
    lfs_patterns: Sequence[str] = DEFAULT_LFS_PATTERNS,
    tags: Sequence[str] = (),
) -> str:
    """Commit `files` to a new git repo on branch main (LFS files as pointers); return the sha."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    lfs_objects = path / ".git" / "lfs" / "objects"
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else bytes(content)
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        base = name.rsplit("/", 1)[-1]
        if any(fnmatchcase(base, p) or fnmatchcase(name, p) for p in lfs_patterns):
            sha = hashlib.sha256(data).hexdigest()
            obj = lfs_objects / sha[:2] / sha[2:4] / sha
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            data = lfs_pointer(sha, len(data))
        target.write_bytes(data)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "initial commit")
    for tag in tags:
        _git(path, "tag", tag)
    return _git(path, "rev-parse", "HEAD").strip()


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class OlahServer:
    """olah serving `repos` ({repo_id: {path: bytes}}) offline; a context manager.

    `endpoint` is `http://HOST:PORT`; `commits` maps each repo_id to its commit sha.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, bytes | str]],
        *,
        root: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        tags: Mapping[str, Sequence[str]] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.repos = repos
        self.tags = tags or {}
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._root = Path(root) if root is not None else None
        self._own_root = root is None
        self._proc: subprocess.Popen[bytes] | None = None
        self.root = Path()
        self.endpoint = ""
        self.commits: dict[str, str] = {}

    def start(self) -> OlahServer:
        cli = ensure_olah_venv()
        self.root = self._root or Path(tempfile.mkdtemp(prefix="olah-"))
        mirrors = self.root / "mirrors"
        for repo_id, files in self.repos.items():
            org, _, name = repo_id.partition("/")
            path = mirrors / "models" / org / name
            self.commits[repo_id] = write_git_repo(path, files, tags=self.tags.get(repo_id, ()))
        port = self.port or _free_port(self.host)
        netloc = f"{self.host}:{port}"
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "{self.host}"\n'
            f"port = {port}\n"
            f'mirror-netloc = "{netloc}"\n'
            f'mirror-lfs-netloc = "{netloc}"\n'
            f'repos-path = "{self.root / "cache"}"\n'
            f'mirrors-path = ["{mirrors}"]\n'
            "\n[accessibility]\n"
            "offline = true\n"
        )
        self.log_path = self.root / "olah.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(cli), "-c", str(config)],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.endpoint = f"http://{netloc}"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        probe = next(iter(self.repos), None)
        url = f"{self.endpoint}/api/models/{probe}/revision/main" if probe else self.endpoint
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OlahUnavailable(
                    f"olah exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as err:
                if probe is None:
                    return
                err.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise OlahUnavailable(f"olah not ready after {self.startup_timeout}s: {self.log_tail()}")

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._own_root and self.root != Path():
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OlahServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
