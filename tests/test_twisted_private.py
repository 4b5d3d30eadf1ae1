# -*- test-case-name: tests.test_twisted_private -*-
"""
Tests for L{stsd.twisted_private}: each private name of Twisted stsd
relies on still exists, with the signature and the behaviour relied on,
tested against Twisted itself (not through stsd), so that a Twisted
upgrade that changes one fails here by name.
"""

from __future__ import annotations

import importlib
import inspect
import signal
from typing import Any

import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from stsd import twisted_private
from stsd.twisted_private import (
    OVERRIDDEN, TRUST_ROOT_METHOD, IOpenSSLTrustRoot, UnbufferedTLSFactory, clear_exit_signal,
    line_buffer, quiet_pool, raise_listen_errors, send_now,
)
from stsd.upstream.tls import CertificateTrust
from tests._trial import cases, expand, pytest_twisted_functions


def resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return getattr(resolve(module), name)


# -- overrides -----------------------------------------------------------------------------


@expand
class OverrideTests(SynchronousTestCase):
    @cases("twisted_class, name, override, why", OVERRIDDEN)
    def test_overridden_methods_exist_and_take_only_self(
            self, twisted_class: str, name: str, override: str, why: str) -> None:
        original = getattr(resolve(twisted_class), name)
        assert list(inspect.signature(original).parameters) == ["self"]
        mine = resolve(override)
        assert mine is not original, f"stsd overrides {name}"
        assert list(inspect.signature(mine).parameters) == ["self"]
        assert why

    def test_a_star_request_target_goes_to_handle_star(self) -> None:
        seen: list[bytes] = []

        class Spy(Request):
            def _handleStar(self) -> None:
                seen.append(self.method)
                super()._handleStar()

        channel, _ = _channel(Spy)
        channel.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.dataReceived(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert seen == [b"OPTIONS"]

    def test_a_malformed_request_goes_to_respond_to_bad_request(self) -> None:
        seen: list[bool] = []

        class Spy(HTTPChannel):
            def _respondToBadRequestAndDisconnect(self) -> None:
                seen.append(True)
                super()._respondToBadRequestAndDisconnect()

        channel, transport = _channel(Request, Spy)
        channel.dataReceived(b"NOT A REQUEST LINE AT ALL\r\n\r\n")
        assert seen == [True]
        assert transport.value().startswith(b"HTTP/1.1 400")


def _channel(request_class: type[Request], channel_class: type[HTTPChannel] = HTTPChannel
             ) -> tuple[HTTPChannel, StringTransport]:
    site = Site(Hello(), reactor=Clock())  # (its timers not left in the global reactor)
    site.requestFactory = request_class
    site.protocol = channel_class
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


# -- LineReceiver._buffer ------------------------------------------------------------------


class LineBufferTests(SynchronousTestCase):
    def test_line_buffer_holds_an_incomplete_line(self) -> None:
        receiver = LineReceiver()
        receiver.makeConnection(StringTransport())
        assert line_buffer(receiver) == b""
        receiver.dataReceived(b"half a li")
        assert line_buffer(receiver) == b"half a li"
        channel, _ = _channel(Request)
        channel.dataReceived(b"POST /sts/t HT")
        assert line_buffer(channel) == b"POST /sts/t HT"
        assert not channel.requests, "no request before the request line ends"


# -- StreamServerEndpointService._raiseSynchronously ----------------------------------------


class RefusingEndpoint:
    def listen(self, factory: Any) -> Any:
        return fail(CannotListenError("127.0.0.1", 1, OSError("in use")))


class RaiseListenErrorsTests(SynchronousTestCase):
    def test_raise_listen_errors_makes_start_up_raise(self) -> None:
        plain = StreamServerEndpointService(RefusingEndpoint(), Factory())
        plain.privilegedStartService()  # only logged by default
        plain._waitingForPort.addErrback(lambda _: None)  # (not to be reported as unhandled)
        service = StreamServerEndpointService(RefusingEndpoint(), Factory())
        raise_listen_errors(service)
        with self.assertRaises(CannotListenError):
            service.privilegedStartService()
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1, "the plain one logged it")


# -- ReactorBase._exitSignal ----------------------------------------------------------------


class Stopping:
    """What C{ReactorBase.sigTerm} needs of its reactor."""

    _exitSignal = None

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 - reactor API
        pass

    stop = None


class ExitSignalTests(SynchronousTestCase):
    def test_sigterm_sets_the_exit_signal_and_twistd_reads_it(self) -> None:
        fake = Stopping()
        ReactorBase.sigTerm(fake, signal.SIGTERM, None)  # type: ignore[arg-type]
        assert fake._exitSignal == signal.SIGTERM
        assert clear_exit_signal(fake, signal.SIGTERM)
        assert fake._exitSignal is None
        assert not clear_exit_signal(fake, signal.SIGTERM), "nothing left to clear"
        assert not clear_exit_signal(object()), "a clock without the attribute"
        # twistd's runner re-raises whatever the reactor's attribute holds.
        from twisted.application import app
        assert "reactor._exitSignal" in inspect.getsource(app)


# -- the TLS trust root -------------------------------------------------------------------


class TrustRootTests(SynchronousTestCase):
    def test_a_trust_root_is_asked_to_fill_the_context(self) -> None:
        contexts: list[Any] = []

        @implementer(IOpenSSLTrustRoot)
        class Spy:
            def _addCACertsToContext(self, context: Any) -> None:  # noqa: N802
                contexts.append(context)

        optionsForClientTLS("example.test", trustRoot=Spy())  # takes it
        CertificateOptions(trustRoot=Spy()).getContext()  # and asks it for the context
        assert len(contexts) == 1 and isinstance(contexts[0], SSL.Context)
        assert hasattr(CertificateTrust(()), TRUST_ROOT_METHOD)
        assert IOpenSSLTrustRoot.providedBy(CertificateTrust(()))


# -- unbuffered TLS and sending now ---------------------------------------------------------


class SendNowTests(SynchronousTestCase):
    def test_tls_buffers_by_default_and_the_unbuffered_factory_does_not(self) -> None:
        # The reason for UnbufferedTLSFactory: Twisted's default holds writes.
        assert issubclass(TLSMemoryBIOFactory.protocol, BufferingTLSTransport)
        assert not issubclass(UnbufferedTLSFactory.protocol, BufferingTLSTransport)

    def test_send_now_writes_through_a_socket_transport(self) -> None:
        assert IWriteDescriptor.implementedBy(Connection)
        assert list(inspect.signature(Connection.doWrite).parameters) == ["self"]

        @implementer(IWriteDescriptor)
        class Socket:
            disconnecting = False
            writes = 0

            def doWrite(self) -> None:  # noqa: N802
                self.writes += 1

        class Layer:
            def __init__(self, transport: Any) -> None:
                self.transport = transport

        socket = Socket()
        send_now(Layer(socket))
        send_now(socket)
        assert socket.writes == 2
        socket.disconnecting = True
        send_now(socket)
        send_now(StringTransport())  # not a socket: nothing to do
        assert socket.writes == 2


# -- the quiet treq pool --------------------------------------------------------------------


class QuietPoolTests(SynchronousTestCase):
    def test_the_pool_factory_is_where_quiet_pool_puts_it(self) -> None:
        pool = HTTPConnectionPool(reactor)
        assert pool._factory is _HTTP11ClientFactory
        assert list(inspect.signature(_HTTP11ClientFactory).parameters) == [
            "quiescentCallback", "metadata"]
        quiet_pool(pool)
        assert pool._factory is not _HTTP11ClientFactory
        assert issubclass(pool._factory, _HTTP11ClientFactory) and not pool._factory.noisy


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        return b"hello"


class QuietPoolLoopbackTests(TestCase):
    async def test_quiet_pool_measured_log_lines_per_connection(self) -> None:
        """The measured effect: 2 log lines per new connection without, 0 with."""
        site, closed = Site(Hello()), list[Deferred[None]]()

        class Channel(HTTPChannel):
            # Each server-side connection's end (a turn after the client's).
            def connectionMade(self) -> None:
                super().connectionMade()
                self.closed: Deferred[None] = Deferred()
                closed.append(self.closed)

            def connectionLost(self, reason: Failure) -> None:
                super().connectionLost(reason)
                self.closed.callback(None)

        site.protocol = Channel
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}/"
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            text = str(event.get("log_format") or event.get("format") or event.get("message"))
            if "factory" in text.lower() and "_HTTP11ClientFactory" in repr(event):
                lines.append(text)

        async def one_call(quiet: bool) -> int:
            del lines[:]
            pool = HTTPConnectionPool(reactor, persistent=False)
            if quiet:
                quiet_pool(pool)
            client = HTTPClient(Agent(reactor, pool=pool))
            assert await treq.content(await client.get(url)) == b"hello"
            await pool.closeCachedConnections()
            return len(lines)

        globalLogPublisher.addObserver(observe)
        try:
            # Quiet first: a noisy connection's "Stopping factory" may come late.
            quiet = await one_call(True)
            noisy = await one_call(False)
        finally:
            globalLogPublisher.removeObserver(observe)
            await port.stopListening()
            await gatherResults(closed)  # (no idle timer left behind)
        assert quiet == 0, lines
        assert noisy >= 1, "Twisted's factory logs its start (the reason for the hook)"


class DocumentedTests(SynchronousTestCase):
    def test_every_public_name_is_documented(self) -> None:
        for name in twisted_private.__all__:
            value = getattr(twisted_private, name)
            if callable(value) and not isinstance(value, type(IOpenSSLTrustRoot)):
                assert (value.__doc__ or "").strip(), name


globals().update(pytest_twisted_functions(QuietPoolLoopbackTests))
