# -*- test-case-name: tests.test_sigv4 -*-
"""
AWS Signature Version 4 for the calls to a tenant's MinIO, with the
signing key derived once per (day, region, service) rather than by four
HMACs per request. The output is that of the C{minio} package's signer
(C{minio.signer.sign_v4_s3} / C{sign_v4_sts}), which the tests compare it
with, and for header names differing only in case (one header to the
server, its values comma-joined) what the MinIO server computes, where
minio-py's signer keeps only the last value.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

ALGORITHM = "AWS4-HMAC-SHA256"
# Never signed (minio's signer leaves them out too): proxies rewrite them.
_UNSIGNED = frozenset({"authorization", "user-agent"})


def _canonical_value(value: str) -> str:
    value = value.strip()
    while "  " in value:
        value = value.replace("  ", " ")
    return value


class Signer:
    """
    Signs requests with one set of root credentials. Holds the secret key
    and the keys derived from it; its repr shows neither.
    """

    __slots__ = ("_access_key", "_keys", "_secret")

    def __init__(self, access_key: str, secret_key: str) -> None:
        self._access_key = access_key
        self._secret = ("AWS4" + secret_key).encode()
        self._keys: dict[tuple[str, str, str], bytes] = {}

    def __repr__(self) -> str:
        return "Signer(<hidden>)"

    def _key(self, day: str, region: str, service: str) -> bytes:
        cache_key = (day, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = self._secret
            for part in (day, region, service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 16:  # yesterday's keys
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def authorization(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        content_sha256: str,
        amz_date: str,
        region: str,
        service: str,
    ) -> str:
        """
        The Authorization header for a request with these C{headers} (all
        of them are signed, sent in this order; C{X-Amz-Date}, equal to
        C{amz_date}, must be among them) and this already canonical
        C{query} (sorted, RFC 3986 encoded).

        @param amz_date: the signing time as SigV4 writes it, C{YYYYMMDDTHHMMSSZ}.
        """
        # Header names are case-insensitive: names differing only in case are
        # one header, as the server reads them (HTTP joins repeated headers'
        # values with commas, in the order sent). SigV4 signs it once, under
        # the lower-cased name, with the values comma-joined in that order.
        merged: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower not in _UNSIGNED:
                value = _canonical_value(value)
                merged[lower] = f"{merged[lower]},{value}" if lower in merged else value
        canonical = sorted(merged.items())
        signed = ";".join(name for name, _ in canonical)
        request = "\n".join((
            method,
            path or "/",
            query,
            "\n".join(f"{name}:{value}" for name, value in canonical),
            "",
            signed,
            content_sha256,
        ))
        day = amz_date[:8]
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(request.encode()).hexdigest()}")
        signature = hmac.new(self._key(day, region, service), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return (f"{ALGORITHM} Credential={self._access_key}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}")
