"""S3 calls obstore lacks: a signed client from static keys, and aborting stale uploads."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from obstore import exceptions as oe

from preheat_storage.errors import StoreError
from preheat_storage.settings import Settings

if TYPE_CHECKING:
    from preheat_storage.s3api import S3Api
    from preheat_storage.store import ObstoreStore


def s3_client(settings: Settings, bucket: str, timeout: float = 10.0) -> S3Api | None:
    """The minimal signed S3 client for the calls obstore lacks, or None without static keys."""
    creds = settings.credentials
    if creds is None and settings.credential_provider is not None:
        got = settings.credential_provider()
        creds = (got["access_key_id"], got["secret_access_key"], got.get("token"))
    if creds is None:
        return None
    from preheat_storage.s3api import S3Api

    return S3Api(
        settings.endpoint,
        bucket,
        settings.region or "us-east-1",
        creds,
        virtual_hosted=settings.virtual_hosted,
        timeout=timeout,
    )


def abort_stale_uploads(store: ObstoreStore, api: S3Api, age: float) -> int:
    """Abort the multipart uploads under `store` started over `age` seconds ago; how many."""
    from preheat_storage.s3api import S3Error

    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    prefix = f"{store._u.prefix}/" if store._u.prefix else ""
    count = 0
    try:
        for upload in list(api.list_uploads(prefix)):
            if upload.initiated <= cutoff:
                api.abort(upload.key, upload.upload_id)
                count += 1
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            raise store._errors.bucket_missing(store._u.bucket) from None
        if exc.status in (401, 403):
            raise store._errors.translate(
                oe.PermissionDeniedError(f"<Code>{exc.code}</Code>"),
                "gc",
                store.url,
                store._u.bucket,
            ) from None
        raise StoreError(store._scrub(f"gc of {store.url} failed: {exc}")) from None
    return count
