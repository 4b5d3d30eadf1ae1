"""
Tests for L{stsd.keepalive}: the keep-alive HTTP/1.1 client of the MinIO
calls, on real loopback connections — the fake MinIO over verified TLS,
and scripted servers that answer with exact bytes (framings, broken
answers, hangs, closes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.server import Site

from stsd import keepalive, tls
from stsd.keepalive import KeepAliveClient
from stsd.minio_client import MinIOClient, MinIOError, RootCredentials, TenantEndpoint
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.pki import TestPKI
from stsd.upstream import UpstreamError

READWRITE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}
POLICY = json.dumps(READWRITE).encode()


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


# -- scripted servers ------------------------------------------------------------------


class Scripted(Protocol):
    """
    Reads requests (each ends with an empty line; bodies are not expected
    unless Content-Length says so) and answers each with the next reply of
    the script: bytes, or a callable given the transport.
    """

    def __init__(self, server: ScriptedServer) -> None:
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


class ScriptedServer:
    def __init__(self, *script: bytes | Callable[[Any], None] | None,
                 default: bytes | None = None) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[bytes] = []
        self.connections: list[Scripted] = []
        self.lost = 0
        self.port = reactor.listenTCP(0, Factory.forProtocol(lambda: Scripted(self)),
                                      interface="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/"

    def stop(self) -> Deferred[None]:
        for connection in self.connections:
            connection.transport.abortConnection()
        from twisted.internet.defer import maybeDeferred
        return maybeDeferred(self.port.stopListening)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
def servers():
    started: list[ScriptedServer] = []

    def start(*script: Any, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(*script, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        pytest_twisted.blockon(server.stop())


@pytest.fixture
def client():
    made = KeepAliveClient(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(())))
    yield made
    pytest_twisted.blockon(made.close())


async def get(client: KeepAliveClient, url: str, timeout: float = 5, **kwargs: Any):
    return await client.request("GET", url, target="the target", timeout=timeout, **kwargs)


# -- framing ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_content_length_and_reuse(servers, client) -> None:
    server = servers(default=ok(b'{"a": 1}', b"X-Thing: yes\r\n"))
    for _ in range(5):
        response = await get(client, server.url + "p?q=1", headers={"X-Sent": "1"})
        assert (response.status, response.body, response.headers["x-thing"]) == (
            200, b'{"a": 1}', "yes")
    assert len(server.connections) == 1, "one persistent connection for sequential calls"
    first = server.requests[0].decode()
    assert first.startswith("GET /p?q=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port.getHost().port}\r\n" in first
    assert "X-Sent: 1\r\n" in first


@pytest_twisted.ensureDeferred
async def test_post_body_and_length(servers, client) -> None:
    server = servers(default=ok(b"done"))
    response = await client.request("POST", server.url, target="t", timeout=5, data=b"a=1&b=2")
    assert response.body == b"done"
    assert server.requests[0].endswith(b"Content-Length: 7\r\n\r\na=1&b=2")


@pytest_twisted.ensureDeferred
async def test_chunked_with_trailers_in_pieces(servers, client) -> None:
    def trickle(transport: Any) -> None:
        data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        for i in range(len(data)):
            reactor.callLater(0.001 * i, transport.write, data[i:i + 1])

    server = servers(trickle, ok(b"second"))
    assert (await get(client, server.url)).body == b"hello world"
    assert (await get(client, server.url)).body == b"second"
    assert len(server.connections) == 1, "a chunked answer leaves the connection reusable"


@pytest_twisted.ensureDeferred
async def test_interim_answer_and_no_content(servers, client) -> None:
    server = servers(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real"),
                     b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"after"))
    assert (await get(client, server.url)).body == b"real"
    response = await get(client, server.url)
    assert (response.status, response.body) == (204, b"")
    assert (await get(client, server.url)).body == b"after"
    assert len(server.connections) == 1


@pytest_twisted.ensureDeferred
async def test_body_until_close_and_connection_close(servers, client) -> None:
    def until_close(transport: Any) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        transport.loseConnection()

    server = servers(until_close, ok(b"x", b"Connection: close\r\n"),
                     b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", ok(b"last"))
    assert (await get(client, server.url)).body == b"all of it"
    assert (await get(client, server.url)).body == b"x"
    assert (await get(client, server.url)).body == b"hi"
    assert (await get(client, server.url)).body == b"last"
    # Each answer that says (or implies) close gets a new connection.
    assert len(server.connections) == 4


@pytest.mark.parametrize("reply, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 status line"),
    (b"HTTP/1.1 200 OK\r\nBad header\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "bad content-length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024), "response headers too large"),
])
@pytest_twisted.ensureDeferred
async def test_broken_answers(servers, client, reply: bytes, message: str) -> None:
    server = servers(reply)
    with pytest.raises(UpstreamError) as raised:
        await get(client, server.url)
    assert str(raised.value) == f"the target: {message}"
    await sleep(0.05)
    assert server.lost == 1, "a connection with a broken answer is closed"


@pytest_twisted.ensureDeferred
async def test_body_limit(servers) -> None:
    server = servers(ok(b"x" * 100), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"40\r\n" + b"y" * 64 + b"\r\n40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n")
    small = KeepAliveClient(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(())), max_body=99)
    try:
        for _ in range(2):
            with pytest.raises(UpstreamError) as raised:
                await get(small, server.url)
            assert str(raised.value) == "the target: response larger than 99 bytes"
    finally:
        await small.close()


# -- deadlines, closes, resends --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deadline_covers_a_trickled_body(servers, client) -> None:
    server = servers(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
    began = time.monotonic()
    with pytest.raises(UpstreamError) as raised:
        await get(client, server.url, timeout=0.3)
    assert str(raised.value) == "the target: no answer within 0.3 seconds"
    assert 0.25 < time.monotonic() - began < 2
    await sleep(0.05)
    assert server.lost == 1, "giving up closes the connection"


@pytest_twisted.ensureDeferred
async def test_connection_refused(servers, client) -> None:
    server = servers()
    url = server.url
    await server.stop()
    with pytest.raises(UpstreamError) as raised:
        await get(client, url)
    assert str(raised.value).startswith("the target: ConnectionRefusedError")


@pytest_twisted.ensureDeferred
async def test_idle_connection_closed_by_server_is_replaced(servers, client) -> None:
    server = servers(default=ok(b"fine"))
    assert (await get(client, server.url)).body == b"fine"
    # The server drops the idle connection; the pool may not notice before
    # the next request is written to it.
    server.connections[0].transport.loseConnection()
    assert (await get(client, server.url)).body == b"fine"
    assert len(server.connections) == 2


@pytest_twisted.ensureDeferred
async def test_no_resend_once_an_answer_started(servers, client) -> None:
    def half(transport: Any) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
        transport.loseConnection()

    server = servers(ok(b"first"), half, default=ok(b"never"))
    await get(client, server.url)
    with pytest.raises(UpstreamError) as raised:
        await get(client, server.url)
    assert "ConnectionDone" in str(raised.value) or "ConnectionLost" in str(raised.value)
    assert len(server.requests) == 2, "the failed request was not sent again"


@pytest_twisted.ensureDeferred
async def test_no_resend_on_a_new_connection(servers, client) -> None:
    server = servers(lambda transport: transport.loseConnection(), default=ok(b"never"))
    with pytest.raises(UpstreamError):
        await get(client, server.url)
    assert len(server.requests) == 1


@pytest_twisted.ensureDeferred
async def test_pool_bound_and_idle_timeout(servers) -> None:
    server = servers(default=ok(b"ok"))
    small = KeepAliveClient(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(())),
                            per_host=2, idle_seconds=0.2)
    try:
        from twisted.internet.defer import gatherResults
        await gatherResults([Deferred.fromCoroutine(get(small, server.url)) for _ in range(5)])
        await sleep(0.05)
        assert len(server.connections) == 5
        assert server.lost == 3, "only per_host connections are kept"
        await sleep(0.4)
        assert server.lost == 5, "idle connections are closed after idle_seconds"
        assert (await get(small, server.url)).body == b"ok"
    finally:
        await small.close()


@pytest_twisted.ensureDeferred
async def test_unsolicited_bytes_close_the_connection(servers, client) -> None:
    server = servers(ok(b"one") + b"HTTP/1.1 200 OK\r\n", default=ok(b"two"))
    assert (await get(client, server.url)).body == b"one"
    assert (await get(client, server.url)).body == b"two"
    assert len(server.connections) == 2, "an answer with extra bytes is not reused"


@pytest_twisted.ensureDeferred
async def test_cancel_aborts(servers, client) -> None:
    server = servers(None)
    d = client.request("GET", server.url, target="t", timeout=5)
    await sleep(0.05)
    d.cancel()
    with pytest.raises(Exception):  # noqa: B017 - CancelledError, whatever its module
        await d
    await sleep(0.05)
    assert server.lost == 1


def test_only_http_urls(client) -> None:
    with pytest.raises(ValueError):
        client.request("GET", "ftp://example.test/", target="t", timeout=1)


# -- the fake MinIO over verified TLS --------------------------------------------------


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory):
    pki = TestPKI.create(tmp_path_factory.mktemp("pki"))
    minio = FakeMinIO(access_key="root", secret_key="root-secret-Kq2", region="eu-west-1",
                      policies={"readwrite": READWRITE})
    port = reactor.listenSSL(0, Site(FakeMinIORouter({"ns": minio})), pki.server_options(),
                             interface="127.0.0.1")
    yield pki, minio, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_minio_over_verified_tls(tls_world) -> None:
    pki, minio, port = tls_world
    trust = tls.CertificateTrust((pki.ca_cert,))
    http = KeepAliveClient(reactor, tls.VerifiedHTTPS(trust))
    tenant = TenantEndpoint("ns/t", f"https://localhost:{port}/ns",
                            RootCredentials("root", "root-secret-Kq2"))
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
        with pytest.raises(MinIOError) as raised:
            await client.assume_role(tenant, "us-east-1", POLICY, 900)
        assert "the region is wrong" in str(raised.value)
    finally:
        await http.close()


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_refused(tls_world, tmp_path) -> None:
    _, minio, port = tls_world
    other = TestPKI.create(tmp_path / "other")
    http = KeepAliveClient(reactor, tls.VerifiedHTTPS(
        tls.CertificateTrust((other.ca_cert,))))
    tenant = TenantEndpoint("ns/t", f"https://localhost:{port}/ns",
                            RootCredentials("root", "root-secret-Kq2"))
    before = minio.count("assumerole")
    try:
        with pytest.raises(MinIOError) as raised:
            await MinIOClient(http, reactor, 5).assume_role(tenant, "eu-west-1", POLICY, 900)
        assert "AssumeRole on tenant ns/t" in str(raised.value)
        assert "root-secret-Kq2" not in str(raised.value)
        assert minio.count("assumerole") == before, "nothing reaches an unverified server"
    finally:
        await http.close()


def test_defaults() -> None:
    # The idle timeout stays below common server idle timeouts (Go's
    # http.Server in MinIO), so the pool closes first in the usual case.
    assert keepalive.IDLE_SECONDS <= 30
    assert keepalive.PERSISTENT_PER_HOST == 64


@pytest_twisted.ensureDeferred
async def test_connections_disable_nagle(servers, client) -> None:
    server = servers(default=ok(b"ok"))
    await get(client, server.url)
    [connection] = [c for idle in client._idle.values() for c in idle]
    assert connection.transport.getTcpNoDelay()


@pytest_twisted.ensureDeferred
async def test_idle_time_counts_from_last_use(servers) -> None:
    server = servers(default=ok(b"ok"))
    pool = KeepAliveClient(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(())),
                           idle_seconds=0.3)
    try:
        await get(pool, server.url)
        await sleep(0.2)
        await get(pool, server.url)  # the same connection, idle again from now
        await sleep(0.2)
        assert (len(server.connections), server.lost) == (1, 0), "used 0.2 s ago: kept"
        await sleep(0.3)
        assert server.lost == 1, "closed once idle for idle_seconds"
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_request_leaves_before_the_reactor_turn_ends(servers, client) -> None:
    # Written and sent within the call: the server has it before this
    # reactor turn ends (and with it every other request of the turn).
    server = servers(default=ok(b"ok"))
    await get(client, server.url)  # a connection in the pool
    [connection] = [c for idle in client._idle.values() for c in idle]
    d = client.request("GET", server.url + "again", target="t", timeout=5)
    socket = connection.transport
    assert socket._tempDataLen == 0 and socket.dataBuffer == b"", "nothing left to send"
    assert (await d).body == b"ok"


def test_tls_connections_are_not_write_buffered() -> None:
    from twisted.protocols.tls import BufferingTLSTransport

    assert not issubclass(keepalive._DirectTLSFactory.protocol, BufferingTLSTransport)
