"""
Tests for the metrics port's site (L{stsd.http.channel.MetricsSite}): the STS
port's request deadline, a bound on connections, plain-text refusals; in
memory and once over loopback.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from stsd.config import MetricsConfig
from stsd.http.channel import MetricsSite
from stsd.ops.metrics import Metrics, metrics_site_root
from tests.test_hostile import responses
from tests._trial import pytest_twisted_functions

ADDRESS = IPv4Address("TCP", "10.0.0.7", 40000)


def make_site(clock: Any, **kwargs: Any) -> MetricsSite:
    root = metrics_site_root(Metrics().registry, lambda: None, lambda: None)
    return MetricsSite(root, reactor=clock, **kwargs)


def connect(site: MetricsSite) -> tuple[Any, StringTransport] | None:
    protocol = site.buildProtocol(ADDRESS)
    if protocol is None:
        return None
    transport = StringTransport(peerAddress=ADDRESS)
    protocol.makeConnection(transport)
    return protocol, transport


class _Client(Protocol):
    def __init__(self, send: bytes = b"") -> None:
        self.send = send
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.send:
            self.transport.write(self.send)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed.callback(None)


class OverLoopbackTests(TestCase):
    async def test_over_loopback(self) -> None:
        site = make_site(reactor, request_timeout=0.5, max_connections=4)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        half = [_Client(b"GET /metrics HTTP/1.1\r\n") for _ in range(4)]
        extra = _Client()
        try:
            await gatherResults([connectProtocol(endpoint, c) for c in half])
            deadline = time.monotonic() + 30  # accepted by the server (generous: a loaded machine)
            while site.connections < 4 and time.monotonic() < deadline:
                await deferLater(reactor, 0.01, lambda: None)
            assert site.connections == 4
            await connectProtocol(endpoint, extra)
            await extra.closed  # closed at once by the server, long before any deadline
            assert not any(c.closed.called for c in half)
            await gatherResults([c.closed for c in half])  # then the deadline
            for client in half:
                [(status, _, _)] = responses(client.received, [b"GET"])
                assert status == 408
            fresh = _Client(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            await connectProtocol(endpoint, fresh)
            await fresh.closed
            assert responses(fresh.received, [b"GET"])[0][:3:2] == (200, b"ok\n")
        finally:
            await port.stopListening()


class MetricsSiteTests(SynchronousTestCase):
    def test_a_half_sent_request_is_cut_off_at_the_deadline(self) -> None:
        clock = MemoryReactorClock()
        site = make_site(clock, request_timeout=10)
        protocol, transport = connect(site)  # type: ignore[misc]
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and no end
        clock.advance(9.9)
        assert not transport.disconnecting
        clock.advance(0.1)
        assert transport.disconnecting
        [(status, headers, body)] = responses(transport.value(), [b"GET"])
        assert status == 408
        assert headers["content-type"] == ["text/plain; charset=utf-8"]
        assert body == b"the request did not arrive within 10 seconds\n"
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert site.connections == 0

    def test_an_idle_connection_is_closed_silently_and_a_quick_one_answered(self) -> None:
        clock = MemoryReactorClock()
        site = make_site(clock, request_timeout=10)
        idle, idle_transport = connect(site)  # type: ignore[misc]
        quick, quick_transport = connect(site)  # type: ignore[misc]
        quick.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        [(status, _, body)] = responses(quick_transport.value(), [b"GET"])
        assert (status, body) == (200, b"ok\n")
        clock.advance(10)
        assert idle_transport.disconnecting and idle_transport.value() == b""
        assert quick_transport.disconnecting, "idle after its answer: closed at the deadline too"

    def test_connections_beyond_the_bound_are_closed_at_once(self) -> None:
        clock = MemoryReactorClock()
        site = make_site(clock, max_connections=3)
        held = [connect(site) for _ in range(3)]
        assert all(h is not None for h in held)
        assert connect(site) is None, "the fourth is refused (the port closes its socket)"
        assert connect(site) is None
        assert site.connections == 3
        protocol, _ = held[0]  # type: ignore[misc]
        protocol.connectionLost(Failure(ConnectionError("closed")))
        assert connect(site) is not None, "a slot freed: accepted again"

    def test_connections_closed_at_the_bound_are_logged_at_most_once_a_minute(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            clock = MemoryReactorClock()
            site = make_site(clock, max_connections=1)
            connect(site)
            for _ in range(100):
                assert connect(site) is None
            clock.advance(59)
            assert connect(site) is None
            clock.advance(1)
            assert connect(site) is None
        finally:
            globalLogPublisher.removeObserver(events.append)
        warnings = [e for e in events if "the most allowed" in e.get("log_format", "")]
        assert [(w["count"], w["refused"]) for w in warnings] == [(1, 1), (1, 101)]

    def test_the_default_bound_and_interface(self) -> None:
        assert MetricsConfig().max_connections == 64
        assert MetricsConfig().interface == "0.0.0.0"


globals().update(pytest_twisted_functions(OverLoopbackTests))
