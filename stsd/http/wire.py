# -*- test-case-name: tests.test_wire -*-
"""
The AWS STS wire format: parsing an AssumeRoleWithWebIdentity request and
rendering its XML responses.

Parsing checks only what can be judged from the request itself; identity,
bindings and tenants are judged later by L{stsd.core.exchange}.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from stsd import errors
from stsd.auth.jose import json_segment
from stsd.config import MIN_DURATION_SECONDS
from stsd.core.exchange import AssumeRoleRequest
from stsd.core.policy import PolicyError, check_session_limits, parse_policy
from stsd.model import STS_NAMESPACE, IssuedCredentials, is_dns_label
from stsd.upstream.minio import MINIO_POLICY_LIMIT

ACTION = "AssumeRoleWithWebIdentity"
VERSION = "2011-06-15"
MAX_BODY_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 20_000  # AWS's limit for WebIdentityToken
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}\Z")




def check_namespace(name: str) -> str:
    if not is_dns_label(name):
        raise errors.invalid_parameter(
            "the tenant namespace in the path must be a DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    return name


def _decode_form(data: bytes, where: str) -> dict[str, str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.invalid_parameter(f"the {where} is not valid UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=100)
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid_parameter(
            f"the {where} is not a valid application/x-www-form-urlencoded form"
        ) from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params and params[key] != value:
            # Two different values: which one the caller meant is a guess.
            raise errors.invalid_parameter(f"parameter {key[:64]!r} is given twice")
        params[key] = value
    return params


def _check_jwt(token: str) -> None:
    if len(token) > MAX_TOKEN_CHARS:
        raise errors.invalid_identity_token(
            f"WebIdentityToken is longer than {MAX_TOKEN_CHARS} characters"
        )
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.match(p) for p in parts) or not _jwt_header(parts[0]):
        raise errors.invalid_identity_token("WebIdentityToken is not a JWT")


@functools.lru_cache(maxsize=64)
def _jwt_header(segment: str) -> bool:
    # Whether a token's header decodes to an object naming an alg. Tokens of
    # one cluster share a few headers: each is decoded once.
    try:
        header = json_segment(segment, canonical=False)
    except ValueError:
        return False
    return isinstance(header.get("alg"), str)


def _parse_duration(value: str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise errors.invalid_parameter("DurationSeconds must be an integer")
    duration = int(value)
    if not MIN_DURATION_SECONDS <= duration <= maximum:
        raise errors.invalid_parameter(
            f"DurationSeconds must be between {MIN_DURATION_SECONDS} and {maximum}"
        )
    return duration


def parse_request(
    *,
    content_type: str | None,
    body: bytes,
    query: bytes,
    default_duration: int,
    max_duration: int,
) -> AssumeRoleRequest:
    """
    Parse and validate an AssumeRoleWithWebIdentity request.

    Parameters may be in the query string (minio-py) or the form body
    (boto3, minio-go); the body wins when both carry one.

    @raise STSError: for every malformed request, in the order of the
        error table (docs/design.md, "Wire contract (what clients see)").
    """
    if len(body) > MAX_BODY_BYTES:
        raise errors.invalid_parameter(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    params = _decode_form(query, "query string") if query else {}
    if body:
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if mime != FORM_CONTENT_TYPE:
            raise errors.invalid_parameter(f"the request body must be {FORM_CONTENT_TYPE}")
        params.update(_decode_form(body, "request body"))

    version = params.get("Version")
    if not version:
        raise errors.missing_parameter("Version is required")
    if version != VERSION:
        raise errors.missing_parameter(f"Version must be {VERSION}")
    action = params.get("Action")
    if action != ACTION:
        raise errors.invalid_parameter(f"Action must be {ACTION}")
    token = params.get("WebIdentityToken")
    if not token:
        raise errors.missing_parameter("WebIdentityToken is required")
    _check_jwt(token)
    duration = _parse_duration(params.get("DurationSeconds"), default_duration, max_duration)
    policy = None
    text = params.get("Policy")
    if text and len(text) > MINIO_POLICY_LIMIT:
        # AWS's limit for an inline session policy; it also bounds the CPU
        # the policy algebra spends on a caller's document.
        raise errors.packed_policy_too_large(
            f"Policy is longer than {MINIO_POLICY_LIMIT} characters"
        )
    if text:
        try:
            policy = parse_policy(text)
            check_session_limits(policy)  # bounds the algebra's CPU per request
        except PolicyError as e:
            raise errors.malformed_policy(f"Policy is not a valid IAM policy: {e}") from None
    return AssumeRoleRequest(token=token, duration_seconds=duration, policy=policy,
                             policy_text=text or None)


@functools.lru_cache(maxsize=256)
def format_expiration(when: datetime) -> str:
    # Whole seconds: minio-py cannot parse more than 6 fractional digits.
    # Cached: the credentials minted in one second share their Expiration.
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def packed_policy_size(policy_bytes: int) -> int:
    # AWS meaning: percentage of the allowed size, rounded up.
    return -(-policy_bytes * 100 // MINIO_POLICY_LIMIT)


def success_xml(
    credentials: IssuedCredentials,
    *,
    subject: str,
    audience: str,
    policy_bytes: int,
    request_id: str,
) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_NAMESPACE}">'
        f"<AssumeRoleWithWebIdentityResult>"
        f"<Credentials>"
        f"<AccessKeyId>{escape(credentials.access_key_id)}</AccessKeyId>"
        f"<SecretAccessKey>{escape(credentials.secret_access_key)}</SecretAccessKey>"
        f"<SessionToken>{escape(credentials.session_token)}</SessionToken>"
        f"<Expiration>{format_expiration(credentials.expiration)}</Expiration>"
        f"</Credentials>"
        f"<SubjectFromWebIdentityToken>{escape(subject)}</SubjectFromWebIdentityToken>"
        f"<Audience>{escape(audience)}</Audience>"
        f"<PackedPolicySize>{packed_policy_size(policy_bytes)}</PackedPolicySize>"
        f"</AssumeRoleWithWebIdentityResult>"
        f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId></ResponseMetadata>"
        f"</AssumeRoleWithWebIdentityResponse>"
    ).encode("utf-8")


def error_xml(error: errors.STSError, request_id: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<ErrorResponse xmlns="{STS_NAMESPACE}">'
        f"<Error><Type>{error.type}</Type><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{escape(request_id)}</RequestId>"
        f"</ErrorResponse>"
    ).encode("utf-8")
