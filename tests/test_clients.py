"""
Tests for the upstream clients and the small pieces they are built from,
all in memory: L{stsd.kube}, L{stsd.minio_client} and L{stsd.upstream}
against the strict fakes through C{StubTreq}, L{stsd.identity} with a
stand-in reviewer, L{stsd.cache} and L{stsd.tls}.

No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stsd import errors, tls, upstream
from stsd.cache import TTLCache
from stsd.identity import Identity, TokenReviewAuthenticator, parse_serviceaccount
from stsd.kube import TOKENREVIEW_PATH, KubeAccess, KubernetesClient, KubernetesError
from stsd.minio_client import (
    MinIOClient,
    MinIOError,
    RootCredentials,
    TenantEndpoint,
    _plain_credentials,
)
from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from stsd.testing.world import PHOTOS, READONLY, READWRITE
from stsd.upstream import TreqTransport
from stsd.wire import STS_NAMESPACE, IssuedCredentials

T = TypeVar("T")

AUDIENCE = "sts.min.io"
CLIENT_TOKEN = "client-token-0123456789"
TIMEOUT = 5.0
BINDINGS_PATH = "/apis/sts.min.io/v1beta1/policybindings"


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


# -- Kubernetes ------------------------------------------------------------------------


class KubernetesClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.issuer = TokenIssuer(clock=self.clock)
        self.fake = FakeKubernetes(self.issuer, client_token=CLIENT_TOKEN, clock=self.clock)
        self.stub = StubTreq(self.fake.resource())

    def client(self, authorization: str = f"Bearer {CLIENT_TOKEN}") -> KubernetesClient:
        access = KubeAccess(
            host="https://kube.test", https=None, configuration=None,  # type: ignore[arg-type]
            authorization=authorization,
        )
        return KubernetesClient(access, self.stub, self.clock, TIMEOUT)  # type: ignore[arg-type]

    def test_token_review_authenticated(self) -> None:
        token = self.fake.token_for("apps", "photo-sa", pod="pod-7")
        status = self.successResultOf(run(self.client().token_review(token, AUDIENCE)))
        self.assertIs(status["authenticated"], True)
        self.assertEqual(status["audiences"], [AUDIENCE])
        self.assertEqual(status["user"]["username"], "system:serviceaccount:apps:photo-sa")
        self.assertEqual(status["user"]["extra"]["authentication.kubernetes.io/pod-name"], ["pod-7"])
        # The client really asked the API server, once, for our audience.
        [review] = [r for r in self.fake.requests if r.path == TOKENREVIEW_PATH]
        assert review.body is not None
        self.assertEqual(json.loads(review.body)["spec"]["audiences"], [AUDIENCE])

    def test_list_in_pages_with_transform(self) -> None:
        from stsd.bindings import parse_binding

        for i in range(7):
            self.fake.add_policybinding(f"ns{i % 2}", f"b{i}", app_namespace="apps",
                                        serviceaccount=f"sa{i}", policies=["p"])
        bindings, version = self.successResultOf(run(self.client().list(
            BINDINGS_PATH, "PolicyBindings", transform=parse_binding, page_size=3)))
        self.assertEqual(sorted(b.name for b in bindings), [f"b{i}" for i in range(7)])
        self.assertEqual(version, str(self.fake.resource_version))
        pages = [r.query for r in self.fake.requests if r.path == BINDINGS_PATH]
        self.assertEqual([p.get("limit") for p in pages], ["3", "3", "3"])
        self.assertEqual(["continue" in p for p in pages], [False, True, True])

    def test_token_review_not_authenticated_is_a_status(self) -> None:
        status = self.successResultOf(run(self.client().token_review("not-a-jwt", AUDIENCE)))
        self.assertNotEqual(status.get("authenticated"), True)
        self.assertIn("invalid bearer token", status["error"])

    def test_token_review_wrong_audience_is_not_authenticated(self) -> None:
        token = self.fake.token_for("apps", "photo-sa", audiences=["something-else"])
        status = self.successResultOf(run(self.client().token_review(token, AUDIENCE)))
        self.assertNotEqual(status.get("authenticated"), True)

    def test_token_review_server_error(self) -> None:
        token = self.fake.token_for("apps", "photo-sa")
        self.fake.fail(TOKENREVIEW_PATH, "500")
        failure = self.failureResultOf(run(self.client().token_review(token, AUDIENCE)),
                                       KubernetesError)
        message = str(failure.value)
        self.assertIn("HTTP 500", message)
        self.assertNotIn(token, message)
        self.assertNotIn(token[-40:], message)

    def test_wrong_client_credentials(self) -> None:
        token = self.fake.token_for("apps", "photo-sa")
        client = self.client(authorization="Bearer not-the-client-token")
        failure = self.failureResultOf(run(client.token_review(token, AUDIENCE)), KubernetesError)
        self.assertIn("HTTP 401", str(failure.value))
        self.assertNotIn("not-the-client-token", str(failure.value))

    def test_no_client_credentials(self) -> None:
        failure = self.failureResultOf(
            run(self.client(authorization="").list(BINDINGS_PATH, "PolicyBindings")),
            KubernetesError,
        )
        self.assertIn("HTTP 401", str(failure.value))

    def test_list(self) -> None:
        self.fake.add_policybinding("tenant-1", "b1", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["readwrite"])
        self.fake.add_policybinding("tenant-2", "b2", app_namespace="apps",
                                    serviceaccount="other-sa", policies=["readonly"])
        items, version = self.successResultOf(
            run(self.client().list(BINDINGS_PATH, "PolicyBindings")))
        self.assertEqual(
            sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in items),
            [("tenant-1", "b1"), ("tenant-2", "b2")],
        )
        self.assertEqual(version, str(self.fake.resource_version))
        self.assertEqual(version, "2")

    def test_list_empty(self) -> None:
        items, version = self.successResultOf(
            run(self.client().list(BINDINGS_PATH, "PolicyBindings")))
        self.assertEqual((items, version), ([], "0"))

    def test_get(self) -> None:
        self.fake.add_secret("tenant-1", "env", {"config.env": b"export X=1\n"})
        client = self.client()
        found = self.successResultOf(
            run(client.get("/api/v1/namespaces/tenant-1/secrets/env", "Secret")))
        assert found is not None
        self.assertEqual(found["metadata"]["name"], "env")
        missing = self.successResultOf(
            run(client.get("/api/v1/namespaces/tenant-1/secrets/nope", "Secret")))
        self.assertIsNone(missing)

    def test_hang_times_out(self) -> None:
        self.fake.fail(BINDINGS_PATH, "hang")
        d = run(self.client().list(BINDINGS_PATH, "PolicyBindings"))
        self.stub.flush()
        self.clock.advance(TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value),
                         f"list PolicyBindings: no answer within {TIMEOUT:g} seconds")
        # The hung request's connection was given up, not left open.
        self.stub.flush()
        self.assertEqual(self.fake.hung, 0)

    def test_close_is_an_error(self) -> None:
        self.fake.fail(TOKENREVIEW_PATH, "close")
        d = run(self.client().token_review("x", AUDIENCE))
        self.stub.flush()
        self.failureResultOf(d, KubernetesError)


# -- MinIO -----------------------------------------------------------------------------

ACCESS_KEY = "root-access"
SECRET_KEY = "root-secret-Zq8vX1"
REGION = "eu-west-1"


class MinIOClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.minio = FakeMinIO(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, clock=self.clock,
            policies={"readonly": READONLY, "readwrite": READWRITE},
        )
        self.stub = StubTreq(FakeMinIORouter({"ns": self.minio}))
        self.client = MinIOClient(TreqTransport(self.stub, self.clock), self.clock, TIMEOUT)
        self.tenant = TenantEndpoint(
            name="ns/t", url="https://minio.test/ns",
            credentials=RootCredentials(ACCESS_KEY, SECRET_KEY),
        )

    def test_region(self) -> None:
        self.assertEqual(self.successResultOf(run(self.client.region(self.tenant))), REGION)
        self.assertEqual(self.minio.count("info"), 1)

    def test_canned_policy(self) -> None:
        text = self.successResultOf(run(self.client.canned_policy(self.tenant, REGION, "readonly")))
        self.assertEqual(text, json.dumps(READONLY))
        self.assertEqual(json.loads(text), READONLY)

    def test_canned_policy_missing(self) -> None:
        missing = self.successResultOf(run(self.client.canned_policy(self.tenant, REGION, "nope")))
        self.assertIsNone(missing)
        self.assertEqual(self.minio.count("policy"), 1)

    def test_canned_policy_name_is_encoded(self) -> None:
        # A name with characters SigV4 must percent-encode still signs and is found.
        self.minio.set_policy("team a+b/c", PHOTOS)
        text = self.successResultOf(
            run(self.client.canned_policy(self.tenant, REGION, "team a+b/c")))
        self.assertEqual(json.loads(text), PHOTOS)

    def test_assume_role(self) -> None:
        policy = json.dumps(PHOTOS).encode()
        issued = self.successResultOf(
            run(self.client.assume_role(self.tenant, REGION, policy, 900)))
        [minted] = self.minio.minted
        self.assertEqual(issued, IssuedCredentials(
            minted.access_key, minted.secret_key, minted.session_token, minted.expiration))
        self.assertEqual(minted.policy, PHOTOS)
        self.assertEqual(minted.duration, 900)
        self.assertEqual(issued.expiration.timestamp(), int(self.clock.seconds()) + 900)

    def test_assume_role_wrong_region(self) -> None:
        d = run(self.client.assume_role(self.tenant, "us-east-1", json.dumps(PHOTOS).encode(), 900))
        failure = self.failureResultOf(d, MinIOError)
        # MinIO's STS answers AccessDenied with the S3 error's description.
        self.assertIn("AccessDenied: The authorization header is malformed; the region is wrong",
                      str(failure.value))
        self.assertEqual(self.minio.minted, [])

    def test_assume_role_wrong_secret(self) -> None:
        wrong = "not-the-root-secret-9f"
        tenant = TenantEndpoint("ns/t", "https://minio.test/ns", RootCredentials(ACCESS_KEY, wrong))
        d = run(self.client.assume_role(tenant, REGION, json.dumps(PHOTOS).encode(), 900))
        failure = self.failureResultOf(d, MinIOError)
        message = str(failure.value)
        self.assertIn("AccessDenied: The request signature we calculated does not match", message)
        self.assertNotIn(wrong, message)
        self.assertNotIn(SECRET_KEY, message)
        self.assertEqual(self.minio.minted, [])

    def test_admin_call_wrong_secret(self) -> None:
        tenant = TenantEndpoint("ns/t", "https://minio.test/ns",
                                RootCredentials(ACCESS_KEY, "wrong-secret-77"))
        failure = self.failureResultOf(run(self.client.region(tenant)), MinIOError)
        self.assertIn("HTTP 403", str(failure.value))
        self.assertNotIn("wrong-secret-77", str(failure.value))

    def test_assume_role_without_policy_is_refused_locally(self) -> None:
        d = run(self.client.assume_role(self.tenant, REGION, b"", 900))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.minio.count("assumerole"), 0)

    def test_faults(self) -> None:
        for route, call in [
            ("info", lambda: self.client.region(self.tenant)),
            ("policy", lambda: self.client.canned_policy(self.tenant, REGION, "readonly")),
            ("assumerole", lambda: self.client.assume_role(
                self.tenant, REGION, json.dumps(PHOTOS).encode(), 900)),
        ]:
            for mode in ("500", "error"):
                with self.subTest(route=route, mode=mode):
                    self.minio.fail(route, mode, times=1)
                    failure = self.failureResultOf(run(call()), MinIOError)
                    self.assertIn("HTTP 500", str(failure.value))
                    self.assertIn("ns/t", str(failure.value))
        self.assertEqual(self.minio.minted, [])

    def test_hang_times_out(self) -> None:
        self.minio.fail("assumerole", "hang")
        d = run(self.client.assume_role(self.tenant, REGION, json.dumps(PHOTOS).encode(), 900))
        self.stub.flush()
        self.clock.advance(TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, MinIOError)
        self.assertEqual(str(failure.value),
                         f"AssumeRole on tenant ns/t: no answer within {TIMEOUT:g} seconds")
        self.assertEqual(self.minio.minted, [])


# -- the deadline covers the body --------------------------------------------------------


class PartialBody(Resource):
    """
    Sends the headers and the start of a body, and never finishes it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.lost: list[object] = []

    def render_GET(self, request: Request) -> object:
        self.requests.append(request)
        request.setHeader("content-type", "application/json")
        request.write(b"partial")
        request.notifyFinish().addBoth(self.lost.append)
        return NOT_DONE_YET


class Sized(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        return self.body


class UpstreamRequestTests(SynchronousTestCase):
    def test_deadline_covers_the_body(self) -> None:
        clock = Clock()
        server = PartialBody()
        stub = StubTreq(server)
        d = run(upstream.request(stub, clock, "GET", "https://slow.test/x",  # type: ignore[arg-type]
                                 target="slow thing", timeout=TIMEOUT))
        stub.flush()
        self.assertEqual(len(server.requests), 1)  # the headers went out
        self.clock_advance_and_check(clock, d)
        failure = self.failureResultOf(d, upstream.UpstreamError)
        self.assertEqual(str(failure.value), f"slow thing: no answer within {TIMEOUT:g} seconds")
        # Giving up closes the connection: the server sees it go.
        stub.flush()
        self.assertEqual(len(server.lost), 1)

    def clock_advance_and_check(self, clock: Clock, d: Deferred[Any]) -> None:
        clock.advance(TIMEOUT - 0.001)
        self.assertNoResult(d)
        clock.advance(0.001)

    def test_response(self) -> None:
        stub = StubTreq(Sized(b'{"ok": true}'))
        response = self.successResultOf(run(upstream.request(
            stub, Clock(), "GET", "https://fast.test/", target="t", timeout=1,  # type: ignore[arg-type]
            headers={"X-Test": "1"})))
        self.assertEqual((response.status, response.body), (200, b'{"ok": true}'))

    def test_response_too_large(self) -> None:
        stub = StubTreq(Sized(b"x" * 100))
        original = upstream.MAX_RESPONSE_BYTES
        upstream.MAX_RESPONSE_BYTES = 99
        try:
            d = run(upstream.request(stub, Clock(), "GET", "https://big.test/",  # type: ignore[arg-type]
                                     target="big", timeout=1))
            stub.flush()
        finally:
            upstream.MAX_RESPONSE_BYTES = original
        failure = self.failureResultOf(d, upstream.UpstreamError)
        self.assertEqual(str(failure.value), "big: response larger than 99 bytes")


# -- identity --------------------------------------------------------------------------


class ScriptedReviewer:
    def __init__(self, outcome: dict[str, Any] | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, str]] = []

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        self.calls.append((token, audience))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def reviewed(username: str, *, audiences: list[str] | None = None,
             authenticated: bool = True, pod: str | None = "pod-1") -> dict[str, Any]:
    user: dict[str, Any] = {"username": username, "uid": "u-1",
                            "groups": ["system:serviceaccounts", "system:authenticated"]}
    if pod is not None:
        user["extra"] = {"authentication.kubernetes.io/pod-name": [pod],
                         "authentication.kubernetes.io/pod-uid": ["p-1"]}
    status: dict[str, Any] = {"authenticated": authenticated, "user": user,
                              "audiences": [AUDIENCE] if audiences is None else audiences}
    if not authenticated:
        status = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
    return status


class AuthenticatorTests(SynchronousTestCase):
    def authenticate(self, outcome: dict[str, Any] | Exception) -> Deferred[Identity]:
        self.reviewer = ScriptedReviewer(outcome)
        return run(TokenReviewAuthenticator(self.reviewer, AUDIENCE).authenticate("tok"))

    def sts_error(self, outcome: dict[str, Any] | Exception) -> errors.STSError:
        failure = self.failureResultOf(self.authenticate(outcome), errors.STSError)
        return failure.value  # type: ignore[return-value]

    def test_serviceaccount(self) -> None:
        identity = self.successResultOf(
            self.authenticate(reviewed("system:serviceaccount:apps:photo-sa", pod="pod-9")))
        self.assertEqual(identity, Identity("apps", "photo-sa", "pod-9"))
        self.assertEqual(identity.username, "system:serviceaccount:apps:photo-sa")
        self.assertEqual(self.reviewer.calls, [("tok", AUDIENCE)])

    def test_serviceaccount_without_pod(self) -> None:
        identity = self.successResultOf(
            self.authenticate(reviewed("system:serviceaccount:apps:photo-sa", pod=None)))
        self.assertEqual(identity, Identity("apps", "photo-sa", None))

    def test_serviceaccount_dotted_name(self) -> None:
        identity = self.successResultOf(
            self.authenticate(reviewed("system:serviceaccount:apps:photo.sa")))
        self.assertEqual((identity.namespace, identity.serviceaccount), ("apps", "photo.sa"))

    def test_audience_missing(self) -> None:
        for audiences in ([], ["https://kubernetes.default.svc"], None):
            status = reviewed("system:serviceaccount:apps:photo-sa")
            if audiences is None:
                del status["audiences"]
            else:
                status["audiences"] = audiences
            with self.subTest(audiences=audiences):
                error = self.sts_error(status)
                self.assertEqual((error.code, error.status), ("AccessDenied", 403))

    def test_not_authenticated(self) -> None:
        error = self.sts_error(reviewed("system:serviceaccount:apps:photo-sa", authenticated=False))
        self.assertEqual((error.code, error.status), ("AccessDenied", 403))

    def test_authenticated_must_be_true(self) -> None:
        status = reviewed("system:serviceaccount:apps:photo-sa")
        status["authenticated"] = "true"
        self.assertEqual(self.sts_error(status).code, "AccessDenied")

    def test_not_a_serviceaccount(self) -> None:
        for username in [
            "oidc:alice",
            "system:serviceaccount:a",
            "system:serviceaccount:a:b:c",
            "system:serviceaccount:A:b",
            "system:serviceaccount:a:B",
            "xsystem:serviceaccount:a:b",
            "system:serviceaccount::b",
            "system:serviceaccount:a:",
            "system:node:worker-1",
            "oidc:system:serviceaccount:a:b",
        ]:
            with self.subTest(username=username):
                error = self.sts_error(reviewed(username))
                self.assertEqual((error.code, error.status), ("InvalidIdentityToken", 400))

    def test_no_username(self) -> None:
        status = reviewed("system:serviceaccount:apps:photo-sa")
        del status["user"]
        self.assertEqual(self.sts_error(status).code, "InvalidIdentityToken")

    def test_kubernetes_failure(self) -> None:
        error = self.sts_error(KubernetesError("TokenReview: HTTP 500: boom"))
        self.assertEqual((error.code, error.status), ("IDPCommunicationError", 400))
        self.assertNotIn("boom", error.message)


_USERNAME_ALPHABET = string.ascii_letters + string.digits + ":-._ \n"


@given(st.one_of(
    st.text(alphabet=_USERNAME_ALPHABET, max_size=80),
    st.text(alphabet=_USERNAME_ALPHABET, max_size=60).map(lambda s: "system:serviceaccount:" + s),
    st.tuples(st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
              st.from_regex(r"[a-z0-9.-]{1,70}", fullmatch=True))
    .map(lambda p: f"system:serviceaccount:{p[0]}:{p[1]}"),
    st.text(max_size=40),
))
def test_parse_serviceaccount_round_trips(username: str) -> None:
    parsed = parse_serviceaccount(username)
    if parsed is not None:
        namespace, name = parsed
        assert f"system:serviceaccount:{namespace}:{name}" == username
        assert ":" not in namespace and ":" not in name
        assert namespace == namespace.lower() and name == name.lower()


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
       st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,3}",
                     fullmatch=True))
def test_parse_serviceaccount_accepts_valid_names(namespace: str, name: str) -> None:
    assert parse_serviceaccount(f"system:serviceaccount:{namespace}:{name}") == (namespace, name)


@pytest.mark.parametrize("username", [None, 42, b"system:serviceaccount:a:b", ["x"]])
def test_parse_serviceaccount_not_a_string(username: object) -> None:
    assert parse_serviceaccount(username) is None


# -- TTLCache --------------------------------------------------------------------------


class Fetcher:
    """
    A fetch function whose calls stay pending until the test fires them.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[str]] = []

    def __call__(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.pending.append(d)
        return d

    @property
    def calls(self) -> int:
        return len(self.pending)


class TTLCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache: TTLCache[str] = TTLCache(self.clock, ttl=10)
        self.fetch = Fetcher()

    def get(self, key: str, fetch: Callable[[], Any] | None = None) -> Deferred[str]:
        return run(self.cache.get(key, fetch or self.fetch))

    def test_single_flight(self) -> None:
        first, second = self.get("k"), self.get("k")
        self.assertEqual(self.fetch.calls, 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("v", "v"))
        # and the value is now cached
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_distinct_keys_fetch_separately(self) -> None:
        a, b = self.get("a"), self.get("b")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("vb")
        self.fetch.pending[0].callback("va")
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("va", "vb"))

    def test_ttl(self) -> None:
        d = self.get("k")
        self.fetch.pending[0].callback("v1")
        self.successResultOf(d)
        self.clock.advance(9.999)
        self.assertEqual(self.successResultOf(self.get("k")), "v1")
        self.assertEqual(self.fetch.calls, 1)
        self.clock.advance(0.001)
        again = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v2")
        self.assertEqual(self.successResultOf(again), "v2")

    def test_ttl_counts_from_when_the_fetch_ends(self) -> None:
        d = self.get("k")
        self.clock.advance(8)
        self.fetch.pending[0].callback("v")
        self.successResultOf(d)
        self.clock.advance(9)
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_failure_reaches_every_waiter_and_is_not_cached(self) -> None:
        first, second = self.get("k"), self.get("k")
        self.fetch.pending[0].errback(MinIOError("down"))
        self.assertEqual(str(self.failureResultOf(first, MinIOError).value), "down")
        self.assertEqual(str(self.failureResultOf(second, MinIOError).value), "down")
        self.assertEqual(len(self.cache), 0)
        retry = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v")
        self.assertEqual(self.successResultOf(retry), "v")

    def test_lru_bound(self) -> None:
        cache: TTLCache[str] = TTLCache(self.clock, ttl=100, max_entries=2)
        fetched: list[str] = []

        def getter(key: str) -> str:
            async def fetch() -> str:
                fetched.append(key)
                return key.upper()
            return self.successResultOf(run(cache.get(key, fetch)))

        self.assertEqual([getter("a"), getter("b")], ["A", "B"])
        self.assertEqual(getter("a"), "A")  # a is now the most recently used
        self.assertEqual(getter("c"), "C")  # evicts b, the least recently used
        self.assertEqual(len(cache), 2)
        self.assertEqual(fetched, ["a", "b", "c"])
        getter("a")
        self.assertEqual(fetched, ["a", "b", "c"])  # still cached
        getter("b")
        self.assertEqual(fetched, ["a", "b", "c", "b"])  # was evicted

    def test_invalidate(self) -> None:
        d = self.get("k")
        self.fetch.pending[0].callback("v1")
        self.successResultOf(d)
        self.cache.invalidate("k")
        again = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v2")
        self.assertEqual(self.successResultOf(again), "v2")

    def test_cancelled_waiter(self) -> None:
        # Klein cancels a request's Deferred when its client goes away: a
        # waiter giving up must not break the fetch for the others.
        first, second, third = self.get("k"), self.get("k"), self.get("k")
        second.cancel()
        self.failureResultOf(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual(self.successResultOf(first), "v")
        self.assertEqual(self.successResultOf(third), "v")
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_cancelled_first_caller(self) -> None:
        # The caller that started the fetch going away must not fail the
        # others with its cancellation.
        first, second = self.get("k"), self.get("k")
        first.cancel()
        self.failureResultOf(first)
        self.assertNoResult(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual(self.successResultOf(second), "v")
        self.assertEqual(self.fetch.calls, 1)


# -- TLS -------------------------------------------------------------------------------


def _handshake(server: SSL.Context, version: int) -> str:
    """
    A TLS handshake in memory, the client limited to exactly C{version}.
    """
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(version)
    client_context.set_max_proto_version(version)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    peer = SSL.Connection(server, None)
    peer.set_accept_state()
    for _ in range(10):
        for a, b in ((client, peer), (peer, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
    assert client.get_protocol_version_name() == peer.get_protocol_version_name()
    return peer.get_protocol_version_name()


class TLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="stsd-tls-")
        self.addCleanup(shutil.rmtree, directory)
        self.pki = TestPKI.create(Path(directory))

    def test_server_minimum_tls12(self) -> None:
        options = tls.server_options(str(self.pki.cert_path), str(self.pki.key_path))
        context = options.getContext()
        # pyOpenSSL 26 has no Context.get_options; a Connection inherits the
        # context's options, and set_options(0) returns them unchanged.
        flags = SSL.Connection(context, None).set_options(0)
        for disabled in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(flags & disabled, hex(disabled))
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_3)
        self.assertEqual(_handshake(context, SSL.TLS1_2_VERSION), "TLSv1.2")
        self.assertEqual(_handshake(context, SSL.TLS1_3_VERSION), "TLSv1.3")
        with self.assertRaises(SSL.Error):
            _handshake(context, SSL.TLS1_1_VERSION)

    def test_server_options_serve_the_certificate(self) -> None:
        options = tls.server_options(str(self.pki.cert_path), str(self.pki.key_path))
        self.assertEqual(options.certificate, self.pki.cert)
        self.assertEqual(options.privateKey.private_numbers(), self.pki.key.private_numbers())

    def test_creator_per_netloc_is_reused(self) -> None:
        policy = tls.VerifiedHTTPS(tls.trust_from_files([str(self.pki.ca_path)], system=False))
        first = policy.creatorForNetloc(b"minio.test", 443)
        self.assertIs(policy.creatorForNetloc(b"minio.test", 443), first)
        self.assertIsNot(policy.creatorForNetloc(b"minio.test", 9000), first)
        self.assertIsNot(policy.creatorForNetloc(b"other.test", 443), first)
        self.assertIs(policy.creatorForNetloc(b"minio.test", 443), first)


class _Redirecting(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.paths.append(request.path)
        if request.path == b"/tokenreviews":
            request.setResponseCode(307)
            request.setHeader(b"location", b"https://elsewhere.test/steal")
            return b""
        return b"{}"


def test_upstream_redirects_are_not_followed() -> None:
    """A 307 from an upstream is an answer, never a reason to resend the
    body (a TokenReview carries a token) to another address."""
    resource = _Redirecting()
    stub = StubTreq(resource)
    d = Deferred.fromCoroutine(upstream.request(
        stub, Clock(), "POST", "https://kube.test/tokenreviews", target="TokenReview",
        timeout=5, data=b'{"spec": {"token": "secret"}}'))
    stub.flush()
    results: list = []
    d.addBoth(results.append)
    assert results[0].status == 307
    assert resource.paths == [b"/tokenreviews"]


def test_in_cluster_token_is_reread_when_it_rotates(tmp_path: Path) -> None:
    """The kubelet rotates the mounted token: KubeAccess.refresh (run by a
    timer, not per request) picks up the new one."""
    import datetime

    from kubernetes.config.incluster_config import InClusterConfigLoader

    from stsd.kube import load_access

    pki = TestPKI.create(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("first-token")
    loader = InClusterConfigLoader(
        token_filename=str(token), cert_filename=str(pki.ca_path),
        environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    access = load_access(None, in_cluster=loader)
    assert access.host == "https://10.0.0.1:443"
    assert access.authorization == "bearer first-token"
    token.write_text("second-token")
    access.refresh()
    assert access.authorization == "bearer first-token", "re-read at most once a minute"
    loader.token_expires_at = datetime.datetime.now() - datetime.timedelta(seconds=1)
    access.refresh()
    assert access.authorization == "bearer second-token"


# -- the AssumeRole answer, read without and with an XML tree ----------------------------


_CREDS = ("<AccessKeyId>AK1</AccessKeyId><SecretAccessKey>s+k</SecretAccessKey>"
          "<SessionToken>tok.en</SessionToken><Expiration>2026-11-30T05:00:00Z</Expiration>")


@pytest.mark.parametrize("body, plain", [
    # MinIO's own shape (AssumedRoleUser first, Expiration before SessionToken).
    (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><AssumedRoleUser><Arn>'
     "</Arn></AssumedRoleUser><Credentials><AccessKeyId>AK1</AccessKeyId><SecretAccessKey>s+k"
     "</SecretAccessKey><Expiration>2026-11-30T05:00:00Z</Expiration><SessionToken>tok.en"
     "</SessionToken></Credentials></AssumeRoleResult></AssumeRoleResponse>", True),
    (f'<?xml version="1.0"?>\n<AssumeRoleResponse xmlns="{STS_NAMESPACE}">\n  <AssumeRoleResult>'
     f"\n    <Credentials>\n      {_CREDS}\n    </Credentials>\n  </AssumeRoleResult>\n"
     "</AssumeRoleResponse>", True),
    # Shapes only an XML parser reads right: left to it.
    (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><Credentials>'
     + _CREDS.replace("s+k", "s&amp;k") + "</Credentials></AssumeRoleResult></AssumeRoleResponse>",
     False),
    (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><Credentials>'
     + _CREDS.replace("AK1", "<![CDATA[AK1]]>") + "</Credentials></AssumeRoleResult>"
     "</AssumeRoleResponse>", False),
    (f'<a:AssumeRoleResponse xmlns:a="{STS_NAMESPACE}"><a:AssumeRoleResult><a:Credentials>'
     + _CREDS.replace("<", "<a:").replace("<a:/", "</a:") + "</a:Credentials></a:AssumeRoleResult>"
     "</a:AssumeRoleResponse>", False),
])
def test_assume_role_answer_shapes(body: str, plain: bool) -> None:
    response = upstream.Response(200, {}, body.encode())
    tenant = TenantEndpoint("ns/t", "https://minio.test/ns", RootCredentials("a", "b"))
    parsed = MinIOClient._parsed_credentials(tenant, response)
    fast = _plain_credentials(response)
    assert (fast is not None) == plain
    if fast is not None:
        assert fast == parsed
    assert parsed["SecretAccessKey"] in ("s+k", "s&k")


def test_plain_answer_in_another_namespace_is_not_read() -> None:
    body = (b'<AssumeRoleResponse xmlns="urn:other"><AssumeRoleResult><Credentials>'
            + _CREDS.encode() + b"</Credentials></AssumeRoleResult></AssumeRoleResponse>")
    assert _plain_credentials(upstream.Response(200, {}, body)) is None
