"""A strict in-process fake of the MinIO admin and STS APIs stsd calls.

Every request is checked with an independent AWS SigV4 verifier (not the
``minio`` package's signer, so the fake does not share the daemon's bugs), and
AssumeRole refuses anything real MinIO would refuse, plus a missing session
policy, which would silently hand out root's rights.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus
from xml.sax.saxutils import escape

from twisted.web.resource import Resource

from stsd.testing.faults import Faults

__all__ = ["FakeMinIO", "FakeMinIORouter", "Minted", "SigV4Error", "verify_sigv4"]

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_MAX_SKEW = 15 * 60
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_REQUIRED_SIGNED = ("host", "x-amz-content-sha256", "x-amz-date")
_ROUTES = {"/minio/admin/v3/info": "info", "/minio/admin/v3/info-canned-policy": "policy", "/": "assumerole"}


@dataclass(frozen=True)
class Minted:
    access_key: str
    secret_key: str
    session_token: str
    policy: dict
    duration: int
    expiration: datetime.datetime

    def __repr__(self) -> str:
        return (f"Minted(access_key={self.access_key!r}, secret_key=<hidden>, session_token=<hidden>, "
                f"policy={self.policy!r}, duration={self.duration}, expiration={self.expiration.isoformat()})")


@dataclass(frozen=True)
class SigV4Error:
    status: int
    code: str
    message: str


def _err(status: int, code: str, message: str) -> SigV4Error:
    return SigV4Error(status, code, message)


def _canonical_query(raw_query: str) -> str:
    # As MinIO does: decode what was sent, re-encode RFC 3986 ('+' means space).
    pairs = []
    for item in filter(None, raw_query.split("&")):
        key, _, value = item.partition("=")
        pairs.append((quote(unquote_plus(key), safe="-_.~"), quote(unquote_plus(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


def _amz_time(amz_date: str) -> int:
    """C{YYYYMMDDTHHMMSSZ} as a Unix time (strptime costs the fake a tenth of its CPU)."""
    if not _AMZ_DATE.fullmatch(amz_date):
        raise ValueError(amz_date)
    fields = (int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]),
              int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15]))
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= 31 and fields[3] < 24
            and fields[4] < 60 and fields[5] < 61):
        raise ValueError(amz_date)
    return calendar.timegm((*fields, 0, 0, 0))


def verify_sigv4(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    header: Callable[[str], Sequence[str] | None],
    body: bytes,
    access_key: str,
    secret_key: str,
    now: float,
    service: str,
    region: str | None,
) -> SigV4Error | None:
    """Check an AWS SigV4 ``Authorization`` header; ``region=None`` accepts any region.

    ``raw_path`` is the path exactly as sent (still percent-encoded);
    ``header(name)`` returns all values of a request header or None.
    """
    auth = (header("authorization") or [""])[0]
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return _err(403, "AccessDenied", "Access Denied.")
    fields: dict[str, str] = {}
    for item in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key in fields:
            return _err(400, "MissingFields", "Missing fields in request.")
        fields[key] = value
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        return _err(400, "MissingFields", "Missing fields in request.")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not re.fullmatch(r"\d{8}", scope[1]):
        return _err(400, "AuthorizationQueryParametersError",
                    "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                    'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    key_id, scope_date, scope_region, scope_service, _ = scope
    if scope_service != service:
        return _err(400, "AuthorizationParametersError",
                    f'Error parsing the Credential parameter; incorrect service. This endpoint belongs to "{service}".')
    if region is not None and scope_region != region:
        return _err(400, "AuthorizationHeaderMalformed",
                    f"The authorization header is malformed; the region is wrong; expecting '{region}'.")
    if not hmac.compare_digest(key_id.encode(), access_key.encode()):
        return _err(403, "InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records.")
    signed = fields["SignedHeaders"].split(";")
    if signed != sorted(set(signed)) or any(h != h.lower() or not h for h in signed):
        return _err(403, "SignatureDoesNotMatch", "SignedHeaders must be lower-case, sorted and unique.")
    if not set(_REQUIRED_SIGNED) <= set(signed) or any(header(h) is None for h in signed):
        return _err(400, "AccessDenied", "There were headers present in the request which were not signed "
                    "(host, x-amz-content-sha256 and x-amz-date must be signed and present).")
    amz_date = header("x-amz-date")[0]  # type: ignore[index]
    try:
        signed_at = _amz_time(amz_date)
    except ValueError:
        return _err(400, "MalformedDate", "Invalid date format header, expected to be in ISO8601, RFC1123 or "
                    "RFC1123Z time format.")
    if amz_date[:8] != scope_date:
        return _err(403, "SignatureDoesNotMatch", "Date in Credential scope does not match YYYYMMDD from X-Amz-Date.")
    if abs(signed_at - now) > _MAX_SKEW:
        return _err(403, "RequestTimeTooSkewed",
                    "The difference between the request time and the server's time is too large.")
    payload_hash = header("x-amz-content-sha256")[0]  # type: ignore[index]
    if payload_hash == "UNSIGNED-PAYLOAD":
        if method != "GET" or body:
            return _err(400, "XAmzContentSHA256Mismatch", "UNSIGNED-PAYLOAD is only accepted for a GET without body.")
    elif payload_hash != hashlib.sha256(body).hexdigest():
        return _err(400, "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.")
    canonical_headers = "".join(
        f"{h}:{','.join(' '.join(v.split()) for v in header(h))}\n" for h in signed  # type: ignore[union-attr]
    )
    canonical_request = "\n".join([method, raw_path or "/", _canonical_query(raw_query), canonical_headers,
                                   fields["SignedHeaders"], payload_hash])
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, "/".join(scope[1:]),
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (scope_date, scope_region, scope_service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), fields["Signature"].encode()):
        return _err(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                    "signature you provided. Check your key and signing method.")
    return None


def _resource_ok(resource: Any) -> bool:
    # minio/pkg: "*" or a known ARN prefix followed by a pattern not starting with "/".
    if resource == "*":
        return True
    for prefix in ("arn:aws:s3:::", "arn:aws:s3tables:::", "arn:minio:kms:::"):
        if isinstance(resource, str) and resource.startswith(prefix):
            rest = resource[len(prefix):]
            return bool(rest) and not rest.startswith("/")
    return False


def _validate_policy(doc: Any) -> str | None:
    """Why MinIO's policy parser (unknown fields disallowed) would refuse doc, or None."""
    if not isinstance(doc, dict):
        return "policy must be a JSON object"
    if set(doc) - {"Version", "Id", "ID", "Statement"}:
        return f"unknown policy fields {sorted(set(doc) - {'Version', 'Id', 'ID', 'Statement'})}"
    if not doc.get("Version"):
        return "Version cannot be empty expecting '2012-10-17'"
    if doc["Version"] != "2012-10-17":
        return f"invalid version '{doc['Version']}'"
    statements = doc.get("Statement", [])
    if not isinstance(statements, list):
        return "Statement must be a list"
    for st in statements:
        if not isinstance(st, dict):
            return "Statement entries must be objects"
        extra = set(st) - {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
        if extra:
            return f"unknown statement fields {sorted(extra)}"
        if st.get("Effect") not in ("Allow", "Deny"):
            return f"invalid Effect {st.get('Effect')!r}"
        if ("Action" in st) == ("NotAction" in st) or ("Resource" in st and "NotResource" in st):
            return "exactly one of Action/NotAction, at most one of Resource/NotResource"
        actions = st.get("Action", st.get("NotAction"))
        actions = [actions] if isinstance(actions, str) else actions
        if not actions or not all(isinstance(a, str) and re.fullmatch(r"\*|(s3|s3tables|admin|kms|sts):[\w*?]+", a)
                                  for a in actions):
            return f"invalid action {actions!r}"
        resources = st.get("Resource", st.get("NotResource"))
        resources = [resources] if isinstance(resources, str) else resources
        if resources is None:
            if any(a == "*" or a.startswith("s3:") for a in actions):
                return "Resource must not be empty"
        elif not resources or not all(_resource_ok(r) for r in resources):
            return f"invalid resource {resources!r}"
        cond = st.get("Condition", {})
        if not isinstance(cond, dict) or not all(isinstance(v, dict) for v in cond.values()):
            return "invalid Condition"
    return None


class FakeMinIO:
    """One tenant's MinIO: admin info, canned policies and AssumeRole."""

    # Real MinIO accepts up to 365 days; stsd never asks for more than 12 h.
    MAX_DURATION = 43200
    MIN_DURATION = 900

    def __init__(self, *, access_key: str, secret_key: str, region: str = "us-east-1", clock: Any = None,
                 policies: dict[str, dict] | None = None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._clock = clock
        self.deployment_id = str(uuid.uuid4())
        self._policies: dict[str, tuple[str, str, str]] = {}  # name -> (raw, created, updated)
        self.minted: list[Minted] = []
        self.calls: Counter[str] = Counter()
        self._faults = Faults(lambda route, wanted: route == wanted)
        for name, doc in (policies or {}).items():
            self.set_policy(name, doc)

    @property
    def clock(self):
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    def _iso(self, seconds: float | None = None) -> str:
        t = self.clock.seconds() if seconds is None else seconds
        return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- state ------------------------------------------------------------------

    def set_policy(self, name: str, doc: dict | str) -> None:
        """Store a canned policy; a str is kept verbatim, so it may be unparsable."""
        raw = doc if isinstance(doc, str) else json.dumps(doc)
        created = self._policies[name][1] if name in self._policies else self._iso()
        self._policies[name] = (raw, created, self._iso())

    def delete_policy(self, name: str) -> None:
        del self._policies[name]

    def set_region(self, region: str) -> None:
        self.region = region

    def count(self, route: str) -> int:
        return self.calls[route]

    def resource(self) -> Resource:
        return _TenantResource(self)

    # -- faults -----------------------------------------------------------------

    def fail(self, route: str, mode: str | None, times: int | None = None, *,
             delay: float = 0.0) -> None:
        """
        route "info" | "policy" | "assumerole"; mode "500" | "hang" | "close" | "error" |
        "delay" (answered as usual after C{delay} seconds) | None.
        """
        if route not in _ROUTES.values():
            raise ValueError(f"unknown route {route!r}")
        if mode not in (None, "500", "hang", "close", "error", "delay"):
            raise ValueError(f"unknown fault mode {mode!r}")
        self._faults.set(route, mode, times)
        self._delay = delay

    _delay = 0.0

    @property
    def hung(self) -> int:
        """How many requests a "hang" fault holds open now."""
        return self._faults.hung

    @property
    def delayed(self) -> int:
        """How many requests a "delay" fault holds back now."""
        return self._faults.delayed

    def clear_faults(self) -> None:
        """Remove faults and drop the connections of requests left hanging."""
        self._faults.clear()

    shutdown = clear_faults

    # -- HTTP -------------------------------------------------------------------

    def _render(self, request, local_path: str, delayed: bool = False):
        request_id = secrets.token_hex(8).upper()
        request.setHeader("x-amz-request-id", request_id)
        request.setHeader("server", "MinIO")
        route = _ROUTES.get(local_path or "/")
        method = request.method.decode("ascii", "replace")
        raw_path, _, raw_query = request.uri.decode("latin-1").partition("?")
        if route is None:
            return _admin_error(request, 400, "XMinioUnknownAPIRequest", f"Unknown API request at {local_path}",
                                raw_path, request_id)
        sts = route == "assumerole"
        if not delayed:
            self.calls[route] += 1

        def error(status: int, code: str, message: str) -> bytes:
            if sts:
                return _sts_error(request, status, code, message, request_id)
            return _admin_error(request, status, code, message, raw_path, request_id)

        fault = None if delayed else self._faults.take(route)
        if fault == "delay":
            return self._faults.delay(request, self.clock, self._delay,
                                      lambda: self._render(request, local_path, delayed=True))
        if fault == "500":
            request.setResponseCode(500)
            request.setHeader("content-type", "text/plain")
            return b"Internal Server Error\n"
        if fault == "error":
            return error(500, "InternalError", "We encountered an internal error, please try again.")
        held = self._faults.connection(request, fault)
        if held is not None:
            return held

        if method != ("POST" if sts else "GET"):
            return error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        request.content.seek(0)
        body = request.content.read()

        def header(name: str) -> list[str] | None:
            values = request.requestHeaders.getRawHeaders(name)
            return None if values is None else [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]

        problem = verify_sigv4(method=method, raw_path=raw_path, raw_query=raw_query, header=header, body=body,
                               access_key=self.access_key, secret_key=self.secret_key, now=self.clock.seconds(),
                               service="sts" if sts else "s3", region=self.region if sts else None)
        if problem is not None:
            return error(problem.status, problem.code, problem.message)
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        if route == "info":
            return _send(request, 200, "application/json", json.dumps(self._info()).encode())
        if route == "policy":
            return self._policy(request, query, raw_path, request_id)
        return self._assume_role(request, raw_query, body, error, request_id)

    def _info(self) -> dict:
        return {"mode": "online", "deploymentID": self.deployment_id, "region": self.region,
                "buckets": {"count": 0}, "objects": {"count": 0}, "usage": {"size": 0}, "services": {},
                "backend": {"backendType": "Erasure", "onlineDisks": 1, "offlineDisks": 0},
                "servers": [{"state": "online", "endpoint": "minio-pool-0-0", "uptime": 3600,
                             "version": "fake", "drives": []}]}

    def _policy(self, request, query: dict[str, str], raw_path: str, request_id: str) -> bytes:
        name = query.get("name", "")
        if not name:
            return _admin_error(request, 400, "InvalidArgument", "Invalid arguments specified.", raw_path, request_id)
        if name not in self._policies:
            return _admin_error(request, 404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist.",
                                raw_path, request_id)
        raw, created, updated = self._policies[name]
        if query.get("v") != "2":  # older madmin clients get the bare document
            return _send(request, 200, "application/json", raw.encode())
        # Spliced verbatim (json.RawMessage in MinIO): an unparsable document
        # makes the whole reply unparsable, which the daemon must survive.
        body = (f'{{"PolicyName":{json.dumps(name)},"Policy":{raw},'
                f'"CreateDate":"{created}","UpdateDate":"{updated}"}}')
        return _send(request, 200, "application/json", body.encode())

    def _assume_role(self, request, raw_query: str, body: bytes, error, request_id: str) -> bytes:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded" or raw_query:
            return error(400, "InvalidParameterValue", "fake MinIO: AssumeRole must be a POST with a form body "
                         "(application/x-www-form-urlencoded) and no query string, as MinIO routes it")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            return error(400, "InvalidParameterValue", "fake MinIO: form body is not parsable")
        form = dict(pairs)
        if len(form) != len(pairs):
            return error(400, "InvalidParameterValue", "fake MinIO: repeated form parameters")
        if form.get("Action") != "AssumeRole":
            return error(400, "InvalidParameterValue", f"Unsupported action {form.get('Action', '')}")
        if form.get("Version") != "2011-06-15":
            return error(400, "MissingParameter",
                         f"Invalid STS API version {form.get('Version', '')}, expecting 2011-06-15")
        try:
            duration = int(form.get("DurationSeconds", "3600"))
        except ValueError:
            duration = -1
        if not self.MIN_DURATION <= duration <= self.MAX_DURATION:
            return error(400, "InvalidParameterValue",
                         "An invalid or out-of-range value was supplied for the input parameter.")
        session_policy = form.get("Policy", "")
        if not session_policy:
            return error(400, "InvalidParameterValue", "fake MinIO: refusing AssumeRole without a session "
                         "policy (would grant root's rights)")
        if len(session_policy.encode()) > 2048:
            return error(400, "InvalidParameterValue", "Session policy should not exceed 2048 characters")
        try:
            policy = json.loads(session_policy)
        except ValueError as e:
            return error(400, "MalformedPolicyDocument", f"policy is not valid JSON: {e}")
        problem = _validate_policy(policy)
        if problem is not None:
            return error(400, "MalformedPolicyDocument", problem)

        now = int(self.clock.seconds())
        expiration = datetime.datetime.fromtimestamp(now + duration, datetime.timezone.utc)
        # Within MinIO's alphabets (A-Z0-9 keys; base64 secrets), one random read each.
        access_key = secrets.token_hex(10).upper()
        secret_key = base64.b64encode(secrets.token_bytes(30)).decode()
        session_token = self._session_token(access_key, now + duration, session_policy)
        self.minted.append(Minted(access_key, secret_key, session_token, policy, duration, expiration))
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<AssumeRoleResponse xmlns="{_STS_NS}"><AssumeRoleResult>'
               "<AssumedRoleUser><Arn></Arn><AssumeRoleId></AssumeRoleId></AssumedRoleUser><Credentials>"
               f"<AccessKeyId>{access_key}</AccessKeyId><SecretAccessKey>{escape(secret_key)}</SecretAccessKey>"
               f"<Expiration>{self._iso(now + duration)}</Expiration>"
               f"<SessionToken>{escape(session_token)}</SessionToken></Credentials></AssumeRoleResult>"
               f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></AssumeRoleResponse>")
        return _send(request, 200, "text/xml", xml.encode())


    def _session_token(self, access_key: str, exp: int, session_policy: str) -> str:
        # Like MinIO: an HS512 JWT keyed with the root secret, carrying the session
        # policy. Built by hand: pyjwt warns about short (test) secrets.
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        head = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
        claims = b64(json.dumps({"accessKey": access_key, "exp": exp, "parent": self.access_key,
                                 "sessionPolicy": base64.b64encode(session_policy.encode()).decode()}).encode())
        sig = hmac.new(self.secret_key.encode(), f"{head}.{claims}".encode(), hashlib.sha512).digest()
        return f"{head}.{claims}.{b64(sig)}"


class _TenantResource(Resource):
    isLeaf = True

    def __init__(self, minio: FakeMinIO):
        super().__init__()
        self._minio = minio

    def render(self, request):
        return self._minio._render(request, request.path.decode("utf-8", "replace"))


class FakeMinIORouter(Resource):
    """Several tenants on one port: ``/{namespace}/minio/admin/...`` and ``POST /{namespace}/``."""

    isLeaf = True

    def __init__(self, tenants: dict[str, FakeMinIO] | None = None):
        super().__init__()
        self.tenants: dict[str, FakeMinIO] = dict(tenants or {})

    def add(self, namespace: str, minio: FakeMinIO) -> FakeMinIO:
        self.tenants[namespace] = minio
        return minio

    def __getitem__(self, namespace: str) -> FakeMinIO:
        return self.tenants[namespace]

    def clear_faults(self) -> None:
        for minio in self.tenants.values():
            minio.clear_faults()

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        namespace, _, rest = path.lstrip("/").partition("/")
        minio = self.tenants.get(namespace)
        if minio is None:
            return _admin_error(request, 404, "XMinioFakeNoSuchTenant", f"no fake tenant for namespace "
                                f"{namespace!r}", path, secrets.token_hex(8).upper())
        return minio._render(request, "/" + rest)


def _send(request, status: int, content_type: str, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader("content-type", content_type)
    return body


def _admin_error(request, status: int, code: str, message: str, resource: str, request_id: str) -> bytes:
    body = {"Code": code, "Message": message, "Resource": resource, "RequestId": request_id, "HostId": ""}
    return _send(request, status, "application/json", json.dumps(body).encode())


def _sts_error(request, status: int, code: str, message: str, request_id: str) -> bytes:
    kind = "Receiver" if status >= 500 else "Sender"
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{_STS_NS}"><Error><Type>{kind}</Type>'
           f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
           f"<RequestId>{request_id}</RequestId></ErrorResponse>")
    return _send(request, status, "text/xml", xml.encode())
