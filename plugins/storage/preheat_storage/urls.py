"""Store URLs: which cloud a scheme names, and the bucket and key prefix a URL points at."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from preheat.api import PreheatError

KINDS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "az": "azure",
    "azure": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "memory": "memory",
}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: `kind` is s3, gcs, azure or memory; keys live under `prefix`."""

    scheme: str
    kind: str
    netloc: str
    bucket: str
    prefix: str
    account: str | None = None

    @property
    def url(self) -> str:
        """The URL in its normal form (lower-case scheme, no trailing slash)."""
        return f"{self.scheme}://{self.netloc}" + (f"/{self.prefix}" if self.prefix else "")

    def uri(self, key: str) -> str:
        """The URL of a store-relative key."""
        return f"{self.url}/{key}" if key else self.url

    def path(self, key: str) -> str:
        """The object path inside the bucket for a store-relative key."""
        return f"{self.prefix}/{key}" if self.prefix else key


def parse_url(url: str) -> StoreURL:
    """Parse `s3://bucket/prefix`, `gs://...`, `az://container/prefix` (also azure://,
    abfs[s]://container[@account.dfs.core.windows.net]/prefix) or `memory://name/prefix`."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    kind = KINDS.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}://" for s in KINDS)
        raise PreheatError(f"unsupported store URL scheme {scheme + '://'!r}: use one of {known}")
    if parts.query or parts.fragment:
        raise PreheatError(
            f"{scheme}:// store URLs take no query string or fragment: put settings in the "
            "environment or the preheat config file"
        )
    netloc = parts.netloc
    bucket, account = netloc, None
    if "@" in netloc:
        if kind != "azure" or ":" in netloc.split("@", 1)[0]:
            raise PreheatError(
                f"credentials in {scheme}:// store URLs are not supported: use the environment "
                "or the preheat config file"
            )
        bucket, host = netloc.split("@", 1)
        account = host.split(".", 1)[0] or None
    if not bucket and kind != "memory":
        noun = "container" if kind == "azure" else "bucket"
        raise PreheatError(
            f"store URL {url!r} names no {noun}: use {scheme}://{noun.upper()}/PREFIX"
        )
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise PreheatError(f"store URL {url!r} has a '.' or '..' path segment")
    return StoreURL(scheme, kind, netloc, bucket, "/".join(segments), account)
