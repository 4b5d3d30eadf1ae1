# -*- test-case-name: tests.test_jose -*-
"""
The segments of a compact JWS (RFC 7515), the shape of every JWT stsd
reads, decoded in one place: the request parser's shape check
(L{stsd.http.wire}), the token cache reading an accepted token's C{exp}
(L{stsd.auth.tokencache}) and local verification (L{stsd.auth.jwt}) all use these.

Verification decodes I{canonically}: a token has exactly one spelling, so
no altered string is accepted. The others only read, and decode as
leniently as they always have.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

__all__ = ["json_segment", "number", "segment"]


def segment(text: str, *, canonical: bool = True) -> bytes:
    """
    Decode one base64url segment.

    @param canonical: refuse any spelling but the canonical one (no
        padding, no stray characters, zero trailing bits).
    @raise ValueError: C{text} is not base64url (or not canonically so).
    """
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # binascii.Error: a ValueError
    if canonical and base64.urlsafe_b64encode(raw).rstrip(b"=") != text.encode("ascii", "replace"):
        raise ValueError("not the canonical base64url spelling")
    return raw


def json_segment(text: str, *, canonical: bool = True) -> dict[str, Any]:
    """
    Decode a segment holding a JSON object: a header or the claims.

    @param canonical: as for L{segment}, and the JSON must be UTF-8 (not
        merely something C{json} recognises, such as UTF-16).
    @raise ValueError: not base64url of a JSON object (bad JSON, bad
        UTF-8, nesting too deep, a number too long).
    """
    raw = segment(text, canonical=canonical)
    try:
        value = json.loads(raw.decode("utf-8") if canonical else raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def number(value: object) -> float | None:
    """
    A claim's value as a finite number of seconds (C{exp}, C{nbf},
    C{iat}), or C{None} when it is not one (booleans are not numbers).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
