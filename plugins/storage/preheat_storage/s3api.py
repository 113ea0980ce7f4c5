"""The S3 calls obstore does not expose: ListMultipartUploads, AbortMultipartUpload, a
multipart copy (UploadPartCopy) for objects over CopyObject's 5 GiB, and multipart uploads
whose id and parts are shared between processes.

Signed with AWS Signature Version 4 using only the standard library, so
`gc()` can abort the uploads that interrupted writes leave behind, `copy()`
can copy a large object on the server and several machines can upload the
parts of one object.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Upload:
    """An open multipart upload."""

    key: str
    upload_id: str
    initiated: dt.datetime


@dataclass(frozen=True)
class Part:
    """An uploaded part of an open multipart upload."""

    number: int
    etag: str
    size: int
    modified: dt.datetime


class S3Error(Exception):
    """A failed S3 API call: HTTP status and S3 error code."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        text = f"{code}: {message}" if message else code
        super().__init__(text if status is None else f"HTTP {status} {text}")
        self.status = status
        self.code = code


class S3Api:
    """A minimal SigV4 client for one bucket."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        region: str,
        credentials: tuple[str, str, str | None],
        *,
        virtual_hosted: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.virtual_hosted = virtual_hosted
        self.timeout = timeout

    def list_uploads(self, prefix: str = "") -> Iterator[Upload]:
        """Every open multipart upload whose key starts with `prefix`."""
        key_marker = upload_marker = ""
        while True:
            query = {"uploads": "", "prefix": prefix}
            if key_marker:
                query["key-marker"] = key_marker
            if upload_marker:
                query["upload-id-marker"] = upload_marker
            root = ElementTree.fromstring(self._request("GET", "", query))
            for item in _children(root, "Upload"):
                initiated = _text(item, "Initiated")
                yield Upload(
                    key=_text(item, "Key"),
                    upload_id=_text(item, "UploadId"),
                    initiated=_parse_time(initiated),
                )
            if _text(root, "IsTruncated").lower() != "true":
                return
            key_marker = _text(root, "NextKeyMarker")
            upload_marker = _text(root, "NextUploadIdMarker")
            if not key_marker and not upload_marker:
                return

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self._request("DELETE", key, {"uploadId": upload_id})
        except S3Error as exc:
            if exc.code != "NoSuchUpload" and exc.status != 404:
                raise

    def copy_multipart(
        self, src: str, dst: str, size: int, part_size: int, *, workers: int = 8
    ) -> None:
        """Copy object `src` to `dst` (bucket-relative keys) on the server, part by part."""
        from concurrent.futures import ThreadPoolExecutor

        upload_id = self.create_upload(dst)
        source = "/" + _quote(f"{self.bucket}/{src}")
        spans = [(n + 1, start, min(start + part_size, size) - 1)
                 for n, start in enumerate(range(0, size, part_size))]  # fmt: skip

        def part(span: tuple[int, int, int]) -> str:
            number, first, last = span
            body = self._request(
                "PUT",
                dst,
                {"partNumber": str(number), "uploadId": upload_id},
                headers={
                    "x-amz-copy-source": source,
                    "x-amz-copy-source-range": f"bytes={first}-{last}",
                },
            )
            return _text(_checked(body), "ETag")

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                etags = list(pool.map(part, spans))
            self.complete_upload(
                dst, upload_id, [(n, etag) for (n, _, _), etag in zip(spans, etags, strict=True)]
            )
        except BaseException:
            with contextlib.suppress(S3Error):
                self.abort(dst, upload_id)
            raise

    def create_upload(self, key: str) -> str:
        """Start a multipart upload of `key` (CreateMultipartUpload); its UploadId."""
        upload_id = _text(_checked(self._request("POST", key, {"uploads": ""})), "UploadId")
        if not upload_id:
            raise S3Error(None, "InvalidResponse", "CreateMultipartUpload returned no UploadId")
        return upload_id

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        length: int,
        chunks: Iterable[bytes | memoryview],
    ) -> str:
        """Upload part `number` (UploadPart) streamed from `chunks` of `length` bytes; its ETag.

        The body is sent as it comes (UNSIGNED-PAYLOAD), so memory stays bounded; a
        part uploaded again under the same number replaces the old one.
        """
        _, headers = self._call(
            "PUT",
            key,
            {"partNumber": str(number), "uploadId": upload_id},
            headers={"Content-Length": str(length), "Content-Type": "application/octet-stream"},
            body=chunks,
        )
        return headers.get("ETag", "")

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        """Every part uploaded so far to `upload_id` (ListParts), by part number.

        Some servers (SeaweedFS) list each upload of a part number, not just the last.
        """
        parts: list[Part] = []
        marker = ""
        while True:
            query = {"uploadId": upload_id}
            if marker:
                query["part-number-marker"] = marker
            root = _checked(self._request("GET", key, query))
            for item in _children(root, "Part"):
                parts.append(
                    Part(
                        int(_text(item, "PartNumber")),
                        _text(item, "ETag"),
                        int(_text(item, "Size") or 0),
                        _parse_time(_text(item, "LastModified")),
                    )
                )
            marker = _text(root, "NextPartNumberMarker")
            if _text(root, "IsTruncated").lower() != "true" or not marker:
                return sorted(parts, key=lambda p: p.number)

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        """Make `key` from the (part number, ETag) `parts`, in order (CompleteMultipartUpload).

        A number given with several ETags lets a server that keeps each upload of a part
        (SeaweedFS) take the newest of them.
        """
        done = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in parts
        )
        body = f"<CompleteMultipartUpload>{done}</CompleteMultipartUpload>".encode()
        _checked(
            self._request(
                "POST",
                key,
                {"uploadId": upload_id},
                headers={"Content-Type": "application/xml"},
                body=body,
            )
        )

    def _request(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> bytes:
        return self._call(method, key, query, headers=headers, body=body)[0]

    def _call(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
        body: bytes | Iterable[bytes | memoryview] = b"",
    ) -> tuple[bytes, Message]:
        """The response body and headers; an iterable `body` is streamed unsigned (give its Content-Length)."""
        if self.virtual_hosted:
            url = f"{self.endpoint}/{_quote(key)}"
        else:
            url = f"{self.endpoint}/{_quote(self.bucket)}" + (f"/{_quote(key)}" if key else "")
        canonical_query = "&".join(
            f"{_quote(k, safe='-_.~')}={_quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        if isinstance(body, bytes):
            signed = self._sign(method, url, canonical_query, headers or {}, body)
        else:
            signed = self._sign(method, url, canonical_query, headers or {}, payload=_UNSIGNED)
        request = urllib.request.Request(
            f"{url}?{canonical_query}",
            data=body if method in ("POST", "PUT") else None,
            method=method,
            headers=signed,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            error = exc.read()
            code, message = exc.reason, ""
            try:
                root = ElementTree.fromstring(error)
                code, message = _text(root, "Code") or code, _text(root, "Message")
            except ElementTree.ParseError:
                pass
            raise S3Error(exc.code, str(code), message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise S3Error(None, "ConnectionError", str(getattr(exc, "reason", exc))) from None

    def _sign(
        self,
        method: str,
        url: str,
        canonical_query: str,
        extra: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        payload: str | None = None,
    ) -> dict[str, str]:
        """The signed headers; `payload` overrides the body's SHA-256 (e.g. UNSIGNED-PAYLOAD)."""
        access_key, secret_key, token = self.credentials
        parts = urlsplit(url)
        now = dt.datetime.now(dt.UTC)
        amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        if payload is None:
            payload = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        headers = {
            **{k.lower(): v for k, v in (extra or {}).items()},
            "host": parts.netloc,
            "x-amz-content-sha256": payload,
            "x-amz-date": amz_date,
        }
        if token:
            headers["x-amz-security-token"] = token
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                parts.path or "/",
                canonical_query,
                "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
                signed,
                payload,
            ]
        )
        scope = f"{date}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{secret_key}".encode()
        for part in (date, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}"
        )
        return headers


def _checked(body: bytes) -> ElementTree.Element:
    """The parsed response; S3 may answer 200 with an <Error> body (CompleteMultipartUpload)."""
    root = ElementTree.fromstring(body)
    if root.tag.rsplit("}", 1)[-1] == "Error":
        raise S3Error(200, _text(root, "Code") or "InternalError", _text(root, "Message"))
    return root


def _quote(value: str, safe: str = "-_.~/") -> str:
    return quote(value, safe=safe)


def _children(node: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in node if child.tag.rsplit("}", 1)[-1] == name]


def _text(node: ElementTree.Element, name: str) -> str:
    found = _children(node, name)
    return (found[0].text or "") if found else ""


def _parse_time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
