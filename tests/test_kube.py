"""
Tests for L{stsd.upstream.kube}: the Kubernetes API client against the strict fake through
C{StubTreq}, its watch against a stream the test writes by hand, and the in-cluster token
re-read.

No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from stsd.upstream import kube
from stsd.upstream.kube import (
    TOKENREVIEW_PATH,
    KubeAccess,
    KubernetesClient,
    KubernetesError,
    WatchExpired,
)

from tests._trial import temporary_directory

T = TypeVar("T")

AUDIENCE = "sts.min.io"
CLIENT_TOKEN = "client-token-0123456789"
TIMEOUT = 5.0
BINDINGS_PATH = "/apis/sts.min.io/v1beta1/policybindings"


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


def kube_client(http: Any, clock: Clock,
                authorization: str = f"Bearer {CLIENT_TOKEN}") -> KubernetesClient:
    access = KubeAccess(
        host="https://kube.test", https=None, configuration=None,  # type: ignore[arg-type]
        authorization=authorization,
    )
    return KubernetesClient(access, http, clock, TIMEOUT)


# -- Kubernetes ------------------------------------------------------------------------


class KubernetesClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.issuer = TokenIssuer(clock=self.clock)
        self.fake = FakeKubernetes(self.issuer, client_token=CLIENT_TOKEN, clock=self.clock)
        self.stub = StubTreq(self.fake.resource())

    def client(self, authorization: str = f"Bearer {CLIENT_TOKEN}") -> KubernetesClient:
        return kube_client(self.stub, self.clock, authorization)

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
        from stsd.state.bindings import parse_binding

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


# -- watch ------------------------------------------------------------------------------


class Streamer(Resource):
    """
    A watch endpoint the test writes to by hand.
    """

    isLeaf = True

    def __init__(self, code: int = 200, body: bytes | None = None) -> None:
        super().__init__()
        self.code, self.body = code, body
        self.requests: list[Request] = []
        self.lost: list[object] = []

    def render_GET(self, request: Request) -> Any:
        self.requests.append(request)
        request.setResponseCode(self.code)
        request.setHeader("content-type", "application/json")
        if self.body is not None:
            return self.body
        request.notifyFinish().addBoth(self.lost.append)
        request.write(b"")
        return NOT_DONE_YET


class ClientWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def watch(self, server: Streamer, **kwargs: Any) -> tuple[StubTreq, Deferred[None]]:
        stub = StubTreq(server)
        client = kube_client(stub, self.clock)
        kwargs.setdefault("timeout_seconds", 60)
        d = run(client.watch("/api/v1/namespaces/t/secrets?fieldSelector=metadata.name%3Ds", "12",
                             lambda t, o: self.events.append((t, o)), what="Secret t/s", **kwargs))
        stub.flush()
        return stub, d

    def test_events_split_across_chunks(self) -> None:
        server = Streamer()
        stub, d = self.watch(server)
        [request] = server.requests
        self.assertEqual(request.args[b"fieldSelector"], [b"metadata.name=s"])
        self.assertEqual(request.args[b"resourceVersion"], [b"12"])
        self.assertEqual(request.args[b"allowWatchBookmarks"], [b"true"])
        self.assertEqual(request.getHeader("authorization"), f"Bearer {CLIENT_TOKEN}")
        for chunk in (b'{"type":"ADDED","object":{"metadata":{"name":"a"',
                      b'}}}\n\n{"type":"BOOK', b'MARK","object":{}}\n{"type":"DELETED",',
                      b'"object":{"x":1}}\n'):
            request.write(chunk)
            stub.flush()
        self.assertEqual(self.events, [("ADDED", {"metadata": {"name": "a"}}),
                                       ("BOOKMARK", {}), ("DELETED", {"x": 1})])
        request.finish()
        stub.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_overlong_line_is_refused_and_the_connection_closed(self) -> None:
        self.patch(kube, "MAX_WATCH_LINE_BYTES", 100)
        server = Streamer()
        stub, d = self.watch(server)
        server.requests[0].write(b'{"type":"ADDED","object":{"data":"' + b"x" * 60)
        stub.flush()
        self.assertNoResult(d)
        server.requests[0].write(b"x" * 60)
        stub.flush()
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), "watch Secret t/s: an event longer than 100 bytes")
        self.assertEqual(len(server.lost), 1)

    def test_silent_stream_is_given_up(self) -> None:
        server = Streamer()
        stub, d = self.watch(server, idle_seconds=40)
        self.clock.advance(39)
        server.requests[0].write(b'{"type":"BOOKMARK","object":{}}\n')
        stub.flush()
        self.clock.advance(39)  # data reset the deadline
        self.assertNoResult(d)
        self.clock.advance(1)
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), "watch Secret t/s: no data for 40 seconds")
        stub.flush()
        self.assertEqual(len(server.lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_idle_deadline_is_past_the_server_timeout(self) -> None:
        server = Streamer()
        stub, d = self.watch(server, timeout_seconds=60)
        self.clock.advance(60 + TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, KubernetesError)

    def test_no_headers_in_time(self) -> None:
        class Hang(Resource):
            isLeaf = True

            def render_GET(self, request: Request) -> Any:
                return NOT_DONE_YET

        stub = StubTreq(Hang())
        d = run(kube_client(stub, self.clock).watch(
            "/x", "1", lambda t, o: None, timeout_seconds=60, what="things"))
        stub.flush()
        self.clock.advance(TIMEOUT)
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), f"watch things: no answer within {TIMEOUT:g} seconds")

    def test_http_errors(self) -> None:
        forbidden = json.dumps({"kind": "Status", "code": 403, "message": "secrets is forbidden"})
        _, d = self.watch(Streamer(403, forbidden.encode()))
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), "watch Secret t/s: HTTP 403: secrets is forbidden")
        _, d = self.watch(Streamer(410, b'{"message": "too old resource version"}'))
        self.failureResultOf(d, WatchExpired)
        _, d = self.watch(Streamer(500, b"<html>oops</html>"))
        self.assertEqual(str(self.failureResultOf(d, KubernetesError).value),
                         "watch Secret t/s: HTTP 500: no message")

    def test_malformed_event_is_not_quoted(self) -> None:
        server = Streamer()
        stub, d = self.watch(server)
        server.requests[0].write(b'{"type":"ADDED","object":{"data":{"config.env":"SECRETVALUE"}}\n')
        stub.flush()
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), "watch Secret t/s: an event that is not JSON")
        stub, d = self.watch(server)
        server.requests[1].write(b'["SECRETVALUE"]\n')
        stub.flush()
        failure = self.failureResultOf(d, KubernetesError)
        self.assertEqual(str(failure.value), "watch Secret t/s: a malformed event")
        self.assertEqual(len(server.lost), 2)

    def test_cut_mid_stream_and_partial_end(self) -> None:
        server = Streamer()
        stub, d = self.watch(server)
        server.requests[0].write(b'{"type":"ADDED","object":{}}\n{"type":')
        stub.flush()
        server.requests[0].transport.abortConnection()
        stub.flush()
        failure = self.failureResultOf(d, KubernetesError)
        self.assertTrue(str(failure.value).startswith("watch Secret t/s: connection lost mid-stream"))
        self.assertEqual(self.events, [("ADDED", {})])

    def test_on_event_exception_ends_the_watch_as_itself(self) -> None:
        server = Streamer()
        stub = StubTreq(server)

        def explode(etype: str, obj: dict[str, Any]) -> None:
            raise ZeroDivisionError(etype)

        d = run(kube_client(stub, self.clock).watch(
            "/x", "1", explode, timeout_seconds=60))
        stub.flush()
        server.requests[0].write(b'{"type":"ADDED","object":{}}\n')
        stub.flush()
        self.failureResultOf(d, ZeroDivisionError)
        self.assertEqual(len(server.lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_closes_the_connection(self) -> None:
        server = Streamer()
        stub, d = self.watch(server)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        stub.flush()
        self.assertEqual(len(server.lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InClusterTokenTests(SynchronousTestCase):
    def test_in_cluster_token_is_reread_when_it_rotates(self) -> None:
        """The kubelet rotates the mounted token: KubeAccess.refresh (run by a
        timer, not per request) picks up the new one."""
        tmp_path = temporary_directory(self)
        import datetime

        from kubernetes.config.incluster_config import InClusterConfigLoader

        from stsd.upstream.kube import load_access

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

    def test_tenants_trust_the_cluster_ca_only_in_the_cluster(self) -> None:
        """In the cluster the operator's auto-certificates are signed by the
        cluster CA, so tenants are verified against it (and the system store,
        and C{tenants.ca_file}); a kubeconfig's CA is not lent to tenants."""
        tmp_path = temporary_directory(self)
        from kubernetes.config.incluster_config import InClusterConfigLoader

        from stsd.upstream.kube import load_access, tenant_trust

        cluster = TestPKI.create(tmp_path / "cluster")
        extra = TestPKI.create(tmp_path / "extra")
        token = tmp_path / "token"
        token.write_text("a-token")
        loader = InClusterConfigLoader(
            token_filename=str(token), cert_filename=str(cluster.ca_path),
            environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
        access = load_access(None, in_cluster=loader)
        self.assertTrue(access.in_cluster)
        trust = tenant_trust(access, str(extra.ca_path))
        self.assertTrue(trust.system)
        self.assertEqual(trust.certificates, (cluster.ca_cert, extra.ca_cert))
        self.assertEqual(tenant_trust(access, None).certificates, (cluster.ca_cert,))
        access.in_cluster = False  # as a kubeconfig loads it
        self.assertEqual(tenant_trust(access, str(extra.ca_path)).certificates, (extra.ca_cert,))
