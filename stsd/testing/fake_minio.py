# -*- test-case-name: tests.test_fakes -*-
"""A strict in-process fake of the MinIO APIs stsd and its tests call.

Every request is checked with an independent AWS SigV4 verifier (not the
C{minio} package's signer, so the fake does not share the daemon's bugs).
Served, as MinIO (minio/minio cmd/) does:

 - admin (root only): server info, canned policies, users (add, remove,
   list, info) and their policy mappings (set, attach, detach), with
   madmin-encrypted bodies opened by the fake's own decryptor;
 - STS AssumeRole, signed by root (a session policy required: without one
   MinIO would hand out root's rights) or by a user (the credentials' parent);
 - a small path-style S3 API authorized like MinIO's IAM: a temporary
   credential may do what its parent user's policies, as attached NOW, and
   its session policy both allow; removing the user removes its credentials.
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
from urllib.parse import parse_qsl, quote, unquote, unquote_plus
from xml.sax.saxutils import escape

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stsd.testing.fake_s3 import S3Error, S3Operation, S3Store, check_checksums, decode_aws_chunked, operation_for, \
    s3_error_xml
from stsd.testing.faults import Faults
from stsd.testing.madmin_crypto import MadminCryptoError, Sealer, decrypt_data

__all__ = ["ROUTES", "FakeMinIO", "FakeMinIORouter", "Minted", "SigV4Error", "User", "verify_sigv4"]

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_MAX_SKEW = 15 * 60
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_REQUIRED_SIGNED = ("host", "x-amz-content-sha256", "x-amz-date")
_UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
# MinIO's admin routes (cmd/admin-router.go): path -> (route name, method).
_ADMIN_ROUTES = {
    "/minio/admin/v3/info": ("info", "GET"),
    "/minio/admin/v3/info-canned-policy": ("policy", "GET"),
    "/minio/admin/v3/add-user": ("add-user", "PUT"),
    "/minio/admin/v3/remove-user": ("remove-user", "DELETE"),
    "/minio/admin/v3/set-user-or-group-policy": ("set-user-policy", "PUT"),
    "/minio/admin/v3/idp/builtin/policy/attach": ("attach-policy", "POST"),
    "/minio/admin/v3/idp/builtin/policy/detach": ("detach-policy", "POST"),
    "/minio/admin/v3/list-users": ("list-users", "GET"),
    "/minio/admin/v3/user-info": ("user-info", "GET"),
}
# Route names, as counted in FakeMinIO.calls and accepted by FakeMinIO.fail.
ROUTES = tuple(route for route, _ in _ADMIN_ROUTES.values()) + ("assumerole", "s3")
_MAX_ECONFIG = 262272  # maxEConfigJSONSize
# Routes whose request body is a madmin payload.
_ENCRYPTED_BODIES = frozenset({"add-user", "attach-policy", "detach-policy"})


@dataclass(frozen=True)
class Minted:
    access_key: str
    secret_key: str
    session_token: str
    policy: dict | None  # the session policy, if any
    duration: int
    expiration: datetime.datetime
    parent: str = ""  # the access key that signed the AssumeRole

    @property
    def credentials(self) -> tuple[str, str, str]:
        """(access key, secret key, session token), as an SDK takes them."""
        return self.access_key, self.secret_key, self.session_token

    def __repr__(self) -> str:
        return (f"Minted(access_key={self.access_key!r}, secret_key=<hidden>, session_token=<hidden>, "
                f"policy={self.policy!r}, duration={self.duration}, expiration={self.expiration.isoformat()}, "
                f"parent={self.parent!r})")


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
    unsigned_payload: bool = False,
) -> SigV4Error | None:
    """Check an AWS SigV4 C{Authorization} header; C{region=None} accepts any region.

    C{unsigned_payload} accepts C{UNSIGNED-PAYLOAD} and
    C{STREAMING-UNSIGNED-PAYLOAD-TRAILER} for any method, as MinIO's S3 API does.

    C{raw_path} is the path exactly as sent (still percent-encoded);
    C{header(name)} returns all values of a request header or None.
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
    present = {h: header(h) for h in signed}
    values = {h: v for h, v in present.items() if v is not None}
    if not set(_REQUIRED_SIGNED) <= set(signed) or len(values) != len(present):
        return _err(400, "AccessDenied", "There were headers present in the request which were not signed "
                    "(host, x-amz-content-sha256 and x-amz-date must be signed and present).")
    amz_date = values["x-amz-date"][0]
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
    payload_hash = values["x-amz-content-sha256"][0]
    if unsigned_payload and payload_hash in _UNSIGNED_PAYLOADS:
        pass  # S3 over TLS: clients may leave the payload unsigned (an aws-chunked body is checked later)
    elif payload_hash == "UNSIGNED-PAYLOAD":
        if method != "GET" or body:
            return _err(400, "XAmzContentSHA256Mismatch", "UNSIGNED-PAYLOAD is only accepted for a GET without body.")
    elif payload_hash != hashlib.sha256(body).hexdigest():
        return _err(400, "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.")
    canonical_headers = "".join(
        f"{h}:{','.join(' '.join(v.split()) for v in values[h])}\n" for h in signed
    )
    canonical_request = "\n".join([method, raw_path or "/", _canonical_query(raw_query), canonical_headers,
                                   fields["SignedHeaders"], payload_hash])
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, "/".join(scope[1:]),
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    signing_key = ("AWS4" + secret_key).encode()
    for part in (scope_date, scope_region, scope_service, "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
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


@dataclass
class User:
    """A regular MinIO user (C{mc admin user add}), with the policies attached to it."""

    secret_key: str
    enabled: bool = True
    policies: tuple[str, ...] = ()
    updated: str = "0001-01-01T00:00:00Z"

    def __repr__(self) -> str:
        return f"User(secret_key=<hidden>, enabled={self.enabled}, policies={self.policies!r})"


def _policy_names(text: str) -> tuple[str, ...]:
    # MinIO's MappedPolicy: comma-separated, spaces trimmed, empties dropped, order kept.
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return tuple(names)


class FakeMinIO:
    """
    One tenant's MinIO: admin info, canned policies, users and their policy
    mappings, AssumeRole, and a small S3 API that authorizes every call with
    the current policies of the credential's parent user and its session
    policy, as MinIO does.
    """

    # Real MinIO accepts up to 365 days; stsd never asks for more than 12 h.
    MAX_DURATION = 43200
    MIN_DURATION = 900

    def __init__(self, *, access_key: str, secret_key: str, region: str = "us-east-1", clock: Any = None,
                 policies: dict[str, dict] | None = None,
                 run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]] | None = None) -> None:
        """
        @param run_in_thread: where to open encrypted request bodies (an
            Argon2id derivation: a fifth of a second of CPU); by default in
            the request, which suits in-memory tests. A fake serving a real
            daemon passes a thread pool, so that its reactor (and the fakes
            sharing it) is not held up.
        """
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._clock = clock
        self.deployment_id = str(uuid.uuid4())
        self._policies: dict[str, tuple[str, str, str]] = {}  # name -> (raw, created, updated)
        # Every credential minted, in order (a record for tests: removal or
        # expiry does not take one out); the live ones are in _temporary.
        self.minted: list[Minted] = []
        self._temporary: dict[str, Minted] = {}
        self.users: dict[str, User] = {}
        # Every secret key a user was ever given (the log scans look for them).
        self.user_secrets: set[str] = set()
        self.s3 = S3Store()
        self.calls: Counter[str] = Counter()
        # S3 requests by (action, outcome Code or "OK"), e.g. ("s3:GetObject", "AccessDenied").
        self.s3_outcomes: Counter[tuple[str, str]] = Counter()
        self._faults = Faults(lambda route, wanted: route == wanted)
        self._sealer: tuple[str, Sealer] | None = None
        self._run_in_thread = run_in_thread
        for name, doc in (policies or {}).items():
            self.set_policy(name, doc)

    @property
    def clock(self) -> IReactorTime:
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
        """Remove a canned policy; like MinIO, mappings naming it stay and it grants nothing."""
        del self._policies[name]

    def set_region(self, region: str) -> None:
        self.region = region

    def count(self, route: str) -> int:
        return self.calls[route]

    def add_user(self, access_key: str, secret_key: str, policies: Sequence[str] = (), *,
                 enabled: bool = True) -> None:
        """Create or update a user directly (as C{mc admin user add} and C{policy attach} would)."""
        self.users[access_key] = User(secret_key, enabled, tuple(policies), self._iso())
        self.user_secrets.add(secret_key)

    def remove_user(self, access_key: str) -> None:
        """Remove a user and, as MinIO does, every temporary credential derived from it."""
        del self.users[access_key]
        for key in [k for k, m in self._temporary.items() if m.parent == access_key]:
            del self._temporary[key]

    def user_policies(self, access_key: str) -> tuple[str, ...]:
        return self.users[access_key].policies

    def live_credentials(self, parent: str | None = None) -> list[Minted]:
        """Temporary credentials that are neither removed nor expired (of C{parent}, if given)."""
        now = self.clock.seconds()
        return [m for m in self._temporary.values()
                if m.expiration.timestamp() > now and (parent is None or m.parent == parent)]

    def make_bucket(self, name: str) -> None:
        self.s3.make_bucket(name, self.clock.seconds())

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        self.s3.put(bucket, key, data, self.clock.seconds())

    def get_object(self, bucket: str, key: str) -> bytes | None:
        return self.s3.get(bucket, key)

    def resource(self) -> Resource:
        return _TenantResource(self)

    # -- faults -----------------------------------------------------------------

    def fail(self, route: str, mode: str | None, times: int | None = None, *,
             delay: float = 0.0) -> None:
        """
        route: one of L{ROUTES}; mode "500" | "hang" | "close" | "error" |
        "delay" (answered as usual after C{delay} seconds) | None.
        """
        if route not in ROUTES:
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

    # -- identities -------------------------------------------------------------

    def knows(self, access_key: str) -> bool:
        """Whether C{access_key} is this tenant's root, one of its users or a live credential."""
        return self._identity(access_key) is not None

    def _identity(self, access_key: str) -> tuple[str, str, Minted | None] | None:
        """(kind "root" | "user" | "temporary", secret key, minted) of a key MinIO would accept now."""
        if access_key == self.access_key:
            return "root", self.secret_key, None
        user = self.users.get(access_key)
        if user is not None:
            return "user", user.secret_key, None
        minted = self._temporary.get(access_key)
        if minted is not None and minted.expiration.timestamp() > self.clock.seconds():
            # An expired credential is unknown to MinIO (InvalidAccessKeyId).
            return "temporary", minted.secret_key, minted
        return None

    # -- HTTP -------------------------------------------------------------------

    def _render(self, request: Request, local_path: str, delayed: bool = False) -> bytes | int:
        request_id = secrets.token_hex(8).upper()
        request.setHeader("x-amz-request-id", request_id)
        request.setHeader("server", "MinIO")
        method = request.method.decode("ascii", "replace")
        raw_path, _, raw_query = request.uri.decode("latin-1").partition("?")
        local_path = local_path or "/"
        if local_path.startswith("/minio/"):
            admin = _ADMIN_ROUTES.get(local_path)
            if admin is None:
                return _admin_error(request, 400, "XMinioUnknownAPIRequest", f"Unknown API request at {local_path}",
                                    raw_path, request_id)
            route, wanted_method = admin
        elif local_path == "/" and method == "POST":
            route, wanted_method = "assumerole", "POST"
        else:
            route, wanted_method = "s3", method
        sts = route == "assumerole"
        if not delayed:
            self.calls[route] += 1

        def error(status: int, code: str, message: str) -> bytes:
            if sts:
                return _sts_error(request, status, code, message, request_id)
            if route == "s3":
                return _send(request, status, "application/xml", s3_error_xml(
                    code, message, bucket=None, key=None, resource=unquote(local_path), request_id=request_id))
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

        if method != wanted_method:
            return error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        assert request.content is not None  # Twisted's, before render
        request.content.seek(0)
        body = request.content.read()

        def header(name: str) -> list[str] | None:
            values = request.requestHeaders.getRawHeaders(name)
            return None if values is None else [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]

        if route == "s3":
            return self._s3(request, method, local_path, raw_path, raw_query, header, body, request_id)
        # Sign with the secret of the key named, if it is one; else with
        # root's, so that the verifier answers InvalidAccessKeyId in its turn.
        identity = self._identity(_credential_key(header))
        kind, secret = (identity[0], identity[1]) if identity is not None else ("root", self.secret_key)
        problem = verify_sigv4(method=method, raw_path=raw_path, raw_query=raw_query, header=header, body=body,
                               access_key=self.access_key if identity is None else _credential_key(header),
                               secret_key=secret, now=self.clock.seconds(),
                               service="sts" if sts else "s3", region=self.region if sts else None)
        if problem is not None:
            if sts:
                # apiToSTSError (cmd/sts-handlers.go): every authentication
                # failure is AccessDenied, with the S3 error's description.
                return error(403, "AccessDenied", problem.message)
            return error(problem.status, problem.code, problem.message)
        signer = _credential_key(header)
        if kind == "user" and not self.users[signer].enabled:
            return error(403, "AccessDenied" if sts else "InvalidAccessKeyId",
                         "Your account is disabled; please contact your administrator.")
        if sts:
            if kind == "temporary" or header("x-amz-security-token") is not None:
                # Temporary credentials cannot mint more; nor may a request carry a token.
                return error(403, "AccessDenied", "Access Denied.")
            return self._assume_role(request, raw_query, body, error, request_id, signer)
        if kind != "root":
            # MinIO would evaluate the user's admin policies; the fake serves root only.
            return error(403, "AccessDenied", "Access Denied.")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        if route == "info":
            return _send(request, 200, "application/json", json.dumps(self._info()).encode())
        if route == "policy":
            return self._policy(request, query, raw_path, request_id)
        handler = getattr(self, "_admin_" + route.replace("-", "_"))
        if route in _ENCRYPTED_BODIES and self._run_in_thread is not None:
            secret = self.secret_key

            def reply(opened: bytes | MadminCryptoError) -> None:
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.write(handler(request, query, body, error, opened))
                    request.finish()

            self._run_in_thread(lambda: _open(secret, body)).addCallback(reply).addErrback(
                lambda f: f.printTraceback())
            return NOT_DONE_YET
        return handler(request, query, body, error)

    def _info(self) -> dict:
        return {"mode": "online", "deploymentID": self.deployment_id, "region": self.region,
                "buckets": {"count": len(self.s3.buckets)}, "objects": {"count": 0}, "usage": {"size": 0},
                "services": {}, "backend": {"backendType": "Erasure", "onlineDisks": 1, "offlineDisks": 0},
                "servers": [{"state": "online", "endpoint": "minio-pool-0-0", "uptime": 3600,
                             "version": "fake", "drives": []}]}

    def _policy(self, request: Request, query: dict[str, str], raw_path: str, request_id: str) -> bytes:
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

    # -- admin: users (cmd/admin-handlers-users.go) ------------------------------

    def _admin_add_user(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes],
                        opened: bytes | MadminCryptoError | None = None) -> bytes:
        if "accessKey" not in query:
            return _version_mismatch(error)
        access_key = query["accessKey"]
        if access_key == self.access_key:
            return error(403, "XMinioInvalidIAMCredentials", "Credential is not allowed to be same as admin "
                         "access key")
        if access_key in self._temporary:
            return error(403, "XMinioInvalidIAMCredentials", "Credential is not allowed to be same as admin "
                         "access key")
        if access_key not in self.users and access_key != access_key.strip():
            return error(400, "XMinioInvalidResource", "Policy, user or group names are not allowed to begin or "
                         "end with space characters")
        if request.getHeader("content-length") is None or len(body) > _MAX_ECONFIG:
            return error(400, "XMinioAdminConfigTooLarge", "Configuration data provided exceeds the allowed "
                         f"maximum of {_MAX_ECONFIG} bytes")
        plain = opened if opened is not None else _open(self.secret_key, body)
        try:
            if isinstance(plain, MadminCryptoError):
                raise plain
            ureq = json.loads(plain)
        except (MadminCryptoError, ValueError):
            return error(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format")
        if not isinstance(ureq, dict) or not isinstance(ureq.get("secretKey", ""), str) \
                or not isinstance(ureq.get("status", ""), str):
            return error(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format")
        if len(access_key) < 3 or any(c in access_key for c in "=,"):
            return error(400, "XMinioAdminInvalidAccessKey", "The access key is invalid.")
        secret_key = ureq.get("secretKey", "")
        if len(secret_key) < 8:
            return error(400, "XMinioAdminInvalidSecretKey", "The secret key is invalid.")
        previous = self.users.get(access_key)
        # Status "enabled" (or "on") enables; anything else disables. The
        # policy mapping is kept across an update.
        self.users[access_key] = User(secret_key, ureq.get("status") in ("enabled", "on"),
                                      previous.policies if previous else (), self._iso())
        self.user_secrets.add(secret_key)
        return _send(request, 200, "application/json", b"")

    def _admin_remove_user(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes]) -> bytes:
        if "accessKey" not in query:
            return _version_mismatch(error)
        access_key = query["accessKey"]
        user = self._user_to_change(access_key, error)
        if isinstance(user, bytes):
            return user
        self.remove_user(access_key)
        return _send(request, 200, "application/json", b"")

    def _user_to_change(self, name: str, error: Callable[[int, str, str], bytes]) -> User | bytes:
        """The user an admin call changes, or MinIO's refusal: temporary credentials and
        root are no users to change (403), an unknown name is not found (404)."""
        if name in self._temporary or name == self.access_key:
            return error(403, "XMinioIAMActionNotAllowed", "Specified IAM action is not allowed")
        user = self.users.get(name)
        if user is None:
            return error(404, "XMinioAdminNoSuchUser", "The specified user does not exist.")
        return user

    def _admin_set_user_policy(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes]) -> bytes:
        if not {"policyName", "userOrGroup", "isGroup"} <= set(query) or query["isGroup"] not in ("true", "false"):
            return _version_mismatch(error)
        name = query["userOrGroup"]
        if query["isGroup"] == "true":
            return error(404, "XMinioAdminNoSuchGroup", "The specified group does not exist.")
        user = self._user_to_change(name, error)
        if isinstance(user, bytes):
            return user
        policies = _policy_names(query["policyName"])
        if any(p not in self._policies for p in policies):
            return error(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist.")
        # An empty policyName removes the mapping (PolicyDBSet).
        user.policies, user.updated = policies, self._iso()
        return _send(request, 200, "application/json", b"")

    def _admin_attach_policy(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes],
                             opened: bytes | MadminCryptoError | None = None) -> bytes:
        return self._attach_detach(request, body, error, opened, attach=True)

    def _admin_detach_policy(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes],
                             opened: bytes | MadminCryptoError | None = None) -> bytes:
        return self._attach_detach(request, body, error, opened, attach=False)

    def _attach_detach(self, request: Request, body: bytes, error: Callable[[int, str, str], bytes], opened: bytes | MadminCryptoError | None, *,
                       attach: bool) -> bytes:
        if request.getHeader("content-length") is None or len(body) > _MAX_ECONFIG:
            return error(400, "XMinioAdminConfigTooLarge", "Configuration data provided exceeds the allowed "
                         f"maximum of {_MAX_ECONFIG} bytes")
        if request.getHeader("content-type") != "application/octet-stream":
            return error(400, "BadRequest", "400 BadRequest")
        # MinIO maps the errors of decryption, JSON and validation here
        # through toAdminAPIErr to InternalError.
        plain = opened if opened is not None else _open(self.secret_key, body)
        try:
            if isinstance(plain, MadminCryptoError):
                raise plain
            par = json.loads(plain)
        except (MadminCryptoError, ValueError) as e:
            return error(500, "InternalError", str(e))
        if not isinstance(par, dict):
            return error(500, "InternalError", "json: cannot unmarshal into Go value of type "
                         "madmin.PolicyAssociationReq")
        policies, user, group = par.get("policies") or [], par.get("user") or "", par.get("group") or ""
        if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies) \
                or not isinstance(user, str) or not isinstance(group, str):
            return error(500, "InternalError", "json: cannot unmarshal into Go struct field of type "
                         "madmin.PolicyAssociationReq")
        problem = ("no policy names were given" if not policies else
                   "an empty policy name was given" if "" in policies else
                   "no user or group association was given" if not user and not group else
                   "either a group or a user association must be given, not both" if user and group else None)
        if problem is not None:
            return error(500, "InternalError", problem)
        if group:
            return error(404, "XMinioAdminNoSuchGroup", "The specified group does not exist.")
        entry = self._user_to_change(user, error)
        if isinstance(entry, bytes):
            return entry
        current = set(entry.policies)
        wanted = set(policies)
        if attach:
            changed = wanted - current
            if any(p not in self._policies for p in changed):
                return error(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist.")
            new = entry.policies + tuple(p for p in policies if p in changed and p not in entry.policies)
        else:
            changed = wanted & current
            new = tuple(p for p in entry.policies if p not in changed)
        if not changed:
            return error(400, "XMinioAdminPolicyChangeAlreadyApplied", "The specified policy change is already "
                         "in effect.")
        entry.policies, entry.updated = tuple(dict.fromkeys(new)), self._iso()
        answer: dict[str, Any] = {"policiesAttached" if attach else "policiesDetached": sorted(changed),
                                  "updatedAt": entry.updated}
        return _send(request, 200, "application/octet-stream",
                     self._seal(json.dumps(answer).encode()))

    def _seal(self, data: bytes) -> bytes:
        # An answer encrypted for root's secret; one Argon2id derivation per
        # root secret, not per answer (the reader cannot tell).
        if self._sealer is None or self._sealer[0] != self.secret_key:
            self._sealer = (self.secret_key, Sealer(self.secret_key))
        return self._sealer[1].seal(data)

    def _user_info(self, user: User) -> dict[str, Any]:
        info: dict[str, Any] = {"status": "enabled" if user.enabled else "disabled", "updatedAt": user.updated}
        if user.policies:
            info["policyName"] = ",".join(user.policies)
        return info

    def _admin_list_users(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes]) -> bytes:
        listing = {k: self._user_info(u) for k, u in sorted(self.users.items())}
        return _send(request, 200, "application/octet-stream",
                     self._seal(json.dumps(listing).encode()))

    def _admin_user_info(self, request: Request, query: dict[str, str], body: bytes, error: Callable[[int, str, str], bytes]) -> bytes:
        if "accessKey" not in query:
            return _version_mismatch(error)
        name = query["accessKey"]
        if name in self._temporary:
            return error(403, "XMinioIAMActionNotAllowed", "Specified IAM action is not allowed")
        user = self.users.get(name)
        if user is None:
            return error(404, "XMinioAdminNoSuchUser", "The specified user does not exist.")
        return _send(request, 200, "application/json", json.dumps(self._user_info(user)).encode())

    # -- STS (cmd/sts-handlers.go) -----------------------------------------------

    def _assume_role(self, request: Request, raw_query: str, body: bytes, error: Callable[[int, str, str], bytes], request_id: str, signer: str) -> bytes:
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
        if not session_policy and signer == self.access_key:
            return error(400, "InvalidParameterValue", "fake MinIO: refusing AssumeRole without a session "
                         "policy (would grant root's rights)")
        policy: dict | None = None
        if session_policy:
            if len(session_policy.encode()) > 2048:
                return error(400, "InvalidParameterValue", "Session policy should not exceed 2048 characters")
            try:
                policy = json.loads(session_policy)
            except ValueError as e:
                return error(400, "MalformedPolicyDocument", f"policy is not valid JSON: {e}")
            problem = _validate_policy(policy)
            if problem is not None:
                return error(400, "MalformedPolicyDocument", problem)

        minted = self._mint(signer, policy, session_policy, duration)
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<AssumeRoleResponse xmlns="{_STS_NS}"><AssumeRoleResult>'
               "<AssumedRoleUser><Arn></Arn><AssumeRoleId></AssumeRoleId></AssumedRoleUser><Credentials>"
               f"<AccessKeyId>{minted.access_key}</AccessKeyId>"
               f"<SecretAccessKey>{escape(minted.secret_key)}</SecretAccessKey>"
               f"<Expiration>{self._iso(minted.expiration.timestamp())}</Expiration>"
               f"<SessionToken>{escape(minted.session_token)}</SessionToken></Credentials></AssumeRoleResult>"
               f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></AssumeRoleResponse>")
        return _send(request, 200, "text/xml", xml.encode())

    def mint(self, parent: str, policy: dict | None = None, duration: int = 900) -> Minted:
        """Mint temporary credentials of C{parent} (root or a user) directly, as AssumeRole would."""
        if parent != self.access_key and parent not in self.users:
            raise KeyError(parent)
        return self._mint(parent, policy, json.dumps(policy) if policy is not None else "", duration)

    def _mint(self, parent: str, policy: dict | None, session_policy: str, duration: int) -> Minted:
        now = int(self.clock.seconds())
        expiration = datetime.datetime.fromtimestamp(now + duration, datetime.timezone.utc)
        # Within MinIO's alphabets (A-Z0-9 keys; base64 secrets), one random read each.
        access_key = secrets.token_hex(10).upper()
        secret_key = base64.b64encode(secrets.token_bytes(30)).decode()
        session_token = self._session_token(access_key, now + duration, session_policy, parent)
        minted = Minted(access_key, secret_key, session_token, policy, duration, expiration, parent)
        self.minted.append(minted)
        self._temporary[access_key] = minted
        return minted

    def _session_token(self, access_key: str, exp: int, session_policy: str, parent: str) -> str:
        # Like MinIO: an HS512 JWT keyed with the root secret, carrying the
        # parent and the session policy. Built by hand: pyjwt warns about
        # short (test) secrets.
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        claims: dict[str, Any] = {"accessKey": access_key, "exp": exp, "parent": parent}
        if session_policy:
            claims["sessionPolicy"] = base64.b64encode(session_policy.encode()).decode()
        head = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
        body = b64(json.dumps(claims).encode())
        sig = hmac.new(self.secret_key.encode(), f"{head}.{body}".encode(), hashlib.sha512).digest()
        return f"{head}.{body}.{b64(sig)}"

    # -- S3 (cmd/auth-handler.go, cmd/iam.go IsAllowed/IsAllowedSTS) -------------

    def _s3(self, request: Request, method: str, local_path: str, raw_path: str, raw_query: str, header: Callable[[str], list[str] | None], body: bytes,
            request_id: str) -> bytes:
        op: S3Operation | None = None

        def fail(status: int, code: str, message: str) -> bytes:
            self.s3_outcomes[(op.action if op else "?", code)] += 1
            bucket = op.bucket if op else None
            key = op.key if op else None
            return _send(request, status, "application/xml", s3_error_xml(
                code, message, bucket=bucket, key=key, resource=unquote(local_path), request_id=request_id))

        try:
            op = operation_for(method, local_path, raw_query)
        except S3Error as e:
            return fail(e.status, e.code, e.message)
        if header("authorization") is None:
            # Anonymous: only bucket policies could allow it, and the fake has none.
            return fail(403, "AccessDenied", "Access Denied.")
        key_id = _credential_key(header)
        identity = self._identity(key_id)
        kind, secret, minted = identity if identity is not None else ("root", self.secret_key, None)
        # GetBucketLocation and ListBuckets are signed for any region (MinIO
        # auth-handler.go); everything else for the tenant's.
        region = None if op.name in ("GetBucketLocation", "ListBuckets") else self.region
        problem = verify_sigv4(method=method, raw_path=raw_path, raw_query=raw_query, header=header, body=body,
                               access_key=self.access_key if identity is None else key_id, secret_key=secret,
                               now=self.clock.seconds(), service="s3", region=region, unsigned_payload=True)
        if problem is not None:
            return fail(problem.status, problem.code, problem.message)
        if kind == "user" and not self.users[key_id].enabled:
            return fail(403, "InvalidAccessKeyId", "Your account is disabled; please contact your administrator.")
        token = next(iter(header("x-amz-security-token") or ()), None)
        if kind == "temporary":
            assert minted is not None
            if token is None or not hmac.compare_digest(token.encode(), minted.session_token.encode()):
                return fail(403, "InvalidTokenId", "The security token included in the request is invalid")
        elif token is not None:
            return fail(403, "InvalidTokenId", "The security token included in the request is invalid")
        if (header("x-amz-content-sha256") or [""])[0] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            try:
                body, trailers = decode_aws_chunked(body)
                check_checksums(body, trailers)
            except S3Error as e:
                return fail(e.status, e.code, e.message)
            decoded = next(iter(header("x-amz-decoded-content-length") or ()), None)
            if decoded is not None and decoded != str(len(body)):
                return fail(400, "IncompleteBody", "You did not provide the number of bytes specified by the "
                            "Content-Length HTTP header.")
        if not self._allowed(kind, key_id, minted, op, self._conditions(request, header, kind, key_id, minted, op)):
            return fail(403, "AccessDenied", "Access Denied.")
        headers = {name.decode("latin-1").lower(): values[0].decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        try:
            status, content_type, answer = self.s3.serve(
                op, body=body, headers=headers, now=self.clock.seconds(), region=self.region,
                set_header=request.setHeader)
        except S3Error as e:
            return fail(e.status, e.code, e.message)
        self.s3_outcomes[(op.action, "OK")] += 1
        return _send(request, status, content_type, answer)

    def _conditions(self, request: Request, header: Callable[[str], list[str] | None], kind: str, key_id: str, minted: Minted | None,
                    op: S3Operation) -> dict[str, list[str]]:
        # cmd/bucket-policy.go getConditionValues: the request's facts under
        # bare names (a policy's "aws:username" is matched as "username"),
        # then the query parameters (s3:prefix, s3:delimiter, s3:max-keys …).
        now = self.clock.seconds()
        username = minted.parent if minted is not None else key_id
        principal = "Account" if username == self.access_key else "AssumedRole" if minted else "User"
        client = request.getClientAddress()
        values: dict[str, list[str]] = {
            "CurrentTime": [self._iso(now)], "EpochTime": [str(int(now))],
            "SecureTransport": ["true" if request.isSecure() else "false"],
            "SourceIp": [getattr(client, "host", "")], "UserAgent": [request.getHeader("user-agent") or ""],
            "Referer": [request.getHeader("referer") or ""], "principaltype": [principal],
            "userid": [username], "username": [username], "versionid": [op.query.get("versionId", "")],
            "signatureversion": ["AWS4-HMAC-SHA256"], "authType": ["REST-HEADER"],
        }
        for name, value in op.query.items():
            values.setdefault(name, []).append(value)
        return values

    def _parent_documents(self, user: User) -> list[dict]:
        # MergePolicies: attached names MinIO no longer has grant nothing.
        docs = []
        for name in user.policies:
            if name in self._policies:
                try:
                    docs.append(json.loads(self._policies[name][0]))
                except ValueError:
                    continue  # only the fake can hold an unparsable policy
        return docs

    def _allowed(self, kind: str, key_id: str, minted: Minted | None, op: S3Operation,
                 context: dict[str, list[str]]) -> bool:
        if kind == "root":
            return True
        from stsd.testing import minio_policy  # the MinIO-semantics evaluator

        if kind == "user":
            docs = self._parent_documents(self.users[key_id])
            return bool(docs) and minio_policy.allowed(docs, op.action, op.resource, context)
        assert minted is not None
        if minted.parent == self.access_key:
            # Derived from root: limited by its session policy alone.
            return minted.policy is None or minio_policy.allowed([minted.policy], op.action, op.resource, context)
        parent = self.users.get(minted.parent)
        if parent is None or not parent.enabled:
            return False
        docs = self._parent_documents(parent)
        # IsAllowedSTS: no policy mapped to the parent, nothing allowed.
        return bool(docs) and minio_policy.allowed_with_session(docs, minted.policy, op.action, op.resource,
                                                                context)


def _open(password: str, body: bytes) -> bytes | MadminCryptoError:
    """A madmin payload's plaintext, or why it does not open (safe to run in a thread)."""
    try:
        return decrypt_data(password, body)
    except MadminCryptoError as e:
        return e


def _credential_key(header: Callable[[str], Sequence[str] | None]) -> str:
    """The access key named by a SigV4 Authorization header ("" if none)."""
    auth = (header("authorization") or [""])[0]
    match = re.search(r"Credential=([^/,\s]*)/", auth)
    return match.group(1) if match else ""


def _version_mismatch(error: Callable[[int, str, str], bytes]) -> bytes:
    # A required query parameter missing: no MinIO admin route matches.
    return error(426, "XMinioAdminVersionMismatch", "This 'admin' API is not supported by server in "
                 "'mode-server-xl'")


class _TenantResource(Resource):
    isLeaf = True

    def __init__(self, minio: FakeMinIO):
        super().__init__()
        self._minio = minio

    def render(self, request: Request) -> bytes | int:
        return self._minio._render(request, request.path.decode("utf-8", "replace"))


class FakeMinIORouter(Resource):
    """
    Several tenants on one port: C{/{namespace}/minio/admin/...}, C{POST
    /{namespace}/} and path-style S3 C{/{namespace}/{bucket}/{key}} (boto3
    keeps a path in its endpoint URL). A client that cannot put a path in
    its endpoint (minio-py's Minio and MinioAdmin) sends C{/{bucket}/{key}}
    or C{/minio/admin/...}: when the first path segment is no namespace,
    the tenant that knows the request's access key serves it (a namespace
    wins over a bucket of the same name).
    """

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

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace")
        namespace, _, rest = path.lstrip("/").partition("/")
        minio = self.tenants.get(namespace)
        if minio is not None:
            return minio._render(request, "/" + rest)
        auth = request.getHeader("authorization") or ""
        match = re.search(r"Credential=([^/,\s]*)/", auth)
        if match is not None:
            for tenant in self.tenants.values():
                if tenant.knows(match.group(1)):
                    return tenant._render(request, path)
            # A key no tenant knows (any more): MinIO's answer.
            request_id = secrets.token_hex(8).upper()
            request.setHeader("x-amz-request-id", request_id)
            if path.startswith("/minio/"):
                return _admin_error(request, 403, "InvalidAccessKeyId", "The Access Key Id you provided does not "
                                    "exist in our records.", path, request_id)
            return _send(request, 403, "application/xml", s3_error_xml(
                "InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records.",
                bucket=None, key=None, resource=unquote(path), request_id=request_id))
        return _admin_error(request, 404, "XMinioFakeNoSuchTenant", f"no fake tenant for namespace "
                            f"{namespace!r}", path, secrets.token_hex(8).upper())


def _send(request: Request, status: int, content_type: str, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader("content-type", content_type)
    return body


def _admin_error(request: Request, status: int, code: str, message: str, resource: str, request_id: str) -> bytes:
    body = {"Code": code, "Message": message, "Resource": resource, "RequestId": request_id, "HostId": ""}
    return _send(request, status, "application/json", json.dumps(body).encode())


def _sts_error(request: Request, status: int, code: str, message: str, request_id: str) -> bytes:
    kind = "Receiver" if status >= 500 else "Sender"
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{_STS_NS}"><Error><Type>{kind}</Type>'
           f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
           f"<RequestId>{request_id}</RequestId></ErrorResponse>")
    return _send(request, status, "text/xml", xml.encode())
