"""The Hub's HTTP API as the built-in fetcher uses it, on `preheat.transfer` (stdlib only).

Resolving a revision, listing a commit and reading small files are a few
JSON and file requests; answering them without huggingface_hub keeps a
prefetch whose artifact is already published fast (importing the client
alone costs more than the rest of such a run). Errors become the same
one-line messages the client's typed errors used to give: the Hub says what
went wrong in `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`, `GatedRepo`) and the status.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from preheat.errors import NotFound, PreheatError
from preheat.transfer import HTTPStatus, get

T = TypeVar("T")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def retries() -> int:
    return int(os.environ.get("PREHEAT_HTTP_RETRIES", "6"))


def backoff(attempt: int) -> float:
    base = float(os.environ.get("PREHEAT_RETRY_BACKOFF", "0.5"))
    return min(base * 2**attempt, 20.0)


def transient(exc: Exception) -> bool:
    """Whether retrying may help: a 5xx, 408 or 429 answer, or a transport failure."""
    if isinstance(exc, HTTPStatus):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (OSError, http.client.HTTPException))


class HubClient:
    """Requests to one hub endpoint with one token (or none); every error is one line."""

    def __init__(self, endpoint: str, token: str | None, token_name: str) -> None:
        self.endpoint = endpoint
        self.token = token
        self.token_name = token_name

    # requests

    def headers(self) -> dict[str, str]:
        from preheat import __version__

        py = ".".join(map(str, sys.version_info[:3]))
        out = {"User-Agent": f"preheat/{__version__}; python/{py}", "Accept-Encoding": "identity"}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def file_url(self, repo: str, revision: str, path: str) -> str:
        """The resolve URL of a file, as huggingface_hub's `hf_hub_url` builds it."""
        return f"{self.endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def call(
        self, fn: Callable[[], T], repo: str, revision: str | None = None, path: str | None = None
    ) -> T:
        """Run a request, retrying transient failures with backoff, mapping errors to one line."""
        attempt = 0
        while True:
            try:
                return fn()
            except (HTTPStatus, OSError, http.client.HTTPException, ValueError) as exc:
                if transient(exc) and attempt < retries():
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise self.error(exc, repo, revision, path) from None

    def _json(self, url: str) -> tuple[Any, dict[str, str]]:
        body = get(url, self.headers())
        try:
            data = body.read()
        finally:
            body.close()
        try:
            return json.loads(data), body.headers
        except ValueError:
            raise PreheatError(
                f"the hub at {self.endpoint} answered {url} with something that is not JSON"
            ) from None

    def model_info(self, repo: str, revision: str) -> dict[str, Any]:
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        info, _ = self.call(lambda: self._json(url), repo, revision)
        if not isinstance(info, dict):
            raise PreheatError(f"the hub at {self.endpoint} sent no model info for {repo}")
        return info

    def tree(self, repo: str, revision: str) -> list[dict[str, Any]]:
        """Every entry of the recursive listing at `revision`, following `Link: rel="next"` pages."""
        query = urlencode({"recursive": "true", "expand": "false"})
        url: str | None = (
            f"{self.endpoint}/api/models/{repo}/tree/{quote(revision, safe='')}?{query}"
        )
        entries: list[dict[str, Any]] = []
        while url is not None:
            page, headers = self.call(lambda u=url: self._json(u), repo, revision)
            if not isinstance(page, list):
                raise PreheatError(f"the hub at {self.endpoint} sent no file listing for {repo}")
            entries.extend(e for e in page if isinstance(e, dict))
            m = _NEXT.search(headers.get("link", ""))
            url = m.group(1) if m else None
        return entries

    # errors

    def scrub(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text.replace(self.token, "***") if self.token else text

    def error(
        self, exc: Exception, repo: str, revision: str | None = None, path: str | None = None
    ) -> PreheatError:
        """The one-line error for a failed request."""
        if isinstance(exc, PreheatError):
            return exc
        if isinstance(exc, HTTPStatus):
            return self.status_error(exc, repo, revision, path)
        return PreheatError(
            f"cannot reach the hub at {self.endpoint}: {self.scrub(str(exc)) or type(exc).__name__}"
        )

    def status_error(
        self, exc: HTTPStatus, repo: str, revision: str | None = None, path: str | None = None
    ) -> PreheatError:
        status, key = exc.status, self.token_name
        code = exc.headers.get("x-error-code")
        message = exc.headers.get("x-error-message")
        if code == "RevisionNotFound":
            return NotFound(
                f"revision {revision!r} not found in repo {repo}: use a branch, tag or commit that exists"
            )
        if code == "EntryNotFound":
            return NotFound(f"file {path!r} not found in {repo} at {revision}")
        if code == "GatedRepo":
            if self.token:
                return PreheatError(
                    f"repo {repo} is gated and the token in ${key} has no access: accept the "
                    f"repo's terms on the Hub with that account, or use another token"
                )
            return PreheatError(
                f"repo {repo} is gated: set ${key} (hf_token_key) to a token of an account that accepted its terms"
            )
        if code == "RepoNotFound" or (
            status == 401 and message != INVALID_CREDENTIALS and self._repo_url(exc.url)
        ):
            if status == 401 and self.token:
                return PreheatError(
                    f"the hub at {self.endpoint} rejected the token in ${key} (401): check or renew it"
                )
            suffix = "" if self.token else f" (if it is private, set ${key} to a token with access)"
            return NotFound(f"repo {repo} not found on {self.endpoint}{suffix}")
        if status in (401, 403):
            if self.token:
                return PreheatError(
                    f"the hub at {self.endpoint} rejected the token in ${key} ({status}): check or renew it"
                )
            return PreheatError(
                f"the hub at {self.endpoint} refused access to {repo} ({status}): set ${key} to a token with access"
            )
        detail = message or _server_message(exc.body)
        first = f"{status} {http.client.responses.get(status, 'Error')} for url {exc.url}"
        return PreheatError(
            f"hub request for {repo} failed: {self.scrub(first + (f': {detail}' if detail else ''))}"
        )

    def _repo_url(self, url: str) -> bool:
        if not url.startswith(self.endpoint + "/"):
            return False
        rest = url[len(self.endpoint) :]
        return rest.startswith(("/api/models/", "/api/datasets/", "/api/spaces/")) or (
            "/resolve/" in rest
        )


def _server_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    return " ".join(str(error).split())[:300] if error else ""
