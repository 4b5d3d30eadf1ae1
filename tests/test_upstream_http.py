"""
Tests for L{stsd.upstream.http}: one upstream request, its deadline (which covers the
body), its size bound, and no redirect followed.

No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stsd.upstream import http as upstream
T = TypeVar("T")

TIMEOUT = 5.0


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


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


class RedirectTests(SynchronousTestCase):
    def test_upstream_redirects_are_not_followed(self) -> None:
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
