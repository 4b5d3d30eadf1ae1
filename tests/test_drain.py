"""
Tests for L{stsd.ops.drain}: the graceful stop on SIGTERM.

In memory first (L{MemoryReactorClock}, the real L{STSSite} and
L{MetricsSite} over StringTransports): readiness, the listener's stop
after the delay, in-flight requests answered, idle connections closed,
the grace's expiry. Then the daemon as a real process under SIGTERM, with
a slow and a hanging fake MinIO.
"""

from __future__ import annotations

import signal
import socket
import time
from typing import Any
from urllib.parse import urlencode

import pytest_twisted
import treq
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from stsd.core.exchange import Issued
from stsd.http.channel import MetricsSite, STSSite
from stsd.http.resource import STSResource
from stsd.ops.drain import LINGER_SECONDS, SHUTTING_DOWN, GracefulStop
from stsd.ops.metrics import Metrics, metrics_site_root
from stsd.testing.world import World
from stsd.upstream.http import close_connections
from tests.test_e2e import params
from tests.test_hostile import StandInExchange, connect, responses, valid_request
from tests._trial import pytest_only

DELAY, GRACE = 5.0, 20.0


class Recorder(Service):
    """A child service that notes when it was stopped."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.stopped_at: float | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopped_at = self.clock.seconds()
        return succeed(None)


class SlowExchange(StandInExchange):
    """Credentials once the test fires the request's Deferred (a slow MinIO)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[None]] = []

    async def exchange(self, *args: Any) -> Issued:
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        await d
        return await super().exchange(*args)


class Stack:
    """GracefulStop over a real STSSite and MetricsSite, on a clock."""

    def __init__(self, delay: float = DELAY, grace: float = GRACE) -> None:
        self.clock = MemoryReactorClock()
        self.exchange = SlowExchange()
        self.top = GracefulStop(self.clock, delay=delay, grace=grace)
        readiness = self.top.readiness(lambda: None)
        resource = STSResource(self.exchange, default_duration=3600,  # type: ignore[arg-type]
                               max_duration=43200, clock=self.clock, is_ready=lambda: True,
                               readiness=readiness)
        self.site = STSSite(resource.resource(), reactor=self.clock)
        self.metrics_site = MetricsSite(metrics_site_root(Metrics().registry, lambda: None,
                                                          readiness), reactor=self.clock)
        self.listener = Recorder(self.clock)
        self.rest = Recorder(self.clock)
        self.rest.setServiceParent(self.top)
        self.listener.setServiceParent(self.top)
        self.top.drains(self.listener, self.site)
        self.top.startService()
        self.stopped: list[object] = []

    def stop(self) -> None:
        self.top.stopService().addBoth(self.stopped.append)

    def get(self, site: Any, path: bytes) -> tuple[int, dict[str, list[str]], bytes]:
        protocol, transport = connect(site)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        [answer] = responses(transport.value(), [b"GET"])
        protocol.connectionLost(Failure(ConnectionError("closed")))
        return answer


def lost(protocol: Any) -> None:
    protocol.connectionLost(Failure(ConnectionError("closed")))


# -- the daemon as a process --------------------------------------------------------


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


async def status_of(http: Any, url: str) -> int | None:
    try:
        response = await http.get(url)
        await treq.content(response)
        return int(response.code)
    except Exception:
        return None


async def poll(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_a_real_daemon(world: World) -> None:
    """
    SIGTERM with two requests in flight: one MinIO answers after the
    delay, the other never. /readyz is 503 on both ports during the delay,
    the first request gets its credentials, new connections are refused
    once the delay is over, the hanging request is cut off at the end of
    the grace, and the process exits 0.
    """
    delay, grace, slow = 3.0, 5.0, 4.5
    daemon = await world.start_daemon(
        "draining", server={"shutdown_delay_seconds": delay, "shutdown_grace_seconds": grace},
        tenants={"timeout_seconds": 30})
    port = int(daemon.url.rsplit(":", 1)[1])
    slow_minio, hanging_minio = (world.tenants[t].minio for t in ("tenant-1", "tenant-2"))
    slow_minio.fail("assumerole", "delay", times=1, delay=slow)
    hanging_minio.fail("assumerole", "hang")
    http = world.https_client()
    try:
        answered = Deferred.fromCoroutine(_post(http, daemon.sts_url("tenant-1"), world.mint()))
        cut_off = Deferred.fromCoroutine(_post(http, daemon.sts_url("tenant-2"), world.mint()))
        assert await poll(lambda: succeed(slow_minio.delayed == 1 and hanging_minio.hung == 1))
        signalled = time.monotonic()
        daemon.transport.signalProcess("TERM")
        # /readyz answers 503 on both ports while new connections are taken.
        assert await poll(lambda: _is(http, daemon.url + "/readyz", 503)), daemon.log_text()
        assert await status_of(http, daemon.metrics_url + "/readyz") == 503
        # A new request during the delay is answered (with "Connection: close",
        # which Twisted's client keeps to itself: tested in memory above).
        status, _, body = await _post(http, daemon.sts_url("tenant-1"), world.mint())
        assert status == 200, body
        # The request in flight at SIGTERM gets its credentials.
        status, _, body = await answered
        assert status == 200, body
        assert b"<AccessKeyId>" in body
        # Then the STS port refuses new connections, the process still
        # running: the hanging request is within its grace.
        assert await poll(lambda: succeed(refused(port))), daemon.log_text()
        assert not daemon.protocol.ended.called
        code = await daemon.protocol.ended
        ended = time.monotonic() - signalled
        failure = await cut_off
        assert failure[0] is None, "cut off without an answer"
        assert b"closed" in failure[2] or b"Connection" in failure[2], failure
        assert code == 0, daemon.log_text()
        # Timings as the daemon measured them on its own clock.
        log = daemon.log_text()
        assert "stopped listening" in log and "1 requests cut off" in log, log
        assert "ClientClosedRequest" in log, "the request cut off is audited"
        drained_at = float(log.split("drained ", 1)[1].split(" s", 1)[0])
        listening_stopped_at = float(log.split("stopped listening ", 1)[1].split(" s", 1)[0])
        assert delay <= listening_stopped_at < delay + 1
        assert delay + grace <= drained_at <= delay + grace + 1
        # Measured from here, generous for a loaded machine.
        assert ended < delay + grace + 15
        print(f"\nSIGTERM drain: listener stopped at {listening_stopped_at:.2f} s, drained at "
              f"{drained_at:.2f} s (daemon's clock); exit 0 seen {ended:.2f} s after SIGTERM")
        print("\n".join(line for line in log.splitlines()
                        if "stop" in line or "drain" in line or "SIGTERM" in line))
    finally:
        slow_minio.clear_faults()
        hanging_minio.clear_faults()
        await close_connections(http)


async def _is(http: Any, url: str, status: int) -> bool:
    return await status_of(http, url) == status


async def _post(http: Any, url: str, token: str) -> tuple[int | None, dict[bytes, Any], bytes]:
    """(status, headers, body) of an AssumeRoleWithWebIdentity, or (None, {}, the error)."""
    try:
        response = await http.post(
            url, data=urlencode(params(token, DurationSeconds="900")).encode(),
            headers={"Content-Type": ["application/x-www-form-urlencoded"]})
        headers = {k.lower(): v for k, v in response.headers.getAllRawHeaders()}
        return response.code, headers, await treq.content(response)
    except Exception as e:
        return None, {}, repr(e).encode()


class DrainTests(SynchronousTestCase):
    def test_readyz_turns_503_at_once_on_both_ports_and_the_listener_stops_after_the_delay(self) -> None:
        stack = Stack()
        assert stack.get(stack.site, b"/readyz")[0] == 200
        assert stack.get(stack.metrics_site, b"/readyz")[0] == 200
        stack.stop()
        assert not stack.top.running
        status, _, body = stack.get(stack.site, b"/readyz")
        assert (status, body) == (503, f"not ready: {SHUTTING_DOWN}\n".encode())
        status, _, body = stack.get(stack.metrics_site, b"/readyz")
        assert (status, body) == (503, f"not ready: {SHUTTING_DOWN}\n".encode())
        stack.clock.advance(DELAY - 0.1)
        assert stack.listener.stopped_at is None, "still taking connections during the delay"
        assert stack.rest.stopped_at is None
        stack.clock.advance(0.1)
        # Nothing in flight: the listener stops at the delay, then everything else.
        assert stack.listener.stopped_at == DELAY
        assert stack.rest.stopped_at == DELAY
        assert stack.stopped == [None]
        assert [c for c in stack.clock.getDelayedCalls() if c.active()] == []

    def test_a_request_in_flight_is_answered_and_idle_connections_are_closed(self) -> None:
        stack = Stack()
        busy, busy_transport = connect(stack.site)
        busy.dataReceived(valid_request())
        assert len(stack.exchange.pending) == 1
        idle, idle_transport = connect(stack.site)
        stack.stop()
        stack.clock.advance(DELAY)
        assert stack.listener.stopped_at == DELAY
        assert idle_transport.disconnecting, "an idle keep-alive connection is closed"
        assert idle_transport.value() == b""
        lost(idle)
        assert not busy_transport.disconnecting
        stack.clock.advance(GRACE - 1)
        assert stack.stopped == [] and stack.rest.stopped_at is None, "waiting for the request"
        stack.exchange.pending[0].callback(None)
        [(status, headers, _)] = responses(busy_transport.value(), [b"POST"])
        assert status == 200
        assert headers["connection"] == ["close"], "the last answer of its connection"
        assert busy_transport.disconnecting
        lost(busy)  # the client closes after the answer
        assert stack.stopped == [None]
        assert stack.rest.stopped_at == DELAY + GRACE - 1
        assert not busy_transport.disconnected, "closed, not aborted"

    def test_connections_slow_to_close_after_their_answer_get_a_moment(self) -> None:
        stack = Stack()
        busy, busy_transport = connect(stack.site)
        busy.dataReceived(valid_request())
        stack.stop()
        stack.clock.advance(DELAY + 2)
        stack.exchange.pending[0].callback(None)
        assert responses(busy_transport.value(), [b"POST"])[0][0] == 200
        # The client does not close its side: the answer is out, and after
        # LINGER_SECONDS the connection is dropped.
        assert stack.stopped == []
        stack.clock.advance(LINGER_SECONDS)
        assert busy_transport.disconnected
        assert stack.stopped == [None]
        assert stack.rest.stopped_at == DELAY + 2 + LINGER_SECONDS

    def test_requests_still_in_flight_after_the_grace_are_cut_off(self) -> None:
        stack = Stack()
        busy, busy_transport = connect(stack.site)
        busy.dataReceived(valid_request())
        stack.stop()
        stack.clock.advance(DELAY)
        stack.clock.advance(GRACE - 0.1)
        assert not busy_transport.disconnecting and stack.stopped == []
        stack.clock.advance(0.1)
        assert busy_transport.disconnected, "aborted at the end of the grace"
        assert busy_transport.value() == b""
        assert stack.stopped == [None]
        assert stack.rest.stopped_at == DELAY + GRACE
        lost(busy)

    def test_answers_during_the_delay_close_their_connection(self) -> None:
        stack = Stack()
        protocol, transport = connect(stack.site)
        stack.exchange.pending.clear()
        stack.stop()
        stack.clock.advance(1)
        protocol.dataReceived(valid_request())  # keep-alive asked
        stack.exchange.pending[0].callback(None)
        [(status, headers, _)] = responses(transport.value(), [b"POST"])
        assert (status, headers["connection"]) == (200, ["close"])
        assert transport.disconnecting
        lost(protocol)

    def test_a_request_arriving_at_the_listener_stop_gets_its_deadline(self) -> None:
        stack = Stack()
        protocol, transport = connect(stack.site)
        protocol.dataReceived(valid_request()[:20])  # part of the request line
        stack.stop()
        stack.clock.advance(DELAY)
        assert not transport.disconnecting, "a request is arriving: not idle"
        stack.clock.advance(10 - DELAY)  # its request deadline (10 s from connecting)
        [(status, _, _)] = responses(transport.value(), [b"POST"])
        assert status == 408
        lost(protocol)
        assert stack.stopped == [None]

    def test_no_delay_and_no_grace(self) -> None:
        stack = Stack(delay=0, grace=0)
        busy, busy_transport = connect(stack.site)
        busy.dataReceived(valid_request())
        stack.stop()
        stack.clock.advance(0)
        assert stack.listener.stopped_at == 0
        assert busy_transport.disconnected
        assert stack.stopped == [None]

    def test_a_drained_sigterm_exits_zero(self) -> None:
        stack = Stack()
        stack.clock._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        stack.stop()
        stack.clock.advance(DELAY - 1)
        assert stack.clock._exitSignal == signal.SIGTERM  # type: ignore[attr-defined]
        stack.clock.advance(1)
        assert stack.stopped == [None]
        assert stack.clock._exitSignal is None  # type: ignore[attr-defined]


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "drives the daemon as a process (pytest fixture world); run under pytest")
