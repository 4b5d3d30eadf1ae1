# -*- test-case-name: tests.test_fake_minio_users -*-
"""
The small part of MinIO's S3 API the fake serves, so that real clients
(boto3, minio-py) can use credentials the fake minted: path-style buckets
and objects in memory (ListBuckets, CreateBucket, HeadBucket, DeleteBucket,
GetBucketLocation, ListObjects v1/v2, Get/Head/Put/DeleteObject).

Signatures and authorization are the caller's (L{FakeMinIO}); this module
maps a request to the action MinIO checks, and carries it out.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

__all__ = ["Bucket", "S3Error", "S3Operation", "S3Store", "decode_aws_chunked", "operation_for", "s3_error_xml"]

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Sub-resources this fake does not implement: refused rather than mistaken
# for a plain bucket or object request (which would authorize another action).
_UNSUPPORTED = frozenset({
    "acl", "cors", "delete", "encryption", "legal-hold", "lifecycle", "notification", "object-lock", "policy",
    "replication", "retention", "select", "tagging", "uploadId", "uploads", "versioning", "versions", "website",
    "attributes", "restore", "partNumber", "policyStatus", "logging", "accelerate", "requestPayment",
})


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _no_such_bucket() -> S3Error:
    return S3Error(404, "NoSuchBucket", "The specified bucket does not exist")


@dataclass(frozen=True)
class S3Operation:
    """What a request asks: C{name} (e.g. C{GetObject}) and the IAM C{action} MinIO checks."""

    name: str
    action: str
    bucket: str | None
    key: str | None
    query: dict[str, str]

    @property
    def resource(self) -> str:
        """The resource as an ARN (C{arn:aws:s3:::bucket/key}); C{""} (none) for ListBuckets."""
        if self.bucket is None:
            return ""
        return f"arn:aws:s3:::{self.bucket}" + (f"/{self.key}" if self.key else "")


def operation_for(method: str, raw_path: str, raw_query: str) -> S3Operation:
    """
    The operation of a path-style request (C{raw_path} still percent-encoded).

    @raise S3Error: a method or sub-resource the fake does not serve.
    """
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    path = raw_path.lstrip("/")
    bucket_raw, _, key_raw = path.partition("/")
    bucket, key = unquote(bucket_raw), unquote(key_raw)
    unsupported = sorted(_UNSUPPORTED & set(query))
    if unsupported:
        raise S3Error(501, "NotImplemented", f"fake MinIO: ?{unsupported[0]} is not implemented")
    if not bucket:
        if method == "GET":
            return S3Operation("ListBuckets", "s3:ListAllMyBuckets", None, None, query)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
    if not key:
        if method == "GET" and "location" in query:
            return S3Operation("GetBucketLocation", "s3:GetBucketLocation", bucket, None, query)
        table = {"GET": ("ListObjects", "s3:ListBucket"), "HEAD": ("HeadBucket", "s3:ListBucket"),
                 "PUT": ("CreateBucket", "s3:CreateBucket"), "DELETE": ("DeleteBucket", "s3:DeleteBucket")}
    else:
        table = {"GET": ("GetObject", "s3:GetObject"), "HEAD": ("HeadObject", "s3:GetObject"),
                 "PUT": ("PutObject", "s3:PutObject"), "DELETE": ("DeleteObject", "s3:DeleteObject")}
    if method not in table:
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
    name, action = table[method]
    if name == "ListObjects" and query.get("list-type") == "2":
        name = "ListObjectsV2"
    return S3Operation(name, action, bucket, key or None, query)


def decode_aws_chunked(body: bytes) -> tuple[bytes, dict[str, str]]:
    """
    The payload and trailers of an C{aws-chunked} body without chunk
    signatures (C{STREAMING-UNSIGNED-PAYLOAD-TRAILER}): C{hex-size CRLF data
    CRLF} repeated, a zero-size chunk, then C{name:value CRLF} trailers and
    an empty line.

    @raise S3Error: a malformed body (MinIO: IncompleteBody).
    """
    out, offset = [], 0
    bad = S3Error(400, "IncompleteBody", "You did not provide the number of bytes specified by the "
                  "Content-Length HTTP header.")
    while True:
        end = body.find(b"\r\n", offset)
        if end < 0:
            raise bad
        size_field = body[offset:end].split(b";", 1)[0]
        try:
            size = int(size_field, 16)
        except ValueError:
            raise bad from None
        offset = end + 2
        if size == 0:
            break
        chunk = body[offset:offset + size]
        if len(chunk) != size or body[offset + size:offset + size + 2] != b"\r\n":
            raise bad
        out.append(chunk)
        offset += size + 2
    trailers: dict[str, str] = {}
    for line in body[offset:].split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise bad
        trailers[name.strip().lower()] = value.strip()
    return b"".join(out), trailers


_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda data: hashlib.sha1(data).digest(),
    "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
}


def check_checksums(data: bytes, values: dict[str, str]) -> None:
    """Check the C{x-amz-checksum-*} values this fake can compute (CRC32, SHA-1, SHA-256)."""
    for name, value in values.items():
        compute = _CHECKSUMS.get(name)
        if compute is not None and base64.b64encode(compute(data)).decode() != value:
            raise S3Error(400, "XAmzContentChecksumMismatch",
                          "The provided 'x-amz-checksum' header does not match what was computed.")


@dataclass
class _Object:
    data: bytes
    content_type: str
    modified: float

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.data).hexdigest() + '"'  # noqa: S324 - S3's ETag is an MD5


@dataclass
class Bucket:
    created: float
    objects: dict[str, _Object] = field(default_factory=dict)


def _iso_ms(t: float) -> str:
    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class S3Store:
    """Buckets and objects in memory."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}

    def make_bucket(self, name: str, now: float) -> None:
        self.buckets.setdefault(name, Bucket(now))

    def put(self, bucket: str, key: str, data: bytes, now: float, content_type: str = "binary/octet-stream") -> str:
        if bucket not in self.buckets:
            raise _no_such_bucket()
        obj = _Object(data, content_type, now)
        self.buckets[bucket].objects[key] = obj
        return obj.etag

    def get(self, bucket: str, key: str) -> bytes | None:
        obj = self.buckets.get(bucket, Bucket(0)).objects.get(key)
        return None if obj is None else obj.data

    def serve(self, op: S3Operation, *, body: bytes, headers: dict[str, str], now: float, region: str,
              set_header: Callable[[str, str], None]) -> tuple[int, str, bytes]:
        """
        Carry out an authorized operation: (status, content type, body).

        @raise S3Error: as MinIO answers (NoSuchBucket, NoSuchKey, …).
        """
        if op.name == "ListBuckets":
            items = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>{_iso_ms(b.created)}</CreationDate>"
                            "</Bucket>" for n, b in sorted(self.buckets.items()))
            return 200, "application/xml", _xml(
                f'<ListAllMyBucketsResult xmlns="{_S3_NS}"><Owner><ID>02d6176db174dc93cb1b899f7c6078f08654445fe8cf1'
                f'b6ce98d8855f66bdbf4</ID><DisplayName>minio</DisplayName></Owner><Buckets>{items}</Buckets>'
                "</ListAllMyBucketsResult>")
        assert op.bucket is not None
        if op.name == "CreateBucket":
            if op.bucket in self.buckets:
                raise S3Error(409, "BucketAlreadyOwnedByYou",
                              "Your previous request to create the named bucket succeeded and you already own it.")
            self.make_bucket(op.bucket, now)
            set_header("location", "/" + op.bucket)
            return 200, "application/xml", b""
        bucket = self.buckets.get(op.bucket)
        if bucket is None:
            raise _no_such_bucket()
        if op.name == "GetBucketLocation":
            location = "" if region == "us-east-1" else escape(region)
            return 200, "application/xml", _xml(f'<LocationConstraint xmlns="{_S3_NS}">{location}</LocationConstraint>')
        if op.name == "HeadBucket":
            return 200, "application/xml", b""
        if op.name == "DeleteBucket":
            if bucket.objects:
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty")
            del self.buckets[op.bucket]
            return 204, "application/xml", b""
        if op.name in ("ListObjects", "ListObjectsV2"):
            return 200, "application/xml", self._list(op, bucket)
        assert op.key is not None
        if op.name == "PutObject":
            if "x-amz-copy-source" in headers:
                raise S3Error(501, "NotImplemented", "fake MinIO: CopyObject is not implemented")
            md5 = headers.get("content-md5")
            if md5 is not None:
                try:
                    digest = base64.b64decode(md5, validate=True)
                except binascii.Error:
                    digest = b""
                if digest != hashlib.md5(body).digest():  # noqa: S324
                    raise S3Error(400, "BadDigest", "The Content-Md5 you specified did not match what we received.")
            check_checksums(body, {k: v for k, v in headers.items() if k.startswith("x-amz-checksum-")})
            etag = self.put(op.bucket, op.key, body, now, headers.get("content-type") or "binary/octet-stream")
            set_header("etag", etag)
            return 200, "application/xml", b""
        if op.name == "DeleteObject":
            bucket.objects.pop(op.key, None)
            return 204, "application/xml", b""
        obj = bucket.objects.get(op.key)
        if obj is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        set_header("etag", obj.etag)
        set_header("last-modified", formatdate(obj.modified, usegmt=True))
        set_header("accept-ranges", "bytes")
        if op.name == "HeadObject":
            set_header("content-length", str(len(obj.data)))
            return 200, obj.content_type, b""
        return 200, obj.content_type, obj.data

    def _list(self, op: S3Operation, bucket: Bucket) -> bytes:
        q = op.query
        v2 = op.name == "ListObjectsV2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = int(q.get("max-keys", "1000"))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647")
        max_keys = max(0, min(max_keys, 1000))
        if v2:
            token = q.get("continuation-token")
            after = (base64.urlsafe_b64decode(token.encode()).decode("utf-8", "replace") if token
                     else q.get("start-after", ""))
        else:
            after = q.get("marker", "")
        url = q.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if url else text)

        contents: list[str] = []
        prefixes: list[str] = []
        truncated, last = False, ""
        for key in sorted(bucket.objects):
            if not key.startswith(prefix) or key <= after:
                continue
            if delimiter and after.endswith(delimiter) and key.startswith(after):
                continue  # under the common prefix the previous page ended with
            common = None
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[:cut + len(delimiter)]
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                last = common
            else:
                obj = bucket.objects[key]
                contents.append(f"<Contents><Key>{enc(key)}</Key><LastModified>{_iso_ms(obj.modified)}"
                                f"</LastModified><ETag>{escape(obj.etag)}</ETag><Size>{len(obj.data)}</Size>"
                                "<StorageClass>STANDARD</StorageClass></Contents>")
                last = key
        parts = [f'<ListBucketResult xmlns="{_S3_NS}"><Name>{escape(op.bucket or "")}</Name>'
                 f"<Prefix>{enc(prefix)}</Prefix>"]
        if v2:
            parts.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
            if q.get("continuation-token"):
                parts.append(f"<ContinuationToken>{escape(q['continuation-token'])}</ContinuationToken>")
            if q.get("start-after"):
                parts.append(f"<StartAfter>{enc(q['start-after'])}</StartAfter>")
        else:
            parts.append(f"<Marker>{enc(after)}</Marker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated:
            if v2:
                token = base64.urlsafe_b64encode(last.encode()).decode()
                parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
            else:
                parts.append(f"<NextMarker>{enc(last)}</NextMarker>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        parts.extend(contents)
        parts.extend(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        parts.append("</ListBucketResult>")
        return _xml("".join(parts))


def _xml(body: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")


def s3_error_xml(code: str, message: str, *, bucket: str | None, key: str | None, resource: str,
                 request_id: str) -> bytes:
    parts = [f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"]
    if key:
        parts.append(f"<Key>{escape(key)}</Key>")
    if bucket:
        parts.append(f"<BucketName>{escape(bucket)}</BucketName>")
    parts.append(f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
                 "<HostId>dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8</HostId></Error>")
    return _xml("".join(parts))
