"""
Tests for L{stsd.upstream.kube}: the Kubernetes API client against the strict fake through
C{StubTreq}, and the in-cluster token re-read.

No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from stsd.upstream.kube import TOKENREVIEW_PATH, KubeAccess, KubernetesClient, KubernetesError

from tests._trial import temporary_directory

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
