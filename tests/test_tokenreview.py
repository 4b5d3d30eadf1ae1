"""
Tests for L{stsd.auth.tokenreview}: the TokenReview authenticator with a stand-in reviewer.


No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.auth.tokenreview import TokenReviewAuthenticator
from stsd.model import Identity
from stsd.upstream.kube import KubernetesError

T = TypeVar("T")

AUDIENCE = "sts.min.io"


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


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
