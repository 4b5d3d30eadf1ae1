"""
Tests for L{stsd.upstream.keepalive}: the keep-alive HTTP/1.1 client of the MinIO
calls. Framing, deadlines, resends and the pool run in memory (the
client's own endpoint over a L{MemoryReactorClock}, bytes carried by
C{twisted.test.iosim}, time moved by the test); a few run on loopback:
the fake MinIO over verified TLS, a refused certificate, and what only a
real socket shows (TCP_NODELAY, the request sent within the call). The
parser alone: tests/test_keepalive_parser.py.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from stsd.model import RootCredentials, TenantEndpoint
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.pki import TestPKI
from stsd.twisted_private import UnbufferedTLSFactory
from stsd.upstream import keepalive, tls
from stsd.upstream.http import UpstreamError
from stsd.upstream.keepalive import KeepAliveClient
from stsd.upstream.minio import MinIOClient, MinIOError
from tests._trial import cases, expand, pytest_twisted_functions, serve_loopback, temporary_directory

READWRITE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}
POLICY = json.dumps(READWRITE).encode()


# -- scripted servers ------------------------------------------------------------------


class Scripted(Protocol):
    """
    Reads requests (each ends with an empty line; bodies are not expected
    unless Content-Length says so) and answers each with the next reply of
    the script: bytes, or a callable given the transport.
    """

    def __init__(self, server: Script) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            request = self.buffer[:head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            self.server.requests.append(request)
            reply = self.server.script.pop(0) if self.server.script else self.server.default
            if callable(reply):
                reply(self.transport)
            elif reply is not None:
                self.transport.write(reply)

    def connectionLost(self, reason: object = None) -> None:
        self.server.lost += 1


class Script:
    """
    What a scripted server answers, and what it saw: the requests, the
    connections made and how many were lost.
    """

    def __init__(self, *script: bytes | Callable[[Any], None] | None,
                 default: bytes | None = None) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[bytes] = []
        self.connections: list[Scripted] = []
        self.lost = 0

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: Scripted(self))


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# -- in memory: the client over MemoryReactorClock and iosim --------------------------
#
# The client's own HostnameEndpoint connects through a MemoryReactorClock;
# iosim's ConnectionCompleter joins each attempt to a Scripted server
# "listening" on that reactor, and its IOPump carries the bytes both ways
# when the test says so. Time moves only with clock.advance().

MEMORY_URL = "http://127.0.0.1:9000/"


class MemoryServer(Script):
    """A L{Scripted} server on a L{MemoryReactorClock}, and the client under test."""

    def __init__(self, *script: bytes | Callable[[Any], None] | None,
                 default: bytes | None = None, **client: Any) -> None:
        super().__init__(*script, default=default)
        self.reactor = MemoryReactorClock()
        self.reactor.listenTCP(9000, self.factory())
        self.client = KeepAliveClient(
            self.reactor, tls.VerifiedHTTPS(tls.CertificateTrust(())), **client)
        self.pumps: list[iosim.IOPump] = []
        self.url = MEMORY_URL

    def call(self, method: str = "GET", path: str = "", timeout: float = 5,
             **kwargs: Any) -> Deferred[Any]:
        d = self.client.request(method, self.url + path, target="the target",
                                timeout=timeout, **kwargs)
        self.flush()
        return d

    def flush(self) -> None:
        """Complete every connection attempt, then carry every byte both ways."""
        completer = iosim.ConnectionCompleter(self.reactor)
        for _ in range(100):
            pump = completer.succeedOnce()
            if pump is not None:
                self.pumps.append(pump)
            elif not any([pump.pump() for pump in self.pumps]):
                return
        raise AssertionError("still talking after 100 rounds")

    def answer(self, d: Deferred[Any], flush: bool = True) -> Any:
        """The result of a fired call, or raise its error."""
        if flush:
            self.flush()
        assert d.called, "no answer yet"
        results: list[Any] = []
        d.addBoth(results.append)
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


@expand
class MemoryTests(SynchronousTestCase):
    """Calls, framing, deadlines, resends and the pool, in memory."""

    def test_request_bytes_and_reuse(self) -> None:
        memory = MemoryServer(default=ok(b'{"a": 1}', b"X-Thing: yes\r\n"))
        for _ in range(5):
            response = memory.answer(memory.call(path="p?q=1", headers={"X-Sent": "1"}))
            assert (response.status, response.body, response.headers["x-thing"]) == (
                200, b'{"a": 1}', "yes")
        assert len(memory.connections) == 1, "one persistent connection for sequential calls"
        assert memory.requests == [b"GET /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"
                                   b"X-Sent: 1\r\n\r\n"] * 5

    def test_post_bytes(self) -> None:
        memory = MemoryServer(default=ok(b"done"))
        response = memory.answer(memory.call("POST", data=b"a=1&b=2",
                                             headers={"Host": "minio.test"}))
        assert response.body == b"done"
        assert memory.requests == [b"POST / HTTP/1.1\r\nHost: minio.test\r\n"
                                   b"Content-Length: 7\r\n\r\na=1&b=2"]

    def test_an_answer_in_pieces(self) -> None:
        wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        held: list[Any] = []
        memory = MemoryServer(held.append, ok(b"second"))
        d = memory.call()
        [transport] = held
        for i in range(len(wire)):
            assert not d.called, f"answered after {i} of {len(wire)} bytes"
            transport.write(wire[i:i + 1])
            memory.flush()
        assert memory.answer(d).body == b"hello world"
        assert memory.answer(memory.call()).body == b"second"
        assert len(memory.connections) == 1, "a chunked answer leaves the connection reusable"

    def test_interim_answer_and_no_content(self) -> None:
        memory = MemoryServer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real"),
                              b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"after"))
        assert memory.answer(memory.call()).body == b"real"
        response = memory.answer(memory.call())
        assert (response.status, response.body) == (204, b"")
        assert memory.answer(memory.call()).body == b"after"
        assert len(memory.connections) == 1

    def test_body_until_close_and_connection_close(self) -> None:
        def until_close(transport: Any) -> None:
            transport.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            transport.loseConnection()

        memory = MemoryServer(until_close, ok(b"x", b"Connection: close\r\n"),
                              b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", ok(b"last"))
        assert memory.answer(memory.call()).body == b"all of it"
        assert memory.answer(memory.call()).body == b"x"
        assert memory.answer(memory.call()).body == b"hi"
        assert memory.answer(memory.call()).body == b"last"
        # Each answer that says (or implies) close gets a new connection.
        assert len(memory.connections) == 4
        assert memory.lost == 3

    @cases("reply, message", [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nBad header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024), "response headers too large"),
    ])
    def test_broken_answers(self, reply: bytes, message: str) -> None:
        memory = MemoryServer(reply)
        with self.assertRaises(UpstreamError) as raised:
            memory.answer(memory.call())
        assert str(raised.exception) == f"the target: {message}"
        assert memory.lost == 1, "a connection with a broken answer is closed"

    def test_body_limit(self) -> None:
        memory = MemoryServer(ok(b"x" * 100), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"40\r\n" + b"y" * 64 + b"\r\n40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n",
                              max_body=99)
        for _ in range(2):
            with self.assertRaises(UpstreamError) as raised:
                memory.answer(memory.call())
            assert str(raised.exception) == "the target: response larger than 99 bytes"

    def test_the_deadline_covers_a_trickled_body(self) -> None:
        memory = MemoryServer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
        d = memory.call(timeout=0.3)
        assert memory.requests and not d.called
        memory.reactor.advance(0.29)
        assert not d.called, "the deadline is the whole call's, no earlier"
        memory.reactor.advance(0.01)
        with self.assertRaises(UpstreamError) as raised:
            memory.answer(d)
        assert str(raised.exception) == "the target: no answer within 0.3 seconds"
        assert memory.lost == 1, "giving up closes the connection"

    def test_the_deadline_covers_connecting(self) -> None:
        memory = MemoryServer(default=ok(b"late"))
        d = memory.client.request("GET", memory.url, target="the target", timeout=2)
        memory.reactor.advance(2)
        with self.assertRaisesRegex(UpstreamError, "no answer within 2 seconds"):
            memory.answer(d, flush=False)
        [(_, _, factory, _, _)] = memory.reactor.tcpClients
        assert memory.client.connections(memory.url) == (0, 0), "the attempt was cancelled"

    def test_connection_refused(self) -> None:
        memory = MemoryServer()
        d = memory.client.request("GET", memory.url, target="the target", timeout=5)
        iosim.ConnectionCompleter(memory.reactor).failOnce()
        memory.reactor.advance(0.3)  # HostnameEndpoint's next look at its attempts
        with self.assertRaises(UpstreamError) as raised:
            memory.answer(d, flush=False)
        assert str(raised.exception).startswith("the target: ConnectionRefusedError")

    def test_an_idle_connection_closed_by_the_server_is_replaced(self) -> None:
        memory = MemoryServer(default=ok(b"fine"))
        assert memory.answer(memory.call()).body == b"fine"
        # The server drops the idle connection; the pool has not noticed when
        # the next request is written to it. Sent once more, on a new connection.
        d = memory.client.request("GET", memory.url, target="the target", timeout=5)
        memory.connections[0].transport.loseConnection()
        assert memory.answer(d).body == b"fine"
        assert len(memory.connections) == 2
        # Read, not answered (closed as it arrived): no byte of an answer, so sent
        # once more.
        assert len(memory.requests) == 3

    def test_no_resend_once_an_answer_started(self) -> None:
        def half(transport: Any) -> None:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
            transport.loseConnection()

        memory = MemoryServer(ok(b"first"), half, default=ok(b"never"))
        memory.answer(memory.call())
        with self.assertRaises(UpstreamError) as raised:
            memory.answer(memory.call())
        assert "ConnectionDone" in str(raised.exception) or "ConnectionLost" in str(raised.exception)
        assert len(memory.requests) == 2, "the failed request was not sent again"

    def test_no_resend_on_a_new_connection(self) -> None:
        memory = MemoryServer(lambda transport: transport.loseConnection(), default=ok(b"never"))
        with self.assertRaises(UpstreamError):
            memory.answer(memory.call())
        assert len(memory.requests) == 1

    def test_idle_connections_kept_per_host_and_closed_after_idle_seconds(self) -> None:
        held: list[Any] = []
        memory = MemoryServer(*[held.append] * 5, default=ok(b"ok"), per_host=2, idle_seconds=0.2)
        calls = [memory.call() for _ in range(5)]
        assert len(held) == 5, "five calls at once: five connections"
        for transport in held:
            transport.write(ok(b"ok"))
        assert [memory.answer(d).body for d in calls] == [b"ok"] * 5
        assert memory.lost == 3, "only per_host connections are kept"
        memory.reactor.advance(0.19)
        memory.flush()
        assert memory.lost == 3, "not idle for idle_seconds yet"
        memory.reactor.advance(0.01)
        memory.flush()
        assert memory.lost == 5, "idle connections closed after idle_seconds"
        assert memory.answer(memory.call()).body == b"ok"

    def test_idle_time_counts_from_last_use(self) -> None:
        memory = MemoryServer(default=ok(b"ok"), idle_seconds=0.3)
        memory.answer(memory.call())
        memory.reactor.advance(0.2)
        memory.answer(memory.call())  # the same connection, idle again from now
        memory.reactor.advance(0.2)
        memory.flush()
        assert (len(memory.connections), memory.lost) == (1, 0), "used 0.2 s ago: kept"
        memory.reactor.advance(0.1)
        memory.flush()
        assert memory.lost == 1, "closed once idle for idle_seconds"

    def test_unsolicited_bytes_close_the_connection(self) -> None:
        memory = MemoryServer(ok(b"one") + b"HTTP/1.1 200 OK\r\n", default=ok(b"two"))
        assert memory.answer(memory.call()).body == b"one"
        assert memory.answer(memory.call()).body == b"two"
        assert len(memory.connections) == 2, "an answer with extra bytes is not reused"

    def test_cancel_aborts(self) -> None:
        memory = MemoryServer(None)
        d = memory.call()
        assert len(memory.requests) == 1
        d.cancel()
        d.addErrback(lambda _: None)
        memory.flush()
        assert memory.lost == 1
        assert memory.reactor.getDelayedCalls() == [], "the deadline went with the call"

    def test_close_closes_every_connection(self) -> None:
        memory = MemoryServer(default=ok(b"ok"))
        memory.answer(memory.call())
        closed = memory.client.close()
        memory.flush()
        assert closed.called and memory.lost == 1
        assert memory.reactor.getDelayedCalls() == [], "no idle sweep left"

    def test_only_http_urls(self) -> None:
        with self.assertRaises(ValueError):
            MemoryServer().client.request("GET", "ftp://example.test/", target="t", timeout=1)


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        # The idle timeout stays below common server idle timeouts (Go's
        # http.Server in MinIO), so the pool closes first in the usual case.
        assert keepalive.IDLE_SECONDS <= 30
        assert keepalive.PERSISTENT_PER_HOST == 64

    def test_tls_connections_are_not_write_buffered(self) -> None:
        from twisted.protocols.tls import BufferingTLSTransport

        assert not issubclass(UnbufferedTLSFactory.protocol, BufferingTLSTransport)


# -- on loopback: the fake MinIO over verified TLS, and what only a real socket shows ------


def url_of(port: IListeningPort) -> str:
    return f"http://127.0.0.1:{port.getHost().port}/"  # type: ignore[attr-defined]


async def get(client: KeepAliveClient, url: str, timeout: float = 5, **kwargs: Any) -> Any:
    return await client.request("GET", url, target="the target", timeout=timeout, **kwargs)


def verified_client(*authorities: Any) -> KeepAliveClient:
    return KeepAliveClient(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(authorities)))


@contextlib.asynccontextmanager
async def pooled() -> AsyncIterator[tuple[KeepAliveClient, Any, str]]:
    """
    A client with one connection in its pool (its first call done), to a
    scripted server on loopback answering every request; its URL.
    """
    async with serve_loopback(Script(default=ok(b"ok")).factory()) as port:
        client = verified_client()
        try:
            await get(client, url_of(port))
            [connection] = [c for idle in client._idle.values() for c in idle]
            yield client, connection, url_of(port)
        finally:
            await client.close()


class LoopbackTests(TestCase):
    """On the global reactor: each test closes its client, then its server (L{serve_loopback})."""

    def setUp(self) -> None:
        self.pki = TestPKI.create(temporary_directory(self))
        self.minio = FakeMinIO(access_key="root", secret_key="root-secret-Kq2", region="eu-west-1",
                               policies={"readwrite": READWRITE})
        self.minio_site = Site(FakeMinIORouter({"ns": self.minio}))

    def tenant(self, port: IListeningPort) -> TenantEndpoint:
        return TenantEndpoint("ns/t", f"https://localhost:{port.getHost().port}/ns",  # type: ignore[attr-defined]
                              RootCredentials("root", "root-secret-Kq2"))

    async def test_minio_over_verified_tls(self) -> None:
        minio = self.minio

        async with serve_loopback(self.minio_site, self.pki.server_options()) as port:
            http = verified_client(self.pki.ca_cert)
            tenant = self.tenant(port)
            client = MinIOClient(http, reactor, 5)
            try:
                region = await client.region(tenant)
                assert region == "eu-west-1"
                assert json.loads(await client.canned_policy(tenant, region, "readwrite")) == READWRITE
                before = minio.count("assumerole")
                issued = [await client.assume_role(tenant, region, POLICY, 900) for _ in range(3)]
                assert minio.count("assumerole") - before == 3
                assert len({i.access_key_id for i in issued}) == 3
                assert [m.access_key for m in minio.minted[-3:]] == [i.access_key_id for i in issued]
                # The wrong signing region is refused by the fake (it checks the scope).
                with self.assertRaises(MinIOError) as raised:
                    await client.assume_role(tenant, "us-east-1", POLICY, 900)
                assert "the region is wrong" in str(raised.exception)
            finally:
                await http.close()

    async def test_untrusted_certificate_refused(self) -> None:
        minio = self.minio
        other = TestPKI.create(temporary_directory(self) / "other")

        async with serve_loopback(self.minio_site, self.pki.server_options()) as port:
            http = verified_client(other.ca_cert)
            before = minio.count("assumerole")
            try:
                with self.assertRaises(MinIOError) as raised:
                    await MinIOClient(http, reactor, 5).assume_role(
                        self.tenant(port), "eu-west-1", POLICY, 900)
                assert "AssumeRole on tenant ns/t" in str(raised.exception)
                assert "root-secret-Kq2" not in str(raised.exception)
                assert minio.count("assumerole") == before, "nothing reaches an unverified server"
            finally:
                await http.close()

    async def test_connections_disable_nagle(self) -> None:
        async with pooled() as (client, connection, url):
            assert connection.transport.getTcpNoDelay()

    async def test_request_leaves_before_the_reactor_turn_ends(self) -> None:
        # Written and sent within the call: the server has it before this
        # reactor turn ends (and with it every other request of the turn).
        async with pooled() as (client, connection, url):
            d = client.request("GET", url + "again", target="t", timeout=5)
            socket = connection.transport
            assert socket._tempDataLen == 0 and socket.dataBuffer == b"", "nothing left to send"
            assert (await d).body == b"ok"


# -- the bound on connections per host (tenants.max_connections) ----------------------


class FakeEndpoint:
    """
    Connections that complete (or fail) when the test says so, over
    StringTransports: what a host behind a slow TLS handshake looks like.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Deferred[Any], Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append((d, factory))
        return d

    def complete(self, index: int) -> Any:
        d, factory = self.attempts[index]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d.callback(protocol)
        return protocol


HOST = "http://minio.test:9000"


def bounded(clock: Any, limit: int) -> tuple[KeepAliveClient, FakeEndpoint]:
    client = KeepAliveClient(clock, tls.VerifiedHTTPS(tls.CertificateTrust(())),
                             max_connections=limit)
    endpoint = FakeEndpoint()
    client._endpoints[("http", "minio.test", 9000)] = endpoint
    return client, endpoint


def call(client: KeepAliveClient, path: str, timeout: float = 10) -> Deferred[Any]:
    return client.request("GET", f"{HOST}/{path}", target="the target", timeout=timeout)


def sent(connection: Any) -> list[str]:
    """The request lines a connection has carried."""
    return [line.split(" ")[1] for line in connection.transport.value().decode().split("\r\n")
            if line.startswith("GET ")]


class BoundTests(SynchronousTestCase):
    """The bound on connections per host, over connections completed by the test."""

    def test_never_more_connections_than_the_bound_and_fifo(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 2)
        calls = [call(client, f"c{i}") for i in range(6)]
        assert len(endpoint.attempts) == 2, "two connections opening, four calls waiting"
        assert client.connections(HOST) == (2, 4)
        first, second = endpoint.complete(0), endpoint.complete(1)
        assert (sent(first), sent(second)) == (["/c0"], ["/c1"])
        # An answer gives the connection to the first call in line, not to the pool.
        first.dataReceived(ok(b"zero"))
        assert sent(first) == ["/c0", "/c2"]
        second.dataReceived(ok(b"one"))
        assert sent(second) == ["/c1", "/c3"]
        assert client.connections(HOST) == (2, 2)
        # A connection lost (the server closed it after its answer) frees its
        # slot for the next in line, which opens a new connection.
        second.dataReceived(ok(b"three", b"Connection: close\r\n"))
        second.connectionLost(Failure(ConnectionDone()))
        assert len(endpoint.attempts) == 3
        third = endpoint.complete(2)
        assert sent(third) == ["/c4"]
        first.dataReceived(ok(b"two"))
        assert sent(first) == ["/c0", "/c2", "/c5"]
        first.dataReceived(ok(b"five"))
        third.dataReceived(ok(b"four"))
        bodies = [c.result.body for c in calls]  # type: ignore[attr-defined]
        assert bodies == [b"zero", b"one", b"two", b"three", b"four", b"five"]
        assert len(endpoint.attempts) == 3, "never more than two at once, three in all"
        assert client.connections(HOST) == (2, 0)

    def test_a_call_waiting_past_its_deadline_fails_and_leaves_the_line(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        busy = call(client, "busy", timeout=10)
        waiting = call(client, "waiting", timeout=2)
        after = call(client, "after", timeout=10)
        assert client.connections(HOST) == (1, 2)
        clock.advance(2)
        error = waiting.result.value  # type: ignore[attr-defined]
        assert isinstance(error, UpstreamError)
        assert str(error) == "the target: no answer within 2 seconds"  # the usual timeout
        waiting.addErrback(lambda _: None)
        assert client.connections(HOST) == (1, 1)
        connection = endpoint.complete(0)
        connection.dataReceived(ok(b"busy"))
        assert sent(connection) == ["/busy", "/after"], "the expired call was skipped"
        assert busy.result.body == b"busy"  # type: ignore[attr-defined]
        assert not after.called

    def test_cancelling_a_waiting_call_removes_it_from_the_line(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        call(client, "busy")
        waiting = call(client, "waiting")
        waiting.cancel()
        waiting.addErrback(lambda _: None)
        assert client.connections(HOST) == (1, 0)
        connection = endpoint.complete(0)
        connection.dataReceived(ok(b"busy"))
        assert sent(connection) == ["/busy"]
        assert client._idle[("http", "minio.test", 9000)] == [connection], "idle: nobody waits"
        assert clock.getDelayedCalls() and all(  # only the idle sweep is left
            c.getTime() == keepalive.IDLE_SECONDS for c in clock.getDelayedCalls())

    def test_a_failed_connection_frees_its_slot_for_the_next(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        first, second = call(client, "a"), call(client, "b")
        endpoint.attempts[0][0].errback(ConnectionRefusedError())
        failure = first.result  # type: ignore[attr-defined]
        first.addErrback(lambda _: None)
        assert isinstance(failure.value, UpstreamError)
        assert "refused" in str(failure.value)
        assert len(endpoint.attempts) == 2, "the waiting call connects in the freed slot"
        assert client.connections(HOST) == (1, 0)
        endpoint.complete(1).dataReceived(ok(b"b"))
        assert second.result.body == b"b"  # type: ignore[attr-defined]

    def test_a_resend_keeps_its_slot_rather_than_waiting_in_line(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        warm = call(client, "warm")
        connection = endpoint.complete(0)
        connection.dataReceived(ok(b"warm"))
        assert warm.result.body == b"warm"  # type: ignore[attr-defined]
        reused = call(client, "reused")  # on the idle connection
        waiting = call(client, "waiting")
        assert client.connections(HOST) == (1, 1)
        # The server had closed the idle connection: the request is sent again on
        # a new connection, in the lost one's slot, ahead of the call in line.
        connection.connectionLost(Failure(ConnectionDone()))
        assert len(endpoint.attempts) == 2
        fresh = endpoint.complete(1)
        assert sent(fresh) == ["/reused"]
        assert client.connections(HOST) == (1, 1)
        fresh.dataReceived(ok(b"again"))
        assert reused.result.body == b"again"  # type: ignore[attr-defined]
        assert sent(fresh) == ["/reused", "/waiting"]
        assert not waiting.called

    def test_the_bound_is_per_host(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        other = FakeEndpoint()
        client._endpoints[("http", "other.test", 9000)] = other
        call(client, "a")
        client.request("GET", "http://other.test:9000/b", target="t", timeout=10)
        assert (len(endpoint.attempts), len(other.attempts)) == (1, 1)

    def test_default_bound(self) -> None:
        assert keepalive.MAX_CONNECTIONS_PER_HOST == 64
        from stsd.config import TenantsConfig

        assert TenantsConfig().max_connections == keepalive.MAX_CONNECTIONS_PER_HOST

    def test_a_call_expiring_while_connecting_passes_its_slot_on(self) -> None:
        clock = MemoryReactorClock()
        client, endpoint = bounded(clock, 1)
        early = call(client, "early", timeout=1)
        later = call(client, "later", timeout=10)
        clock.advance(1)
        early.addErrback(lambda _: None)
        # The expired call cancelled its connection attempt; the slot went to
        # the call in line, which connects.
        assert len(endpoint.attempts) == 2
        connection = endpoint.complete(1)
        assert sent(connection) == ["/later"]
        connection.dataReceived(ok(b"later"))
        assert later.result.body == b"later"  # type: ignore[attr-defined]
        assert client.connections(HOST) == (1, 0)


globals().update(pytest_twisted_functions(LoopbackTests))
