"""The built-in Hugging Face Hub fetcher.

It speaks the Hub's HTTP protocol itself (`hf_http`, on the stdlib's `http.client`):
a revision pinned to a commit, the recursive listing, small reads, and weight
files streamed into the store over several connections (`preheat.ranged`),
hashed on the way. huggingface_hub is imported only to find a token it manages
(an OAuth login, a token exchange), never on the path of a plain run.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from preheat.errors import PreheatError
from preheat.fetch import Fetcher, IntegrityError, RemoteFile, Snapshot, SourceOffline, check_path
from preheat.hookspecs import hookimpl
from preheat.models import Source
from preheat.names import validate_repo_id
from preheat.store import ObjectWriter


def endpoint() -> str:
    """The hub endpoint: `HF_ENDPOINT` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE` forbids reaching the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class HfFetcher(Fetcher):
    """Lists and streams Hub repositories; every request is pinned to the resolved commit.

    Registered as the `hf` fetcher factory itself: the pipeline builds it as
    `HfFetcher(token_key=KEY)`, which reads the token from the secret named KEY
    (see `find_token`); `HfFetcher(token=..., token_name=...)` takes a token as is.
    Large files are fetched as byte ranges over several connections, at most
    `PREHEAT_CONNECTIONS` (8) at once for the whole run, `PREHEAT_RANGE_SIZE`
    (16 MiB) per range.
    """

    check_repo = staticmethod(validate_repo_id)

    def __init__(
        self,
        token: str | None = None,
        token_name: str = "HF_TOKEN",
        *,
        token_key: str | None = None,
    ) -> None:
        from preheat.builtin.hf_http import HubClient
        from preheat.redact import register_secret

        if token_key is not None:
            token_name = token_key
            if token is None:
                token = find_token(token_key)
        register_secret(token)
        self._token = token
        self._token_name = token_name
        self.endpoint = endpoint()
        self._client = HubClient(self.endpoint, token, token_name)
        self._remotes: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._limits = None

    def __repr__(self) -> str:
        return f"HfFetcher(endpoint={self.endpoint!r})"

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        if offline():
            raise SourceOffline(
                f"HF_HUB_OFFLINE is set and no stored artifact matches {repo}@{revision or 'main'}: "
                "unset HF_HUB_OFFLINE to fetch it"
            )
        rev = revision or "main"
        commit = self._client.model_info(repo, rev).get("sha")
        if not commit or not isinstance(commit, str):
            raise PreheatError(f"the hub did not return a commit for {repo} at {rev!r}")
        files = []
        for e in self._client.tree(repo, commit):
            if e.get("type") != "file":
                continue
            path = check_path(str(e.get("path", "")))
            lfs = e.get("lfs")
            try:
                if isinstance(lfs, dict):
                    files.append(RemoteFile(path=path, size=int(lfs["size"]), sha256=lfs["oid"]))
                else:
                    files.append(RemoteFile(path=path, size=int(e["size"]), git_oid=e["oid"]))
            except (KeyError, TypeError, ValueError):
                raise PreheatError(
                    f"the hub at {self.endpoint} listed {path!r} of {repo} without its size or id"
                ) from None
        files.sort(key=lambda f: f.path)
        return Snapshot(
            source=Source(type="hf", repo=repo, revision=rev, commit=commit), files=tuple(files)
        )

    def _remote(self, snapshot: Snapshot, path: str):
        """The file's `Remote`, shared by its reads and its ranges (so the CDN URL is kept)."""
        from preheat.transfer import Remote

        key = (snapshot.source.commit, path)
        with self._lock:
            remote = self._remotes.get(key)
            if remote is None:
                url = self._client.file_url(snapshot.source.repo, snapshot.source.commit, path)
                remote = self._remotes[key] = Remote(url, self._client.headers())
        return remote

    def _read(self, snapshot: Snapshot, path: str, start: int | None, length: int) -> bytes:
        remote = self._remote(snapshot, path)

        def call() -> bytes:
            body = remote.open() if start is None else remote.open(start, start + length - 1)
            try:
                data = body.read()
            finally:
                body.close()
            if start is None or body.status == 206:
                return data if start is None else data[:length]
            return data[start : start + length]  # a server that ignores Range sends it all

        source = snapshot.source
        return self._client.call(call, source.repo, source.commit, path)

    def read(self, snapshot: Snapshot, path: str) -> bytes:
        return self._read(snapshot, path, None, 0)

    def read_range(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._read(snapshot, path, start, length)

    def _shared_limits(self):
        from preheat.ranged import Limits

        with self._lock:
            if self._limits is None:
                self._limits = Limits.from_env()
            return self._limits

    def download(
        self,
        snapshot: Snapshot,
        file: RemoteFile,
        writer: ObjectWriter,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> str:
        import hashlib

        from preheat import ranged

        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % file.size) if file.git_oid else None
        offset = 0
        for chunk in writer.existing():
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
            offset += len(chunk)
        if offset > file.size:
            raise IntegrityError(
                f"{file.path}: a resumed partial is larger than the file; run `preheat gc` and retry"
            )
        if offset:
            on_bytes(offset)

        def sink(chunk: memoryview) -> None:
            writer.write(chunk)
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)

        ranged.fetch(
            self._remote(snapshot, file.path),
            file.size,
            offset,
            sink,
            path=file.path,
            limits=self._shared_limits(),
            policy=_Policy(self._client, snapshot),
            on_bytes=on_bytes,
        )
        digest = sha256.hexdigest()
        if file.sha256 is not None and digest != file.sha256:
            raise IntegrityError(
                f"{file.path}: sha256 {digest[:12]}... does not match the published {file.sha256[:12]}...; "
                "nothing was published, retry later or report it to the repository owner"
            )
        if sha1 is not None and sha1.hexdigest() != file.git_oid:
            raise IntegrityError(
                f"{file.path}: git blob id does not match the published {file.git_oid[:12]}...; nothing was published"
            )
        return digest

    def close(self) -> None:
        with self._lock:
            limits, self._limits = self._limits, None
        if limits is not None:
            limits.close()


class _Policy:
    """Retries and one-line errors of one run's downloads (`preheat.ranged.Policy`)."""

    def __init__(self, client, snapshot: Snapshot) -> None:
        from preheat.builtin.hf_http import retries

        self.client = client
        self.snapshot = snapshot
        self.retries = retries()

    def backoff(self, attempt: int) -> float:
        from preheat.builtin.hf_http import backoff

        return backoff(attempt)

    def fatal(self, exc, path: str) -> PreheatError:
        source = self.snapshot.source
        return self.client.status_error(exc, source.repo, source.commit, path)

    def gave_up(self, path: str, attempts: int, exc: Exception) -> PreheatError:
        reason = self.client.scrub(str(exc)) or type(exc).__name__
        return PreheatError(f"download of {path} failed after {attempts} attempts: {reason}")


def make_fetcher(*, token_key: str = "HF_TOKEN") -> HfFetcher:
    """A Hub fetcher with the token from the secret named `token_key` (none is fine for public repos)."""
    return HfFetcher(token_key=token_key)


def find_token(key: str) -> str | None:
    """The token from the environment variable named `key`.

    Only for the default key (`HF_TOKEN`) do the usual Hugging Face sources count
    too, as huggingface_hub finds them: `HUGGING_FACE_HUB_TOKEN`, then the token
    file (`HF_TOKEN_PATH`, else `HF_HOME/token`). A custom key names one secret and
    nothing else, so two credentials never get mixed up. Where huggingface_hub
    would do more than read that file (a token exchange with `HF_OIDC_RESOURCE`, an
    OAuth login it refreshes, Colab's secrets), it is asked.
    """
    value = os.environ.get(key)
    if value and value.strip():
        return value.strip()
    if key != "HF_TOKEN":
        return None
    legacy = _clean(os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if os.environ.get("HF_OIDC_RESOURCE") or "google.colab" in sys.modules:
        return _hub_token()
    if legacy:
        return legacy
    path = _token_path()
    try:
        token = _clean(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return _hub_token()
    if token and _refreshable(path.parent / "stored_tokens"):
        return _hub_token()
    return token


def _clean(token: str | None) -> str | None:
    if token is None:
        return None
    return token.replace("\r", "").replace("\n", "").strip() or None


def _token_path() -> Path:
    expand = lambda p: Path(os.path.expandvars(os.path.expanduser(p)))  # noqa: E731
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    return expand(os.environ.get("HF_TOKEN_PATH") or os.path.join(expand(home), "token"))


def _refreshable(stored: Path) -> bool:
    """Whether huggingface_hub keeps an OAuth refresh token beside the token file."""
    try:
        return "refresh_token" in stored.read_text(errors="replace")
    except OSError:
        return False


def _hub_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


@hookimpl
def preheat_register_fetchers(register):
    # the class itself, so that its `check_repo` (Hub repo ids) validates requests up front
    register("hf", HfFetcher)
