"""obstore's errors as one-line preheat errors, with credentials scrubbed out."""

from __future__ import annotations

import re
from collections.abc import Iterable

from preheat.api import NotFound, PreconditionFailed, PreheatError


class StoreError(PreheatError):
    """An object store refused or failed a request."""


class BucketNotFound(StoreError):
    """The bucket (or Azure container) named by the store URL does not exist."""


class AccessDenied(StoreError):
    """The store rejected the credentials, or they lack a permission."""


class NoCredentials(StoreError):
    """No credentials were configured and none could be found on the machine."""


class Unreachable(StoreError):
    """The store's endpoint could not be reached (refused, DNS, timeout, TLS)."""


_BUCKET_CODES = {"NoSuchBucket", "ContainerNotFound"}
_CONNECT = (
    ("connection refused", "connection refused"),
    ("dns error", "DNS lookup failed"),
    ("failed to lookup address", "DNS lookup failed"),
    ("timed out", "timed out"),
    ("timedout", "timed out"),
    ("certificate", "TLS certificate rejected"),
    ("tls handshake", "TLS handshake failed"),
    ("connection reset", "connection reset"),
    ("incompletemessage", "connection closed early"),
    ("connection closed", "connection closed early"),
    ("tcp connect error", "connection failed"),
    ("error sending request", "connection failed"),
)
# Requests to instance-metadata services: obstore's last resort when no credentials are set.
_METADATA_MARKERS = (
    "169.254.169.254",
    "fd00:ec2::254",
    "/latest/api/token",
    "/latest/meta-data/",
    "metadata.google.internal",
    "/computeMetadata/",
    "/metadata/identity/",
)


class Scrubber:
    """Removes secret values and URL query strings (SAS tokens, signatures) from text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted((s for s in set(secrets) if len(s) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = re.sub(r"(https?://)[^/@\s\"']+@", r"\1***@", text)
        text = re.sub(r"(https?://[^\s?\"']+)\?[^\s\"']*", r"\1", text)
        return re.sub(
            r"(?i)\b(sig|signature|x-amz-signature|x-amz-security-token)=[^&\s\"']+",
            r"\1=***",
            text,
        )


def _detail(message: str) -> tuple[int | None, str | None, str | None]:
    status = re.search(r"status code: (\d{3})", message) or re.search(r"\(code: (\d{3})\)", message)
    code = re.search(r"<Code>([^<]+)</Code>", message)
    text = re.search(r"<Message>([^<\n]+)", message)
    return (
        int(status.group(1)) if status else None,
        code.group(1).strip() if code else None,
        text.group(1).strip() if text else None,
    )


def _summary(message: str) -> str:
    """The useful part of an obstore message: the server's code and message, or its first line."""
    _, code, text = _detail(message)
    if code or text:
        return ": ".join(p for p in (code, text) if p)
    first = message.split("Debug source:", 1)[0].strip().splitlines()
    line = first[0] if first else message
    return line if len(line) <= 300 else line[:297] + "..."


def connect_failure(message: str) -> str | None:
    """A short reason when `message` is a connection-level failure, else None."""
    if "status code:" in message:
        return None
    lower = message.lower()
    for needle, reason in _CONNECT:
        if needle in lower:
            return reason
    return None


def is_bucket_missing(exc: BaseException, *, listing: bool = False) -> bool:
    """Whether `exc` says the bucket is missing; for a LIST of the bucket, any 404 does."""
    status, code, _ = _detail(str(exc))
    return code in _BUCKET_CODES or (listing and status == 404)


def is_range_error(exc: BaseException) -> bool:
    message = str(exc)
    status, code, _ = _detail(message)
    return status == 416 or code == "InvalidRange" or "Wanted range starting at" in message


class ErrorContext:
    """What an error message needs to say about a store, and what it must never say."""

    def __init__(
        self,
        url: str,
        kind: str,
        endpoint: str,
        credential_hint: str,
        endpoint_hint: str,
        scrub: Scrubber,
    ) -> None:
        self.url = url
        self.kind = kind
        self.endpoint = endpoint
        self.credential_hint = credential_hint
        self.endpoint_hint = endpoint_hint
        self.scrub = scrub
        self.noun = "container" if kind == "azure" else "bucket"

    def bucket_missing(self, bucket: str) -> BucketNotFound:
        return BucketNotFound(
            self.scrub(
                f"{self.noun} {bucket!r} does not exist at {self.endpoint}: create it or fix --store / PREHEAT_STORE"
            )
        )

    def translate(self, exc: BaseException, op: str, where: str, bucket: str) -> PreheatError:
        """One clear PreheatError for an obstore exception raised while doing `op` on `where`."""
        from obstore import exceptions as oe

        message = str(exc)
        status, code, _ = _detail(message)
        scrub = self.scrub
        if isinstance(exc, PreheatError):
            return exc
        if isinstance(exc, oe.AlreadyExistsError):
            return PreconditionFailed(scrub(f"{where} already exists"))
        if isinstance(exc, oe.PreconditionError):
            return PreconditionFailed(
                scrub(f"{where} changed or is missing (its etag no longer matches)")
            )
        if code in _BUCKET_CODES:
            return self.bucket_missing(bucket)
        if any(marker in message for marker in _METADATA_MARKERS) and status in (
            None,
            400,
            401,
            403,
            404,
        ):
            return NoCredentials(
                scrub(f"no credentials found for {self.url}: set {self.credential_hint}")
            )
        if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) or status in (
            401,
            403,
        ):
            reason = code or (f"HTTP {status}" if status else "permission denied")
            return AccessDenied(
                scrub(
                    f"access denied to {self.url} at {self.endpoint} ({reason}): check the "
                    f"credentials ({self.credential_hint}) and their permissions"
                )
            )
        if "builder error" in message and self.endpoint.startswith("http://"):
            prefix = {"s3": "AWS_", "azure": "AZURE_", "gcs": "GOOGLE_"}.get(self.kind, "")
            return PreheatError(
                scrub(
                    f"{self.endpoint} is plain HTTP: set {prefix}ALLOW_HTTP=true or "
                    "`allow_http = true` in the preheat config file"
                )
            )
        reason = connect_failure(message)
        if reason:
            return Unreachable(
                scrub(
                    f"cannot reach {self.endpoint} for {self.url} ({reason}): check the endpoint "
                    f"({self.endpoint_hint}) and the network"
                )
            )
        if isinstance(exc, (FileNotFoundError, oe.NotFoundError)):
            return NotFound(scrub(f"{where} does not exist"))
        if isinstance(exc, oe.UnknownConfigurationKeyError):
            key = re.search(r"key: '([^']+)'", message)
            name = key.group(1) if key else _summary(message)
            return PreheatError(
                scrub(
                    f"unknown setting {name!r} for {self.url} (see the {self.kind} settings of obstore)"
                )
            )
        if isinstance(exc, ValueError) and "path" in message.lower():
            return PreheatError(scrub(f"invalid object key for {where}: {_summary(message)}"))
        if status == 501:
            return PreheatError(
                scrub(
                    f"{self.endpoint} does not support a request preheat needs ({_summary(message)}); "
                    "for stores without conditional writes set `conditional_writes = false`"
                )
            )
        return StoreError(scrub(f"{op} {where} failed: {_summary(message)}"))
