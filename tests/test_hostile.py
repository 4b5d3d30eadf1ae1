"""
Hostile input on the request path.

 - hypothesis on L{stsd.http.wire.parse_request}: random bytes, odd content
   types, duplicated, huge and invalid-UTF-8 parameters, random policies;
 - hypothesis on the Klein resource in memory (C{StubTreq}): random methods,
   paths, headers and bodies, and JWT attacks against a stand-in exchange
   that verifies tokens the way the API server would;
 - hypothesis on raw bytes through L{STSSite}'s channel (C{StringTransport});
 - slow clients: the per-request deadline of L{STSSite}, in memory with a
   L{MemoryReactorClock}, and once over loopback with 200 trickling
   connections.

Every answer must be STS XML with a 4xx status (or the designed 200), with
C{x-amz-request-id} equal to the body's RequestId, without a traceback, and
never with credentials for a token the stand-in would not accept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import json
from collections import Counter
from datetime import datetime, timezone
from functools import cache
from typing import Any
from urllib.parse import quote, quote_plus, urlencode
from xml.etree import ElementTree

import jwt
import pytest
import treq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.trial.unittest import SynchronousTestCase, TestCase

from stsd import errors

from stsd.core.exchange import AssumeRoleRequest, Issued
from stsd.http import wire
from stsd.http.channel import STSSite
from stsd.http.resource import STSResource
from stsd.model import Grant, Identity
from stsd.upstream.minio import MINIO_POLICY_LIMIT
from tests.test_wire import TOKEN
from tests._trial import cases, expand, pytest_twisted_functions

NS = {"sts": wire.STS_NAMESPACE}
ERROR_ROOT = f"{{{wire.STS_NAMESPACE}}}ErrorResponse"
SUCCESS_ROOT = f"{{{wire.STS_NAMESPACE}}}AssumeRoleWithWebIdentityResponse"
SECRET = "wJalrXUtnFEMI-stand-in-secret"

# Hypothesis examples run per test, reported with --hypothesis-show-statistics
# as well; kept here so a pytest run can print them (tests/conftest.py's summary).
EXAMPLES: Counter[str] = Counter()


def _count(name: str) -> None:
    EXAMPLES[name] += 1


# ---------------------------------------------------------------------------
# The stand-in exchanges


class StandInExchange:
    """Issues credentials for any request that reaches it (the designed 200)."""

    audience = "sts.min.io"

    def __init__(self) -> None:
        self.calls = 0

    def check(self, request: AssumeRoleRequest) -> None:
        pass

    async def exchange(self, namespace: str, request: AssumeRoleRequest,
                       *rest: Any) -> Issued:
        self.calls += 1
        self.check(request)
        return Issued(
            wire.IssuedCredentials("AKIDSTANDIN", SECRET, "SESSION",
                                   datetime(2026, 11, 30, 13, tzinfo=timezone.utc)),
            Identity("apps", "photo-sa", "pod-1"), Grant(("b",), ("readwrite",)),
            f"{namespace}/storage", ("readwrite",), 64,
        )


ISSUER = "https://kubernetes.default.svc.cluster.local"
NOW = 1_800_000_000  # the stand-in API server's clock


@cache
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem() -> bytes:
    return signing_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class VerifyingExchange(StandInExchange):
    """
    Authenticates like kube-apiserver would: RS256 only, signed by the
    cluster key, issuer and audience right, exp/iat/nbf/sub and the
    C{kubernetes.io} claims present and current; else AccessDenied.
    """

    def check(self, request: AssumeRoleRequest) -> None:
        try:
            claims = jwt.decode(
                request.token, signing_key().public_key(), algorithms=["RS256"],
                audience="sts.min.io", issuer=ISSUER,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"],
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise errors.access_denied("the token is not authenticated") from None
        if not (claims["nbf"] <= NOW < claims["exp"]) or not isinstance(
                claims.get("kubernetes.io"), dict):
            raise errors.access_denied("the token is not authenticated")


# ---------------------------------------------------------------------------
# Response oracles


def assert_sts_error(status: int, headers: dict[str, list[str]], body: bytes,
                     *, head: bool = False) -> str:
    """Check an error answer; return its Code ('' for HEAD)."""
    assert 400 <= status < 500, (status, body[:300])
    request_ids = headers.get("x-amz-request-id", [])
    assert len(request_ids) == 1 and request_ids[0], headers
    assert b"Traceback" not in body
    assert b"SecretAccessKey" not in body
    if head:
        assert body == b""
        return ""
    assert headers.get("content-type") == ["text/xml"], headers
    root = ElementTree.fromstring(body)
    assert root.tag == ERROR_ROOT, body[:300]
    code = root.findtext("sts:Error/sts:Code", namespaces=NS)
    assert code, body[:300]
    assert root.findtext("sts:Error/sts:Type", namespaces=NS) == "Sender"
    assert root.findtext("sts:RequestId", namespaces=NS) == request_ids[0]
    return code


def assert_sts_success(headers: dict[str, list[str]], body: bytes) -> None:
    root = ElementTree.fromstring(body)
    assert root.tag == SUCCESS_ROOT
    assert root.findtext(".//sts:SecretAccessKey", namespaces=NS) == SECRET
    assert root.findtext(".//sts:RequestId", namespaces=NS) == headers["x-amz-request-id"][0]


def assert_refused_safely(status: int, body: bytes) -> None:
    """The oracle for the known defects below: still a 4xx, no traceback, no secret."""
    assert 400 <= status < 500, (status, body[:300])
    assert b"Traceback" not in body
    assert b"SecretAccessKey" not in body


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO",
           "PROPFIND"]


def result_of(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has no result yet"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# ---------------------------------------------------------------------------
# Strategies

KNOWN_PARAMS = ["Action", "Version", "WebIdentityToken", "DurationSeconds", "Policy",
                "RoleArn", "RoleSessionName", "ProviderId", "PolicyArns.member.1.arn"]
GOOD_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}]})
ODD_CONTENT_TYPES = [
    wire.FORM_CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8",
    "APPLICATION/X-WWW-FORM-URLENCODED", " application/x-www-form-urlencoded ;",
    "application/x-www-form-urlencoded; charset=latin-1", "application/x-www-form-urlencodedX",
    "application/x-www-form-urlencoded\x00", "application/json", "text/xml", "text/plain",
    "multipart/form-data; boundary=x", "multipart/form-data", "*/*", "", ";", ";;;=",
    "application/x-www-form-urlencoded, application/json", "text/plain; charset=\u00ff",
    "application/\u0000", "a" * 5000,
]
content_types = st.one_of(st.none(), st.sampled_from(ODD_CONTENT_TYPES), st.text(max_size=60))


def huge(char: str = "A") -> st.SearchStrategy[str]:
    return st.sampled_from([1000, 19_999, 20_000, 20_001, 65_536, 70_000]).map(
        lambda n: char * n)


values = st.one_of(
    st.sampled_from([
        "AssumeRoleWithWebIdentity", "AssumeRole", "2011-06-15", "2010-01-01", TOKEN,
        TOKEN + "A", TOKEN.upper(), "a.b.c", "..", "e30.e30.e30", "900", "3600", "43200",
        "43201", "899", "-900", "1e4", "0x384", "\u0663\u0666\u0660\u0660",
        "\uff13\uff16\uff10\uff10",
        " 3600", "3600 ", "9" * 30, "", GOOD_POLICY, "{}", "[]", "null", '{"Statement": []}',
        '{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}',
        "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "1" * 5000,
        "\ud800", "\x00", "a\r\nb", "%", "%%", "%zz", "+",
    ]),
    st.text(max_size=40),
    huge("A"),
    huge("%"),
)
keys = st.one_of(st.sampled_from(KNOWN_PARAMS), st.sampled_from(KNOWN_PARAMS),
                 st.text(max_size=20),
                 st.sampled_from(["action", "VERSION", " Action", "Action\x00"]))


@st.composite
def encoded(draw: st.DrawFn, text: str) -> bytes:
    """One form field part, encoded in a random (possibly broken) way."""
    # Mostly well-formed, so that the checks after decoding are reached too.
    how = draw(st.sampled_from(["plus"] * 12 + ["quote", "raw", "latin1", "splice", "broken-pct"]))
    if how == "plus":
        return quote_plus(text, errors="surrogatepass").encode()
    if how == "quote":
        return quote(text, safe="", errors="surrogatepass").encode()
    if how == "raw":
        return text.encode("utf-8", "surrogatepass")
    if how == "latin1":  # percent-escaped latin-1: invalid UTF-8 after decoding
        return quote(text.encode("latin-1", "replace"), safe="").encode()
    raw = quote_plus(text, errors="surrogatepass").encode()
    cut = draw(st.integers(0, len(raw)))
    junk = draw(st.binary(min_size=1, max_size=8)) if how == "splice" else draw(
        st.sampled_from([b"%", b"%f", b"%ff", b"%C3", b"%c3%28", b"%ED%A0%80", b"%00"]))
    return raw[:cut] + junk + raw[cut:]


@st.composite
def forms(draw: st.DrawFn) -> dict[str, Any]:
    """A request's parameters split between body and query, duplicates and all."""
    base = draw(st.booleans())
    pairs: list[tuple[str, str]] = []
    if base:  # start from a valid request so deeper checks are reached
        pairs = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"),
                 ("WebIdentityToken", TOKEN)]
    pairs += draw(st.lists(st.tuples(keys, values), max_size=5))
    if pairs and draw(st.booleans()):  # duplicate one, same or different value
        key, value = draw(st.sampled_from(pairs))
        pairs.append((key, draw(st.one_of(st.just(value), values))))
    pairs = draw(st.permutations(pairs))
    body_parts: list[bytes] = []
    query_parts: list[bytes] = []
    for key, value in pairs:
        part = draw(encoded(key)) + draw(st.sampled_from([b"=", b"=", b"", b"=="])) + draw(
            encoded(value))
        (body_parts if draw(st.booleans()) else query_parts).append(part)
    if draw(st.integers(0, 15)) == 0:  # about parse_qsl's field limit (100)
        many = [b"f=x"] * draw(st.sampled_from([97, 98, 100, 101, 500]))
        (body_parts if draw(st.booleans()) else query_parts).extend(many)
    sep = draw(st.sampled_from([b"&", b"&", b";", b"&&"]))
    return {
        "body": sep.join(body_parts),
        "query": sep.join(query_parts),
        "content_type": draw(st.one_of(st.just(wire.FORM_CONTENT_TYPE), content_types)),
        "tokens": [v for k, v in pairs if k == "WebIdentityToken" and len(v) >= 16],
    }


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one parameter given a hostile value: every rule is reached."""
    params = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
              "WebIdentityToken": TOKEN}
    name = draw(st.sampled_from(KNOWN_PARAMS))
    params[name] = draw(values)
    body: dict[str, str] = {}
    query: dict[str, str] = {}
    for key, value in params.items():
        (body if draw(st.booleans()) else query)[key] = value
    return {
        "body": urlencode(body, errors="surrogatepass").encode(),
        "query": urlencode(query, errors="surrogatepass").encode(),
        "content_type": wire.FORM_CONTENT_TYPE,
        "tokens": [params["WebIdentityToken"]] if len(params["WebIdentityToken"]) >= 16 else [],
    }


def parse(body: bytes, query: bytes, content_type: str | None
          ) -> tuple[AssumeRoleRequest | None, errors.STSError | None]:
    """parse_request's only allowed outcomes: a request, or an STSError 400."""
    try:
        request = wire.parse_request(content_type=content_type, body=body, query=query,
                                     default_duration=3600, max_duration=43200)
    except errors.STSError as e:
        assert e.status == 400, e
        assert e.code in {"InvalidParameterValue", "MissingParameter", "InvalidIdentityToken",
                          "MalformedPolicyDocument", "PackedPolicyTooLarge"}, e
        assert e.type == "Sender"
        event(f"refused: {e.code}")
        return None, e
    assert isinstance(request, AssumeRoleRequest)
    assert 0 < len(request.token) <= wire.MAX_TOKEN_CHARS
    assert 900 <= request.duration_seconds <= 43200
    assert len(body) <= wire.MAX_BODY_BYTES
    if body:
        assert (content_type or "").split(";")[0].strip().lower() == wire.FORM_CONTENT_TYPE
    event("accepted")
    return request, None


# ---------------------------------------------------------------------------
# 1. parse_request


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.text(max_size=12),
                        st.sampled_from(["Allow", "Deny", "s3:*", "s3:GetObject", "*",
                                         "arn:aws:s3:::b/*", "2012-10-17", "2008-10-17"]))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(
        ["Effect", "Action", "NotAction", "Resource", "NotResource", "Condition", "Sid",
         "Principal", "StringEquals", "s3:prefix", "Statement", "Version"]), st.text(max_size=8)),
        inner, max_size=4)), max_leaves=10)
statements = st.fixed_dictionaries(
    {"Effect": st.one_of(st.sampled_from(["Allow", "Deny"]), json_values)},
    optional={"Action": json_values, "NotAction": json_values, "Resource": json_values,
              "NotResource": json_values, "Condition": json_values, "Sid": json_values})
policies = st.fixed_dictionaries(
    {"Statement": st.one_of(st.lists(statements, max_size=3), statements, json_values)},
    optional={"Version": st.one_of(st.sampled_from(["2012-10-17", "2008-10-17"]), json_values),
              "Id": json_values})


# ---------------------------------------------------------------------------
# 2. The Klein resource in memory


@cache
def stub_for(kind: str) -> tuple[StubTreq, StandInExchange]:
    exchange = VerifyingExchange() if kind == "verifying" else StandInExchange()
    resource = STSResource(
        exchange, default_duration=3600, max_duration=43200,  # type: ignore[arg-type]
        clock=Clock(), is_ready=lambda: True)
    return StubTreq(resource.resource()), exchange


def stub_request(kind: str, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, list[str]], bytes]:
    stub, _ = stub_for(kind)
    d = stub.request(method, "https://sts.test" + path, data=body, headers=headers or {})
    stub.flush()
    response = result_of(d)
    content = result_of(treq.content(response))
    found = {k.decode().lower(): [v.decode("latin-1") for v in vs]
             for k, vs in response.headers.getAllRawHeaders()}
    return response.code, found, content


segments = st.one_of(
    st.sampled_from(["tenant-1", "a", "a" * 63, "a" * 64, "a" * 300, "Tenant", "..", ".", "%2e%2e",
                     "a%2Fb", "a%2fb", "a/b", "a/../b", "%00", "a%00", "%ff", "tenant-1%0a", "",
                     "-a", "a-", "a.b", "\u00fc", "\u2028", "%C3%BC", "tenant-1/", "/tenant-1",
                     "tenant-1;x", "tenant-1%3Bx", "a\\b", "%5C", "~", "*", "%25", "%"]),
    st.text(max_size=30).map(lambda t: quote(t, safe="/%;.~", errors="surrogatepass")),
    st.text(alphabet="abc-./%2F0", max_size=300),
)
paths = st.one_of(
    st.builds(lambda s: "/sts/" + s, segments),
    st.builds(lambda s: "/sts/" + s, segments),
    st.builds(lambda a, b: a + b, st.sampled_from(["/", "//sts/", "/STS/", "/sts", "/sts//",
                                                   "/sts/../sts/", "/%73ts/", "/healthz/",
                                                   "/x/", "/sts/%2e%2e/"]), segments),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
extra_headers = st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "Content-Encoding", "Accept", "Authorization",
                     "X-Amz-Date", "Expect", "Cookie", "Range", "If-Match", "Accept-Encoding"]),
    header_values, max_size=3)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none", "bytes", "form", "form", "valid", "valid", "big"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "big":
        return b"A=" + b"x" * draw(st.sampled_from([65_534, 65_535, 70_000]))
    if kind == "valid":
        return urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "WebIdentityToken": TOKEN}).encode()
    # Twisted's default Request (StubTreq's Site) spools a body of 100,000 bytes or
    # more to a temporary file, which STSResource cannot read: see
    # test_resource_large_body_from_default_site; BoundedRequest never does.
    return draw(forms())["body"][:99_999]


# ---------------------------------------------------------------------------
# 3. Tokens against a stand-in exchange that verifies like the API server


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def good_claims() -> dict[str, Any]:
    return {"iss": ISSUER, "sub": "system:serviceaccount:apps:photo-sa", "aud": ["sts.min.io"],
            "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10,
            "kubernetes.io": {"namespace": "apps",
                              "serviceaccount": {"name": "photo-sa", "uid": "u"}}}


def rs256(claims: dict[str, Any], header: dict[str, Any] | None = None,
          key: rsa.RSAPrivateKey | None = None) -> str:
    return jwt.encode(claims, key or signing_key(), algorithm="RS256",
                      headers={"kid": "k1", **(header or {})})


def exact_length(make: Any, length: int) -> str:
    """make(pad, extra) -> token; find pads so the token is exactly *length* characters."""
    for extra in range(4):
        n = max(0, (length - len(make(0, extra))) * 3 // 4 - 8)
        while True:
            token = make(n, extra)
            if len(token) == length:
                return token
            if len(token) > length:
                break
            n += 1
    raise AssertionError(f"no token of {length} characters")


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


ATTACKS = ["alg-none", "hs256-public-pem", "hs256-public-der", "hs256-empty", "missing-claims",
           "wrong-key", "wrong-audience", "wrong-issuer", "expired", "not-yet-valid", "tampered",
           "alg-swap", "embedded-jwk", "no-signature", "garbage", "non-object-header"]


@st.composite
def hostile_tokens(draw: st.DrawFn) -> str:
    attack = draw(st.sampled_from(ATTACKS))
    event(f"attack: {attack}")
    claims = good_claims()
    if attack == "alg-none":
        alg = draw(st.sampled_from(["none", "None", "NONE", "nOnE"]))
        signature = draw(st.sampled_from(["", "AAAA", rs256(claims).split(".")[2]]))
        return f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims)}.{signature}"
    if attack.startswith("hs256"):
        secret = {"hs256-public-pem": public_pem(),
                  "hs256-public-der": signing_key().public_key().public_bytes(
                      serialization.Encoding.DER,
                      serialization.PublicFormat.SubjectPublicKeyInfo),
                  "hs256-empty": b""}[attack]
        return hmac_token({"alg": draw(st.sampled_from(["HS256", "HS384", "HS512"])),
                           "kid": "k1"}, claims, secret)
    if attack == "missing-claims":
        gone = draw(st.lists(st.sampled_from(list(claims)), min_size=1, unique=True))
        return rs256({k: v for k, v in claims.items() if k not in gone})
    if attack == "wrong-key":
        return rs256(claims, key=attacker_key())
    if attack == "wrong-audience":
        return rs256({**claims, "aud": draw(st.sampled_from(
            [["kubernetes"], "sts.min.io.evil", [], ["STS.MIN.IO"]]))})
    if attack == "wrong-issuer":
        return rs256({**claims, "iss": "https://evil.example"})
    if attack == "expired":
        return rs256({**claims, "exp": NOW - draw(st.integers(0, 10**6))})
    if attack == "not-yet-valid":
        return rs256({**claims, "nbf": NOW + draw(st.integers(1, 10**6))})
    if attack == "tampered":
        header, _, signature = rs256(claims).split(".")
        evil = {**claims, "sub": "system:serviceaccount:kube-system:admin"}
        return f"{header}.{b64json(evil)}.{signature}"
    if attack == "alg-swap":
        header, payload, signature = rs256(claims).split(".")
        alg = draw(st.sampled_from(["RS512", "PS256", "ES256", "EdDSA", "rs256", "RS256 "]))
        return f"{b64json({'alg': alg, 'kid': 'k1'})}.{payload}.{signature}"
    if attack == "embedded-jwk":
        public = attacker_key().public_key().public_numbers()
        jwk = {"kty": "RSA", "n": b64(public.n.to_bytes(256, "big")),
               "e": b64(public.e.to_bytes(3, "big"))}
        return rs256(claims, header={"jwk": jwk, "jku": "https://evil.example/jwks"},
                     key=attacker_key())
    if attack == "no-signature":
        return rs256(claims).rsplit(".", 1)[0] + "."
    if attack == "non-object-header":
        return f"{b64json(draw(json_values))}.{b64json(claims)}.c2ln"
    parts = draw(st.lists(st.text(alphabet="ABCxyz019-_=.", max_size=30), min_size=1,
                          max_size=5))
    return ".".join(parts)


def pad_token(token: str, length: int) -> str:
    """The same attack made *length* characters long (a padding claim or suffix)."""
    parts = token.split(".")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        assert len(parts) == 3 and isinstance(header, dict) and isinstance(claims, dict)
    except Exception:
        return (token + "A" * length)[:length]

    def make(n: int, extra: int) -> str:
        h = {**header, "x": "y" * extra}
        c = {**claims, "pad": "p" * n}
        return f"{b64json(h)}.{b64json(c)}.{parts[2]}"

    return exact_length(make, length)


def ask_with_token(token: str, where: str) -> tuple[int, dict[str, list[str]], bytes]:
    """
    POST the token in a form body (through StubTreq), or in the query string
    like minio-py: through STSSite in memory, as StubTreq's own Site keeps
    Twisted's 16 KiB request-line limit and drops a 20,000-character token.
    """
    params = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                        "WebIdentityToken": token})
    if where == "body":
        return stub_request("verifying", "POST", "/sts/tenant-1", body=params.encode(),
                            headers={"Content-Type": wire.FORM_CONTENT_TYPE})
    clock = MemoryReactorClock()
    site, _ = make_site(clock, exchange=VerifyingExchange())
    protocol, transport = connect(site)
    protocol.dataReceived(request_bytes(b"POST", b"/sts/tenant-1?" + params.encode(),
                                        [(b"Host", b"sts.test")], b""))
    [answer] = responses(transport.value(), [b"POST"])
    return answer


# ---------------------------------------------------------------------------
# 4. Raw bytes through STSSite's channel


def make_site(clock: MemoryReactorClock, request_timeout: float | None = 10.0,
              exchange: Any = None) -> tuple[STSSite, Any]:
    exchange = exchange or StandInExchange()
    resource = STSResource(exchange, default_duration=3600, max_duration=43200,
                           clock=clock, is_ready=lambda: True)
    return STSSite(resource.resource(), reactor=clock, request_timeout=request_timeout), exchange


def connect(site: STSSite) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 50000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 50000))
    protocol.makeConnection(transport)
    return protocol, transport


class _Stream(io.BufferedReader):
    def close(self) -> None:
        pass  # HTTPResponse closes its file after each response: keep reading


class _Sock:
    def __init__(self, stream: io.BufferedReader) -> None:
        self.stream = stream

    def makefile(self, mode: str) -> io.BufferedReader:
        return self.stream


def responses(data: bytes, methods: list[bytes]) -> list[tuple[int, dict[str, list[str]], bytes]]:
    """
    Every HTTP response in *data*; *methods* name the requests', as the
    answer to a HEAD has no body (unless the channel itself refused it).
    """
    found = []
    position = 0
    while position < len(data):
        method = methods[len(found)] if len(found) < len(methods) else b"POST"
        for guess in [method, b"POST"] if method == b"HEAD" else [method]:
            stream = _Stream(io.BytesIO(data[position:]))  # type: ignore[arg-type]
            response = http.client.HTTPResponse(
                _Sock(stream), method=guess.decode("latin-1"))  # type: ignore[arg-type]
            response.begin()
            body = response.read()
            used = stream.tell()
            if used == len(data) - position or data[position + used:].startswith(b"HTTP/"):
                break
        assert used > 0
        position += used
        headers: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            headers.setdefault(name.lower(), []).append(value)
        found.append((response.status, headers, body))
    return found


def request_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                  body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    head = b"%s %s %s\r\n" % (method, target, version)
    head += b"".join(b"%s: %s\r\n" % h for h in headers)
    return head + b"\r\n" + body


raw_targets = st.one_of(
    st.builds(lambda s: b"/sts/" + s, st.sampled_from(
        [b"tenant-1", b"..", b"%2e%2e", b"a%2Fb", b"%00", b"a" * 300, b"%ff", b"T", b"",
         b"tenant-1?" + urlencode({"Action": "AssumeRoleWithWebIdentity",
                                   "Version": "2011-06-15", "WebIdentityToken": TOKEN}).encode(),
         b"tenant-1?%ff=%fe", b"a" * 40_000])),
    st.binary(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(
        lambda t: t.encode()),
)
raw_headers = st.lists(st.one_of(
    st.tuples(st.sampled_from([b"X-Forwarded-For", b"Accept", b"Expect", b"Host"]),
              st.sampled_from([b"10.0.0.1", b"*/*", b"100-continue", b"other.test", b""])),
    st.tuples(st.sampled_from([b"Content-Type"]), st.sampled_from(
        [b"application/x-www-form-urlencoded", b"text/plain", b"multipart/form-data; boundary=b",
         b"\xff\xfe"])),
    st.tuples(st.sampled_from([b"Content-Length"]), st.sampled_from(
        [b"0", b"5", b"-1", b"abc", b"99999999999999999999", b"70000", b" 3", b"1,1"])),
    st.tuples(st.sampled_from([b"Transfer-Encoding"]), st.sampled_from(
        [b"chunked", b"gzip", b"chunked, chunked", b"identity"])),
    st.tuples(st.sampled_from([b"Connection"]), st.sampled_from([b"close", b"keep-alive"])),
    st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=20)),
    st.tuples(st.sampled_from([b"X-Big"]), st.sampled_from([b"v" * 20_000, b"v" * 40_000])),
), max_size=3)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=400))
    method = draw(st.sampled_from(
        [b"POST"] * 8 + [m.encode() for m in METHODS] + [b"FOO", b"post"]))
    body = draw(st.sampled_from([b"binary", VALID_BODY, VALID_BODY, b"5\r\nhello\r\n0\r\n\r\n"]))
    if body == b"binary":
        body = draw(st.binary(max_size=200))
    headers = [(b"Host", b"sts.test")]
    if draw(st.booleans()):
        headers += draw(raw_headers)
    if draw(st.booleans()):
        headers.append((b"Content-Type", b"application/x-www-form-urlencoded"))
    if draw(st.integers(0, 3)):
        headers.append((b"Content-Length", str(len(body)).encode()))
    version = draw(st.sampled_from(
        [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))
    target = draw(st.one_of(st.just(b"/sts/tenant-1"), st.just(b"/sts/tenant-1"), raw_targets))
    data = request_bytes(method, target, headers, body, version)
    return data + draw(st.sampled_from([b"", b"", b"GARBAGE\r\n", data]))


# ---------------------------------------------------------------------------
# 5. Slow clients, in memory

VALID_BODY = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                        "WebIdentityToken": TOKEN}).encode()


def valid_request(connection: bytes = b"keep-alive") -> bytes:
    return request_bytes(b"POST", b"/sts/tenant-1", [
        (b"Host", b"sts.test"), (b"Content-Type", wire.FORM_CONTENT_TYPE.encode()),
        (b"Content-Length", str(len(VALID_BODY)).encode()), (b"Connection", connection),
    ], VALID_BODY)


def trickle(clock: MemoryReactorClock, protocol: Any, transport: StringTransport,
            data: bytes, every: float = 1.0) -> float:
    """Send *data* a byte at a time; return when the connection was closed, or -1."""
    start = clock.seconds()
    for i in range(len(data)):
        if transport.disconnecting:
            return clock.seconds() - start
        protocol.dataReceived(data[i:i + 1])
        clock.advance(every)
    return -1 if not transport.disconnecting else clock.seconds() - start


LONG_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
     "Resource": [f"arn:aws:s3:::bucket-{i:03d}/*" for i in range(64)]}]})  # 1975 chars


# ---------------------------------------------------------------------------
# 6. Slow clients over loopback


class _Client(Protocol):
    """A loopback client: idle, trickling *trickle* a byte every 50 ms, or quick."""

    def __init__(self, trickle: bytes = b"", at_once: bytes = b"") -> None:
        self.trickle = trickle
        self.at_once = at_once
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._loop: LoopingCall | None = None

    def connectionMade(self) -> None:
        if self.at_once:
            self.transport.write(self.at_once)
        if self.trickle:
            self._loop = LoopingCall(self._send)
            self._loop.clock = global_reactor
            self._loop.start(0.05)

    def _send(self) -> None:
        if self.trickle:
            self.transport.write(self.trickle[:1])
            self.trickle = self.trickle[1:]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.closed.callback(None)


def _sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    global_reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d


class SlowClientsTests(TestCase):
    async def test_many_trickling_connections_do_not_starve_others(self) -> None:
        """
        Real loopback connections; the request deadlines run on a L{Clock}, so
        what is asserted does not depend on how loaded the machine is.
        """
        timeout = 10.0
        deadlines = Clock()
        resource = STSResource(StandInExchange(), default_duration=3600,  # type: ignore[arg-type]
                               max_duration=43200, clock=global_reactor, is_ready=lambda: True)
        site = STSSite(resource.resource(), reactor=deadlines, request_timeout=timeout)
        port = global_reactor.listenTCP(  # type: ignore[attr-defined]
            0, site, backlog=512, interface="127.0.0.1")
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", port.getHost().port)
        # 100 idle connections and 100 sending a request a byte every 50 ms (which
        # takes 6 s, and keeps Twisted's idle timeout off all along).
        slow = [_Client(trickle=valid_request() if i % 2 else b"") for i in range(200)]
        fresh = _Client(at_once=valid_request(connection=b"close"))
        try:
            await gatherResults([connectProtocol(endpoint, client) for client in slow])
            await _sleep(0.05)
            await connectProtocol(endpoint, fresh)
            await fresh.closed
            # Answered while every slow connection is open and no trickled request
            # is whole yet: the slow ones hold nothing up.
            assert not any(client.closed.called for client in slow)
            assert all(client.trickle for client in slow if client._loop is not None)
            [(status, headers, body)] = responses(fresh.received, [b"POST"])
            assert status == 200
            assert_sts_success(headers, body)
            # Every slow connection is closed by the server at its deadline, not
            # before: the tricklers with a partial request answered 408.
            deadlines.advance(timeout - 0.5)
            await _sleep(0.2)
            assert not any(client.closed.called for client in slow)
            deadlines.advance(0.5)
            await gatherResults([client.closed for client in slow])
            for client in slow:
                if client._loop is not None:  # a trickler: a partial request, answered 408
                    assert client.trickle, "the request was cut off, not completed"
                    [(status, headers, body)] = responses(client.received, [b"POST"])
                    assert assert_sts_error(status, headers, body) == "RequestTimeout"
                else:
                    assert client.received == b""
        finally:
            for client in [*slow, fresh]:
                if client.transport is not None and not client.closed.called:
                    client.transport.abortConnection()
            await port.stopListening()


@expand
class HostileTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(body=st.one_of(st.binary(max_size=200), st.builds(
               lambda b, n: (b * n)[:n], st.binary(min_size=1, max_size=8),
               st.sampled_from([65_535, 65_536, 65_537, 100_000]))),
           query=st.binary(max_size=200), content_type=content_types)
    def test_parse_request_random_bytes(self, body: bytes, query: bytes, content_type: str | None) -> None:
        _count("parse_request random bytes")
        parse(body, query, content_type)

    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
    @given(form=st.one_of(forms(), mutants()))
    def test_parse_request_hostile_forms(self, form: dict[str, Any]) -> None:
        _count("parse_request hostile forms")
        _, error = parse(form["body"], form["query"], form["content_type"])
        if error is not None:  # the token is a bearer credential: never echoed
            for token in form["tokens"]:
                assert token not in error.message

    @settings(max_examples=500, deadline=None)
    @given(policy=st.one_of(policies, json_values), spaced=st.booleans())
    def test_parse_request_random_policies(self, policy: Any, spaced: bool) -> None:
        _count("parse_request random policies")
        text = json.dumps(policy, indent=1 if spaced else None)
        body = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "WebIdentityToken": TOKEN, "Policy": text}).encode()
        request, error = parse(body, b"", wire.FORM_CONTENT_TYPE)
        if error is not None:
            assert error.code == "MalformedPolicyDocument" or (
                error.code == "PackedPolicyTooLarge" and len(text) > MINIO_POLICY_LIMIT), error
        else:
            assert request is not None and request.policy is not None

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
    @given(method=st.one_of(st.just("POST"), st.sampled_from(METHODS)),
           path=st.one_of(st.just("/sts/tenant-1"), paths), body=request_bodies(),
           content_type=st.one_of(st.just(wire.FORM_CONTENT_TYPE), st.none(),
                                  st.sampled_from(ODD_CONTENT_TYPES[:-1])),
           headers=extra_headers, query=st.one_of(st.just(""), st.builds(
               lambda f: "?" + f["query"].decode("latin-1"), forms())))
    def test_resource_hostile_requests(self, method: str, path: str, body: bytes | None,
                                       content_type: str | None, headers: dict[str, str],
                                       query: str) -> None:
        _count("resource hostile requests")
        # treq wants a URL (the bytes stay hostile); StubTreq's own Site drops a request
        # line over 16 KiB (huge query strings go through STSSite in the raw tests).
        query = quote(query, safe="?&=%+;/:,")[:8000]
        if content_type is not None:
            headers = {**headers, "Content-Type": content_type.replace("\x00", "")}
        _, exchange = stub_for("plain")
        before = exchange.calls
        status, found, content = stub_request("plain", method, path + query, body=body,
                                              headers=headers)
        event(f"status {status}")
        if method == "POST" and body and "multipart" in (content_type or "").lower():
            # StubTreq serves the resource from Twisted's default Site, which parses
            # multipart bodies itself and answers a bad one with a bare 400; STSSite
            # turns that off (test_multipart_body_through_the_site).
            _count("resource hostile requests: multipart body (default Site)")
            assert_refused_safely(status, content)
            assert exchange.calls == before
            return
        if status == 200:
            if path in ("/healthz",):
                return
            # The designed 200: a valid request reached the stand-in exchange.
            assert exchange.calls == before + 1
            assert method == "POST" and wire.is_dns_label(path[len("/sts/"):])
            assert_sts_success(found, content)
        else:
            assert exchange.calls == before, "refused after reaching the exchange"
            assert_sts_error(status, found, content, head=method == "HEAD")

    @cases("method", ["FOO", "PROPFIND", "M-SEARCH"])
    def test_resource_unknown_methods_refused_safely(self, method: str) -> None:
        status, _, content = stub_request("plain", method, "/sts/tenant-1")
        assert_refused_safely(status, content)

    def test_resource_unknown_method_is_sts_xml(self) -> None:
        status, found, content = stub_request("plain", "PROPFIND", "/sts/tenant-1")
        assert_sts_error(status, found, content)

    def test_resource_non_utf8_path_is_sts_xml(self) -> None:
        status, found, content = stub_request("plain", "POST", "/sts/%ff")
        assert_sts_error(status, found, content)

    def test_resource_large_body_from_default_site(self) -> None:
        status, found, content = stub_request(
            "plain", "POST", "/sts/tenant-1", body=b"A=" + b"x" * 100_000,
            headers={"Content-Type": wire.FORM_CONTENT_TYPE})
        assert assert_sts_error(status, found, content) == "InvalidParameterValue"

    def test_large_body_through_the_site(self) -> None:
        # Through STSSite the same request is refused as it should be.
        for size in (65_537, 100_000, 1_000_000):
            clock = MemoryReactorClock()
            site, exchange = make_site(clock)
            protocol, transport = connect(site)
            body = b"A=" + b"x" * size
            protocol.dataReceived(request_bytes(b"POST", b"/sts/tenant-1", [
                (b"Host", b"sts.test"), (b"Content-Type", wire.FORM_CONTENT_TYPE.encode()),
                (b"Content-Length", str(len(body)).encode())], body))
            [(status, headers, content)] = responses(transport.value(), [b"POST"])
            assert assert_sts_error(status, headers, content) == "InvalidParameterValue"
            assert exchange.calls == 0

    def test_resource_newline_in_path_is_sts_xml(self) -> None:
        status, found, content = stub_request("plain", "POST", "/sts/tenant-1%0A")
        assert_sts_error(status, found, content)

    @cases("path", ["/sts/%ff", "/sts/tenant-1%0A", "/%C0%AF", "/sts/a%0Ab"])
    def test_resource_unroutable_paths_are_sts_xml(self, path: str) -> None:
        status, found, content = stub_request("plain", "POST", path)
        assert assert_sts_error(status, found, content) == "InvalidParameterValue"

    @settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(token=hostile_tokens(), where=st.sampled_from(["body", "query"]),
           length=st.sampled_from([None, None, None, 20_000, 20_001]))
    def test_hostile_tokens_get_no_credentials(self, token: str, where: str, length: int | None) -> None:
        _count("hostile tokens")
        if length is not None:
            token = pad_token(token, length)
            assert len(token) == length
        status, found, content = ask_with_token(token, where)
        code = assert_sts_error(status, found, content)
        event(f"{code} {status}")
        assert (code, status) in {("AccessDenied", 403), ("InvalidIdentityToken", 400)} or (
            (code, token) == ("MissingParameter", ""))
        if length == 20_001:
            assert code == "InvalidIdentityToken"
        assert len(token) < 16 or token.encode() not in content  # short garbage may occur by chance

    def test_verifying_exchange_accepts_the_real_thing(self) -> None:
        # The control: the stand-in does issue for a valid token, even one of
        # exactly 20,000 characters (AWS's limit is inclusive) in the query
        # string, so "no credentials" above is the verification's doing.
        valid = rs256(good_claims())
        longest = exact_length(
            lambda n, extra: rs256({**good_claims(), "pad": "p" * n}, header={"x": "y" * extra}),
            20_000)
        for token in (valid, longest):
            for where in ("body", "query"):
                status, found, content = ask_with_token(token, where)
                assert status == 200, content
                assert_sts_success(found, content)
        too_long = exact_length(
            lambda n, extra: rs256({**good_claims(), "pad": "p" * n}, header={"x": "y" * extra}),
            20_001)
        for where in ("body", "query"):
            status, found, content = ask_with_token(too_long, where)
            assert assert_sts_error(status, found, content) == "InvalidIdentityToken"

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
    @given(data=raw_requests(), chunk=st.sampled_from([1, 7, 100, 100_000]))
    def test_raw_bytes_through_the_site(self, data: bytes, chunk: int) -> None:
        _count("raw bytes through the site")
        method = data.split(b" ", 1)[0]
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        chunk = max(chunk, len(data) // 300)  # byte by byte only for small requests
        for i in range(0, len(data), chunk):
            if transport.disconnecting:
                break
            protocol.dataReceived(data[i:i + chunk])
        clock.advance(11)  # past the deadline: whatever is left unanswered is cut off
        assert transport.disconnecting
        written = transport.value()
        assert b"Traceback" not in written
        for status, headers, body in responses(written, [method, method]):
            event(f"status {status}")
            if status == 200 and b"SecretAccessKey" in body:
                assert_sts_success(headers, body)
            elif status == 200:  # /healthz, /readyz
                assert body in (b"ok\n", b"ready\n", b"")
            else:
                assert_sts_error(status, headers, body, head=method == b"HEAD" and not body)
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert clock.getDelayedCalls() == []

    def test_headers_trickling_are_cut_off_at_the_deadline(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        head = valid_request().split(b"\r\n\r\n")[0] + b"\r\n"
        # A byte a second: Twisted's idle timeout (60 s, reset by every byte)
        # would never fire; the deadline closes the connection at 10 s.
        assert trickle(clock, protocol, transport, head) == 10
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert status == 408
        assert assert_sts_error(status, headers, body) == "RequestTimeout"
        assert headers["connection"] == ["close"]
        protocol.dataReceived(head[10:] + b"\r\n" + VALID_BODY)  # ignored once cut off
        assert exchange.calls == 0
        assert len(responses(transport.value(), [b"POST"])) == 1
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert clock.getDelayedCalls() == []  # deadline, idle timeout, abort timer: all gone

    def test_body_trickling_is_cut_off_at_the_deadline(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        request = valid_request()
        head_len = request.index(b"\r\n\r\n") + 4
        protocol.dataReceived(request[:head_len])  # the headers at once
        closed_after = trickle(clock, protocol, transport, request[head_len:])
        assert closed_after == 10
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert assert_sts_error(status, headers, body) == "RequestTimeout"
        assert exchange.calls == 0

    def test_idle_connection_is_closed_silently(self) -> None:
        clock = MemoryReactorClock()
        site, _ = make_site(clock)
        protocol, transport = connect(site)
        clock.advance(9.9)
        assert not transport.disconnecting
        clock.advance(0.1)
        assert transport.disconnecting
        assert transport.value() == b""  # nothing was asked: no 408 to an idle connection

    def test_quick_request_is_unaffected_and_leaves_no_timer(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        clock.advance(9)
        protocol.dataReceived(valid_request(connection=b"close"))
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert status == 200
        assert_sts_success(headers, body)
        assert exchange.calls == 1
        assert transport.disconnecting  # Connection: close
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert clock.getDelayedCalls() == []

    def test_no_deadline_while_the_answer_is_being_made(self) -> None:
        clock = MemoryReactorClock()
        pending: list[Deferred[None]] = []

        class SlowExchange(StandInExchange):
            async def exchange(self, *args: Any) -> Issued:
                d: Deferred[None] = Deferred()
                pending.append(d)
                await d
                return await super().exchange(*args)

        site, _ = make_site(clock, exchange=SlowExchange())
        protocol, transport = connect(site)
        protocol.dataReceived(valid_request())
        assert len(pending) == 1
        clock.advance(30)  # the exchange is slow (MinIO), not the client
        assert not transport.disconnecting
        pending[0].callback(None)
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert status == 200
        assert not transport.disconnecting  # keep-alive

    def test_no_server_header(self) -> None:
        """No C{Server: TwistedWeb/<version>} on any answer of the STS port."""
        clock = MemoryReactorClock()
        site, _ = make_site(clock)
        protocol, transport = connect(site)
        protocol.dataReceived(valid_request())
        protocol.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: sts\r\n\r\n")
        protocol.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: sts\r\n\r\n")
        found = responses(transport.value(), [b"POST", b"GET", b"OPTIONS"])
        assert [status for status, _, _ in found] == [200, 404, 404]
        for _, headers, _ in found:
            assert "server" not in headers, headers
            assert "x-amz-request-id" in headers

    def test_keep_alive_second_request_gets_its_own_deadline(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        first = valid_request()
        # The first request takes 9 s of its 10, and is answered.
        assert trickle(clock, protocol, transport, first, every=9 / len(first)) == -1
        assert exchange.calls == 1
        answered_at = clock.seconds()
        assert answered_at < 10
        # The second gets a fresh 10 s from the first answer: it is still open
        # past the first request's deadline, and cut off at its own.
        second = valid_request()[:-5]
        closed_after = trickle(clock, protocol, transport, second, every=0.5)
        assert closed_after > 0
        assert answered_at + closed_after == pytest.approx(answered_at + 10, abs=0.51)
        assert clock.seconds() > 10
        found = responses(transport.value(), [b"POST", b"POST"])
        assert [status for status, _, _ in found] == [200, 408]
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert clock.getDelayedCalls() == []

    def test_pipelined_requests_each_get_a_deadline(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        protocol.dataReceived(valid_request() + valid_request()[:20])
        assert exchange.calls == 1
        clock.advance(9.9)
        assert not transport.disconnecting
        clock.advance(0.1)
        assert transport.disconnecting
        found = responses(transport.value(), [b"POST", b"POST"])
        assert [status for status, _, _ in found] == [200, 408]

    def test_oversized_and_malformed_heads_are_sts_xml(self) -> None:
        # Twisted answers these with a bare 400, or for an over-long line just
        # drops the connection; here they are STS XML like every other answer.
        for data in [
            b"POST /sts/" + b"a" * 40_000 + b" HTTP/1.1\r\n",
            b"POST /sts/a HTTP/1.1\r\n" + b"X: " + b"v" * 40_000 + b"\r\n",
            b"POST /sts/a HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000)
                                                    for i in range(40)),
            b"BAD REQUEST LINE\r\n\r\n",
            b"POST /sts/a HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST /sts/a HTTP/1.1\r\nNo-Colon\r\n\r\n",
        ]:
            clock = MemoryReactorClock()
            site, _ = make_site(clock)
            protocol, transport = connect(site)
            protocol.dataReceived(data)
            assert transport.disconnecting, data[:40]
            [(status, headers, body)] = responses(transport.value(), [b"POST"])
            assert assert_sts_error(status, headers, body) == "InvalidParameterValue"
            protocol.connectionLost(Failure(ConnectionError("closed")))
            assert clock.getDelayedCalls() == []

    def test_multipart_body_through_the_site(self) -> None:
        # Twisted's default Site parses a multipart body into request.args and
        # answers a malformed one with a bare 400; STSSite leaves bodies to
        # wire.parse_request, which refuses them in STS XML.
        for body in [b"\x00", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"]:
            clock = MemoryReactorClock()
            site, exchange = make_site(clock)
            protocol, transport = connect(site)
            protocol.dataReceived(request_bytes(b"POST", b"/sts/tenant-1", [
                (b"Host", b"sts.test"), (b"Content-Type", b"multipart/form-data; boundary=x"),
                (b"Content-Length", str(len(body)).encode())], body))
            [(status, headers, content)] = responses(transport.value(), [b"POST"])
            assert assert_sts_error(status, headers, content) == "InvalidParameterValue"
            assert exchange.calls == 0

    @cases("method", [b"POST", b"OPTIONS", b"GET"])
    def test_star_target_is_sts_xml(self, method: bytes) -> None:
        # Twisted's Request answers "*" itself: an empty 405 (200 to OPTIONS)
        # without x-amz-request-id. BoundedRequest hands it to the resource.
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        protocol.dataReceived(request_bytes(method, b"*", [(b"Host", b"sts.test")], b""))
        [(status, headers, body)] = responses(transport.value(), [method])
        assert assert_sts_error(status, headers, body) == "NotFound"

    def test_processing_failure_is_sts_xml(self) -> None:
        # The last resort, for a resource that raises instead of answering:
        # Twisted's "Processing Failed" HTML page (or traceback) never goes out.
        class Broken(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                raise ZeroDivisionError("secret detail")

        clock = MemoryReactorClock()
        site = STSSite(Broken(), reactor=clock)
        site.displayTracebacks = True
        protocol, transport = connect(site)
        protocol.dataReceived(valid_request())
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert status == 500
        assert headers["content-type"] == ["text/xml"]
        root = ElementTree.fromstring(body)
        assert root.findtext("sts:Error/sts:Code", namespaces=NS) == "InternalError"
        assert root.findtext("sts:RequestId", namespaces=NS) == headers["x-amz-request-id"][0]
        assert b"secret detail" not in body and b"Traceback" not in body
        # Logged for the operator, not sent (trial fails a test on an unflushed logged error).
        assert len(self.flushLoggedErrors(ZeroDivisionError)) == 1

    def test_query_string_token_of_20000_characters_fits_the_head(self) -> None:
        # minio-py sends the token in the query string; AWS allows 20,000 characters.
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        token = TOKEN + "A" * (20_000 - len(TOKEN))
        query = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                           "WebIdentityToken": token, "Policy": LONG_POLICY})
        protocol.dataReceived(request_bytes(
            b"POST", b"/sts/tenant-1?" + query.encode(), [(b"Host", b"sts.test")], b""))
        [(status, headers, body)] = responses(transport.value(), [b"POST"])
        assert (status, exchange.calls) == (200, 1)

    def test_site_defaults_and_wiring(self) -> None:
        clock = MemoryReactorClock()
        resource = STSResource(StandInExchange(), default_duration=3600,  # type: ignore[arg-type]
                               max_duration=43200, clock=clock, is_ready=lambda: True)
        site = STSSite(resource.resource(), reactor=clock)
        assert site.request_timeout == 10.0
        protocol, _ = connect(site)
        assert protocol.totalHeadersSize == protocol.MAX_LENGTH == 32 * 1024
        site.doStart()  # no once-a-second log timer left on the reactor
        site.doStop()
        # The request deadline only: Twisted's idle timeout is off, the deadline
        # also closes an idle connection (test_idle_keep_alive_connection_closed).
        assert [c.getTime() for c in clock.getDelayedCalls()] == [10.0]

    def test_idle_keep_alive_connection_closed(self) -> None:
        clock = MemoryReactorClock()
        site, exchange = make_site(clock)
        protocol, transport = connect(site)
        clock.advance(3)
        protocol.dataReceived(valid_request())
        [(status, _, _)] = responses(transport.value(), [b"POST"])
        assert (status, exchange.calls) == (200, 1)
        clock.advance(9.9)  # idle since the answer, within request_timeout
        assert not transport.disconnecting
        clock.advance(0.2)
        assert transport.disconnecting, "an idle keep-alive connection is closed"
        assert transport.value().count(b"HTTP/1.1") == 1, "closed without an answer"


globals().update(pytest_twisted_functions(SlowClientsTests))
