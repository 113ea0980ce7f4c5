"""The built-in Hugging Face Hub fetcher (on `huggingface_hub`)."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from collections.abc import Callable

from preheat import transfer
from preheat.errors import NotFound, PreheatError
from preheat.fetch import Fetcher, IntegrityError, RemoteFile, Snapshot, SourceOffline, check_path
from preheat.hookspecs import hookimpl
from preheat.models import Source
from preheat.names import validate_repo_id
from preheat.redact import register_secret
from preheat.store import ObjectWriter

CHUNK = 1 << 20


def _retries() -> int:
    return int(os.environ.get("PREHEAT_HTTP_RETRIES", "6"))


def _backoff(attempt: int) -> float:
    base = float(os.environ.get("PREHEAT_RETRY_BACKOFF", "0.5"))
    return min(base * 2**attempt, 20.0)


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
    """

    check_repo = staticmethod(validate_repo_id)

    def __init__(
        self,
        token: str | None = None,
        token_name: str = "HF_TOKEN",
        *,
        token_key: str | None = None,
    ) -> None:
        if token_key is not None:
            token_name = token_key
            if token is None:
                token = find_token(token_key)
        register_secret(token)
        self._token = token
        self._token_name = token_name
        self.endpoint = endpoint()

    def __repr__(self) -> str:
        return f"HfFetcher(endpoint={self.endpoint!r})"

    def _scrub(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text.replace(self._token, "***") if self._token else text

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self._token or False)

    def _error(
        self, exc: Exception, repo: str, revision: str | None = None, path: str | None = None
    ) -> PreheatError:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        status = getattr(getattr(exc, "response", None), "status_code", None)
        key = self._token_name
        if isinstance(exc, GatedRepoError):
            if self._token:
                return PreheatError(
                    f"repo {repo} is gated and the token in ${key} has no access: accept the "
                    f"repo's terms on the Hub with that account, or use another token"
                )
            return PreheatError(
                f"repo {repo} is gated: set ${key} (hf_token_key) to a token of an account that accepted its terms"
            )
        if isinstance(exc, RepositoryNotFoundError):
            if status == 401 and self._token:
                return PreheatError(
                    f"the hub at {self.endpoint} rejected the token in ${key} (401): check or renew it"
                )
            suffix = (
                "" if self._token else f" (if it is private, set ${key} to a token with access)"
            )
            return NotFound(f"repo {repo} not found on {self.endpoint}{suffix}")
        if isinstance(exc, RevisionNotFoundError):
            return NotFound(
                f"revision {revision!r} not found in repo {repo}: use a branch, tag or commit that exists"
            )
        if isinstance(exc, RemoteEntryNotFoundError):
            return NotFound(f"file {path!r} not found in {repo} at {revision}")
        if isinstance(exc, HfHubHTTPError):
            if status in (401, 403):
                if self._token:
                    return PreheatError(
                        f"the hub at {self.endpoint} rejected the token in ${key} ({status}): check or renew it"
                    )
                return PreheatError(
                    f"the hub at {self.endpoint} refused access to {repo} ({status}): set ${key} to a token with access"
                )
            first = self._scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return PreheatError(f"hub request for {repo} failed: {first}")
        return PreheatError(
            f"cannot reach the hub at {self.endpoint}: {self._scrub(str(exc)) or type(exc).__name__}"
        )

    def _call(self, fn: Callable, repo: str, revision: str | None = None, path: str | None = None):
        """Run a hub API call, retrying transient failures, mapping errors to one line."""
        from huggingface_hub.errors import HfHubHTTPError

        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if isinstance(exc, HfHubHTTPError):
                    transient = status is not None and status >= 500
                else:
                    transient = isinstance(exc, OSError) or _is_transport(exc)
                if transient and attempt < _retries():
                    time.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise self._error(exc, repo, revision, path) from None

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        if offline():
            raise SourceOffline(
                f"HF_HUB_OFFLINE is set and no stored artifact matches {repo}@{revision or 'main'}: "
                "unset HF_HUB_OFFLINE to fetch it"
            )
        api = self._api()
        rev = revision or "main"
        info = self._call(lambda: api.model_info(repo, revision=rev), repo, rev)
        commit = info.sha
        if not commit:
            raise PreheatError(f"the hub did not return a commit for {repo} at {rev!r}")

        def listing():
            return [
                e
                for e in api.list_repo_tree(repo, revision=commit, recursive=True)
                if hasattr(e, "blob_id")
            ]

        entries = self._call(listing, repo, rev)
        files = []
        for e in entries:
            check_path(e.path)
            if e.lfs is not None:
                files.append(RemoteFile(path=e.path, size=e.lfs.size, sha256=e.lfs.sha256))
            else:
                files.append(RemoteFile(path=e.path, size=e.size, git_oid=e.blob_id))
        files.sort(key=lambda f: f.path)
        return Snapshot(
            source=Source(type="hf", repo=repo, revision=rev, commit=commit), files=tuple(files)
        )

    def _url(self, snapshot: Snapshot, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            snapshot.source.repo, path, revision=snapshot.source.commit, endpoint=self.endpoint
        )

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        from preheat import __version__

        return build_hf_headers(
            token=self._token or False,
            library_name="preheat",
            library_version=__version__,
            headers=extra,
        )

    def _get(self, snapshot: Snapshot, path: str, headers: dict[str, str] | None = None) -> bytes:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        def call() -> bytes:
            r = get_session().get(
                self._url(snapshot, path),
                headers=self._headers(headers),
                follow_redirects=True,
                timeout=60,
            )
            hf_raise_for_status(r)
            return r.content

        return self._call(call, snapshot.source.repo, snapshot.source.commit, path)

    def read(self, snapshot: Snapshot, path: str) -> bytes:
        return self._get(snapshot, path)

    def read_range(self, snapshot: Snapshot, path: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        data = self._get(snapshot, path, {"Range": f"bytes={start}-{start + length - 1}"})
        return data[:length] if len(data) <= length else data[start : start + length]

    def download(
        self,
        snapshot: Snapshot,
        file: RemoteFile,
        writer: ObjectWriter,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> str:
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
        url = self._url(snapshot, file.path)
        attempt = 0
        while offset < file.size:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                body = transfer.get(url, self._headers(headers))
                try:
                    skip = offset if (offset and body.status != 206) else 0
                    for chunk in body.chunks():
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        if offset + len(chunk) > file.size:
                            raise IntegrityError(
                                f"{file.path}: the hub sent more bytes than the listed size {file.size}"
                            )
                        writer.write(chunk)
                        sha256.update(chunk)
                        if sha1 is not None:
                            sha1.update(chunk)
                        offset += len(chunk)
                        on_bytes(len(chunk))
                finally:
                    body.close()
                if offset < file.size:
                    raise ConnectionError(
                        f"{file.path}: connection closed at byte {offset} of {file.size}"
                    )
            except IntegrityError:
                raise
            except transfer.HTTPStatus as exc:
                if exc.status < 500 and exc.status != 429:
                    raise self._status_error(exc, snapshot, file.path) from None
                attempt = self._retry_or_raise(attempt, file.path, exc)
            except (OSError, http.client.HTTPException) as exc:
                attempt = self._retry_or_raise(attempt, file.path, exc)
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

    def _retry_or_raise(self, attempt: int, path: str, exc: Exception) -> int:
        if attempt >= _retries():
            raise PreheatError(
                f"download of {path} failed after {attempt + 1} attempts: {self._scrub(str(exc)) or type(exc).__name__}"
            ) from None
        time.sleep(_backoff(attempt))
        return attempt + 1

    def _status_error(
        self, exc: transfer.HTTPStatus, snapshot: Snapshot, path: str
    ) -> PreheatError:
        """The library's own typed error for a failed download, mapped to one line."""
        from huggingface_hub.utils import get_session, hf_raise_for_status

        try:
            r = get_session().get(
                self._url(snapshot, path),
                headers=self._headers(),
                follow_redirects=True,
                timeout=60,
            )
            hf_raise_for_status(r)
        except Exception as typed:
            return self._error(typed, snapshot.source.repo, snapshot.source.commit, path)
        return PreheatError(f"download of {path} failed: HTTP {exc.status}")


def _is_transport(exc: Exception) -> bool:
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11")


def make_fetcher(*, token_key: str = "HF_TOKEN") -> HfFetcher:
    """A Hub fetcher with the token from the secret named `token_key` (none is fine for public repos)."""
    return HfFetcher(token_key=token_key)


def find_token(key: str) -> str | None:
    """The token from the environment variable named `key`.

    Only for the default key (`HF_TOKEN`) do the usual Hugging Face sources
    (the token file under HF_HOME) count too: a custom key names one secret
    and nothing else, so two credentials never get mixed up.
    """
    value = os.environ.get(key)
    if value:
        return value.strip()
    if key != "HF_TOKEN":
        return None
    from huggingface_hub import get_token

    return get_token()


@hookimpl
def preheat_register_fetchers(register):
    # the class itself, so that its `check_repo` (Hub repo ids) validates requests up front
    register("hf", HfFetcher)
