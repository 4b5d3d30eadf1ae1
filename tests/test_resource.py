"""
Tests for L{stsd.http.resource}: the Klein resource in memory (StubTreq), with a
stand-in exchange, so routing and the error rendering are checked alone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlencode
from xml.etree import ElementTree

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors

from stsd.core.exchange import AssumeRoleRequest, Issued, Trail
from stsd.http import wire
from stsd.http.channel import STSSite
from stsd.http.resource import STSResource
from stsd.model import Grant, Identity
from tests._trial import cases, expand
from tests.test_hostile import assert_sts_error, responses
from tests.test_wire import TOKEN

NS = {"sts": wire.STS_NAMESPACE}


class StandInExchange:
    audience = "sts.min.io"

    def __init__(self) -> None:
        self.calls: list[tuple[str, AssumeRoleRequest]] = []
        self.outcome: Exception | None = None

    async def exchange(self, namespace: str, request: AssumeRoleRequest,
                       trail: Trail | None = None) -> Issued:
        self.calls.append((namespace, request))
        if trail is not None:
            trail.identity = Identity("apps", "photo-sa", "pod-1")
        if self.outcome is not None:
            raise self.outcome
        return Issued(
            wire.IssuedCredentials("AKID", "SECRET", "SESSION",
                                   datetime(2026, 11, 30, 13, tzinfo=timezone.utc)),
            Identity("apps", "photo-sa", "pod-1"), Grant(("b",), ("readwrite",)),
            "tenant-1/storage", ("readwrite",), 64,
        )


def body_params(**extra: str) -> bytes:
    params = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
              "WebIdentityToken": TOKEN, **extra}
    return urlencode(params).encode()


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.exchange = StandInExchange()
        self.ready = True
        self.resource = STSResource(
            self.exchange, default_duration=3600, max_duration=43200, clock=Clock(),
            is_ready=lambda: self.ready,
        )
        self.stub = StubTreq(self.resource.resource())

    def request(self, method: str, path: str, data: bytes | None = None,
                content_type: str = wire.FORM_CONTENT_TYPE):
        headers = {"Content-Type": content_type} if data is not None else {}
        response = self.successResultOf(
            self.stub.request(method, "https://sts.test" + path, data=data, headers=headers))
        body = self.successResultOf(treq.content(response))
        return response, body

    def assert_sts_error(self, response, body: bytes, code: str, status: int) -> None:
        self.assertEqual(response.code, status)
        root = ElementTree.fromstring(body)
        self.assertEqual(root.findtext("sts:Error/sts:Code", namespaces=NS), code)
        self.assertEqual(
            response.headers.getRawHeaders("x-amz-request-id")[0],
            root.findtext("sts:RequestId", namespaces=NS),
        )

    def test_success(self) -> None:
        response, body = self.request("POST", "/sts/tenant-1", body_params())
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/xml"])
        root = ElementTree.fromstring(body)
        self.assertEqual(root.findtext(".//sts:AccessKeyId", namespaces=NS), "AKID")
        self.assertEqual(root.findtext(".//sts:SubjectFromWebIdentityToken", namespaces=NS),
                         "system:serviceaccount:apps:photo-sa")
        self.assertEqual(response.headers.getRawHeaders("x-amz-request-id")[0],
                         root.findtext(".//sts:RequestId", namespaces=NS))
        self.assertEqual(self.exchange.calls[0][0], "tenant-1")

    def test_query_string_parameters(self) -> None:
        response, _ = self.request("POST", "/sts/tenant-1?" + body_params().decode(), None)
        self.assertEqual(response.code, 200)

    def test_request_ids_differ(self) -> None:
        first, _ = self.request("POST", "/sts/tenant-1", body_params())
        second, _ = self.request("POST", "/sts/tenant-1", body_params())
        self.assertNotEqual(first.headers.getRawHeaders("x-amz-request-id"),
                            second.headers.getRawHeaders("x-amz-request-id"))

    def test_bad_namespaces(self) -> None:
        for path in ["/sts/Tenant", "/sts/a%2Fb", "/sts/a/b", "/sts/..", "/sts/" + "a" * 300,
                     "/sts/", "/sts/a%00"]:
            response, body = self.request("POST", path, body_params())
            self.assert_sts_error(response, body, "InvalidParameterValue", 400)
        self.assertEqual(self.exchange.calls, [])

    def test_unknown_path_is_sts_xml(self) -> None:
        response, body = self.request("GET", "/nothing/here")
        self.assert_sts_error(response, body, "NotFound", 404)

    def test_wrong_method_is_sts_xml(self) -> None:
        response, body = self.request("GET", "/sts/tenant-1")
        self.assert_sts_error(response, body, "MethodNotAllowed", 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["POST"])

    def test_exchange_errors_rendered(self) -> None:
        self.exchange.outcome = errors.STSError("Throttling", "slow down", 400, retry_after=3)
        response, body = self.request("POST", "/sts/tenant-1", body_params())
        self.assert_sts_error(response, body, "Throttling", 400)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["3"])

    def test_unexpected_exception_is_internal_error_without_traceback(self) -> None:
        self.exchange.outcome = ZeroDivisionError("secret-detail")
        response, body = self.request("POST", "/sts/tenant-1", body_params())
        self.assert_sts_error(response, body, "InternalError", 500)
        self.assertNotIn(b"secret-detail", body)
        self.assertNotIn(b"Traceback", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_parameters_judged_before_exchange(self) -> None:
        response, body = self.request("POST", "/sts/tenant-1", body_params(Version="x"))
        self.assert_sts_error(response, body, "MissingParameter", 400)
        self.assertEqual(self.exchange.calls, [])

    def test_health(self) -> None:
        response, body = self.request("GET", "/healthz")
        self.assertEqual((response.code, body), (200, b"ok\n"))
        response, _ = self.request("GET", "/readyz")
        self.assertEqual(response.code, 200)
        self.ready = False
        response, _ = self.request("GET", "/readyz")
        self.assertEqual(response.code, 503)


class CountingTransport:
    """Counts the writes a response takes (each is a TLS record, a segment)."""

    def __init__(self) -> None:
        from twisted.internet.testing import StringTransport

        self.inner = StringTransport()
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def writeSequence(self, data) -> None:
        self.writes += 1
        self.inner.writeSequence(data)


def through_site(exchange: StandInExchange, data: bytes):
    """C{data} (raw requests) through the real STSSite, in memory."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    resource = STSResource(exchange, default_duration=3600, max_duration=43200,
                           clock=reactor, is_ready=lambda: True)
    protocol = STSSite(resource.resource(), reactor=reactor).buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 5555))
    transport = CountingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return protocol, transport


def post_through_site(exchange: StandInExchange):
    """A valid STS request through the real STSSite, in memory."""
    body = body_params()
    return through_site(exchange, (
        b"POST /sts/tenant-1 HTTP/1.1\r\nHost: sts\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body))


@expand
class ThroughTheSiteTests(SynchronousTestCase):
    @cases("method, target, code", [
        # Klein would route these as /sts/tenant-1: Twisted percent-decodes
        # the path and drops a target's first byte, werkzeug strips leading
        # slashes and upper-cases the method. The port routes what was sent.
        (b"POST", b"/%73ts/tenant-1", "NotFound"),
        (b"POST", b"//sts/tenant-1", "NotFound"),
        (b"POST", b"xsts/tenant-1", "NotFound"),
        (b"post", b"/sts/tenant-1", "MethodNotAllowed"),
        (b"POST", b"/sts/tenant%2D1", "InvalidParameterValue"),
        # Not UTF-8 once Twisted has dropped the "%": Klein's own page was
        # text/html.
        (b"GET", b"%C3%BC", "NotFound"),
    ])
    def test_the_path_is_routed_as_sent(self, method: bytes, target: bytes, code: str) -> None:
        exchange = StandInExchange()
        body = body_params()
        _, transport = through_site(exchange, (
            method + b" " + target + b" HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body))
        [(status, headers, content)] = responses(transport.inner.value(), [method])
        self.assertEqual(assert_sts_error(status, headers, content), code)
        self.assertEqual(exchange.calls, [])

    def test_client_going_away_is_audited_not_an_error(self) -> None:
        """Klein cancels the request of a client that disconnected: that is a
        499 in the audit trail, not a critical 'unexpected error'."""
        from twisted.internet.defer import Deferred
        from twisted.logger import LogLevel, globalLogPublisher
        from twisted.python.failure import Failure

        class Hanging(StandInExchange):
            async def exchange(self, namespace, request, trail=None):
                await Deferred()  # never answers

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            protocol, _ = post_through_site(Hanging())
            protocol.connectionLost(Failure(ConnectionError("client left")))
        finally:
            globalLogPublisher.removeObserver(events.append)
        audits = [e["audit"] for e in events if e.get("log_namespace") == "stsd.ops.audit"]
        assert [(a["outcome"], a["status"]) for a in audits] == [("ClientClosedRequest", 499)]
        assert not [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]
