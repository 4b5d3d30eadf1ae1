"""
Tests for L{stsd.ops.certreload}: the server certificate is reloaded when a
mounted Secret's files change, a bad pair keeps the current one, and
connections made before a reload are not disturbed.

Most tests are in memory (a L{Clock}, the files in a temporary directory
laid out as the kubelet lays out a mounted Secret); one runs real TLS over
loopback.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from stsd.ops import certreload
from stsd.ops.certreload import CertificateLoadError, CertificateReloader, ReloadingServerOptions
from stsd.testing.pki import TestPKI
from tests._trial import cases, expand, pytest_twisted_functions, temporary_directory

INTERVAL = certreload.DEFAULT_INTERVAL
Pair = tuple[bytes, bytes]


class MountedSecret:
    """
    A directory updated the way the kubelet updates a mounted Secret: the
    files go to a new C{..<timestamp>} directory, a C{..data} symlink is
    swapped onto it atomically, C{tls.crt} and C{tls.key} are symlinks
    through C{..data}, and the previous directory is removed.
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._generation = 0

    @property
    def cert_path(self) -> str:
        return str(self.root / "tls.crt")

    @property
    def key_path(self) -> str:
        return str(self.root / "tls.key")

    def write(self, cert_pem: bytes, key_pem: bytes, *, mtime: float | None = None) -> None:
        self._generation += 1
        name = f"..2026_11_30_{self._generation:02d}"
        directory = self.root / name
        directory.mkdir()
        for file, content in (("tls.crt", cert_pem), ("tls.key", key_pem)):
            (directory / file).write_bytes(content)
            if mtime is not None:
                os.utime(directory / file, (mtime, mtime))
        data = self.root / "..data"
        previous = os.readlink(data) if data.is_symlink() else None
        os.symlink(name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", data)
        for file in ("tls.crt", "tls.key"):
            if not (self.root / file).is_symlink():
                os.symlink(f"..data/{file}", self.root / file)
        if previous is not None:
            for file in (self.root / previous).iterdir():
                file.unlink()
            (self.root / previous).rmdir()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mounted_secret(directory: pathlib.Path) -> tuple[TestPKI, MountedSecret]:
    """A CA and a leaf for localhost, the leaf's pair mounted as a Secret, in C{directory}."""
    pki = TestPKI.create(directory / "pki", hostnames=("localhost",), ips=("127.0.0.1",))
    root = directory / "secret"
    root.mkdir()
    mounted = MountedSecret(root)
    mounted.write(pki.cert_path.read_bytes(), pki.key_path.read_bytes())
    return pki, mounted


def leaf_of(options: ReloadingServerOptions) -> x509.Certificate:
    cert = options.current.certificate
    assert isinstance(cert, x509.Certificate)
    return cert


def new_leaf(pki: TestPKI) -> Pair:
    return pki.issue(hostnames=("localhost",), ips=("127.0.0.1",))


def warnings_in(events: list[dict]) -> list[dict]:
    return [e for e in events if e["log_level"] >= LogLevel.warn]


# --- in memory ---------------------------------------------------------------


@expand
class CertificateReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki, self.secret = mounted_secret(temporary_directory(self))
        # Certificate validity is judged by this clock: start it at the real time.
        self.clock = Clock()
        self.clock.advance(time.time())

    def started_reloader(self) -> CertificateReloader:
        reloader = CertificateReloader(self.secret.cert_path, self.secret.key_path, self.clock, INTERVAL)
        reloader.startService()
        self.addCleanup(lambda: reloader.running and reloader.stopService())
        return reloader

    def test_serves_the_mounted_pair(self) -> None:
        reloader = CertificateReloader(self.secret.cert_path, self.secret.key_path, self.clock)
        assert verifyObject(IOpenSSLServerConnectionCreator, reloader.options)
        assert reloader.certificate == self.pki.cert
        assert leaf_of(reloader.options) == self.pki.cert
        assert reloader.not_after == self.pki.cert.not_valid_after_utc
        assert reloader.loaded_at == self.clock.seconds()
        assert (reloader.reloads, reloader.failures, reloader.last_error) == (0, 0, None)
        # getContext (older callers) gives the current options' context.
        assert reloader.options.getContext() is reloader.options.current.getContext()

    def test_symlink_swap_is_reloaded_within_the_interval(self) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        cert_pem, key_pem = new_leaf(self.pki)
        # Older modification times than the files they replace: only the
        # contents tell that they changed.
        self.secret.write(cert_pem, key_pem, mtime=time.time() - 86400)

        self.clock.advance(INTERVAL - 0.5)
        assert reloader.options.current is before
        self.clock.advance(0.5)

        new = x509.load_pem_x509_certificate(cert_pem)
        assert reloader.options.current is not before
        assert leaf_of(reloader.options) == new
        assert reloader.certificate == new
        assert reloader.not_after == new.not_valid_after_utc
        assert reloader.loaded_at == self.clock.seconds()
        assert (reloader.reloads, reloader.failures, reloader.last_error) == (1, 0, None)
        # The options serving earlier connections are left as they were.
        assert before.certificate == self.pki.cert

    def test_unchanged_files_are_not_reloaded(self) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        os.utime(self.secret.cert_path, None)  # newer mtime, same contents
        self.clock.pump([INTERVAL] * 5)
        assert reloader.options.current is before
        assert (reloader.reloads, reloader.failures) == (0, 0)

    def test_new_connections_get_the_new_context_earlier_ones_keep_theirs(self) -> None:
        reloader = self.started_reloader()
        # Through Twisted's TLS layer, as a listening port uses it.
        factory = TLSMemoryBIOFactory(
            reloader.options, False, Factory.forProtocol(Protocol), clock=self.clock
        )

        def accept():  # type: ignore[no-untyped-def]
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            return protocol

        first = accept()
        old_context = reloader.options.current.getContext()
        assert first._tlsConnection.get_context() is old_context

        self.secret.write(*new_leaf(self.pki))
        self.clock.advance(INTERVAL)
        assert reloader.reloads == 1

        second = accept()
        assert second._tlsConnection.get_context() is reloader.options.current.getContext()
        assert second._tlsConnection.get_context() is not old_context
        assert first._tlsConnection.get_context() is old_context
        for protocol in (first, second):
            protocol.transport.loseConnection()

    def test_garbage_certificate_keeps_the_current_one_then_a_good_one_loads(self) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        _, key_pem = new_leaf(self.pki)
        with capturedLogs() as events:
            self.secret.write(b"-----BEGIN CERTIFICATE-----\nnot base64\n", key_pem)
            self.clock.advance(INTERVAL)
            assert reloader.options.current is before
            assert reloader.failures == 1
            assert reloader.last_error is not None and "tls.crt" in reloader.last_error
            # Retried every tick (counted), logged once.
            self.clock.advance(INTERVAL)
            assert reloader.failures == 2
        [warning] = warnings_in(list(events))
        assert warning["log_level"] == LogLevel.warn
        assert warning["cert_path"] == self.secret.cert_path
        assert warning["key_path"] == self.secret.key_path
        assert "tls.crt" in warning["reason"]
        assert "keeping the current one" in formatEvent(warning)

        cert_pem, key_pem = new_leaf(self.pki)
        self.secret.write(cert_pem, key_pem)
        self.clock.advance(INTERVAL)
        assert leaf_of(reloader.options) == x509.load_pem_x509_certificate(cert_pem)
        assert (reloader.reloads, reloader.failures, reloader.last_error) == (1, 2, None)

    def test_mismatched_key_keeps_the_current_one_and_never_logs_the_key(self) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        cert_pem, _ = new_leaf(self.pki)
        _, other_key_pem = new_leaf(self.pki)
        with capturedLogs() as events:
            self.secret.write(cert_pem, other_key_pem)
            self.clock.advance(INTERVAL)
        assert reloader.options.current is before
        assert reloader.failures == 1
        [warning] = warnings_in(list(events))
        assert "is not the key of" in warning["reason"]
        key_body = other_key_pem.decode().splitlines()[1]
        assert key_body not in repr(list(events))
        assert all(key_body not in formatEvent(e) for e in events)

        good = new_leaf(self.pki)
        self.secret.write(*good)
        self.clock.advance(INTERVAL)
        assert leaf_of(reloader.options) == x509.load_pem_x509_certificate(good[0])

    @cases("damage", [
        lambda c, k: (c[: len(c) // 2], k),
        lambda c, k: (c, k[: len(k) // 2]),
        lambda c, k: (c, b""),
        lambda c, k: (k, c),
    ], ids=["half-written certificate", "half-written key", "empty key", "swapped files"])
    def test_damaged_pair_keeps_the_current_one(self, damage: Callable[[bytes, bytes], Pair]) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        good = new_leaf(self.pki)
        self.secret.write(*damage(*good))
        self.clock.advance(INTERVAL)
        assert reloader.options.current is before
        assert reloader.failures == 1
        # The completed files are picked up on the next tick.
        self.secret.write(*good)
        self.clock.advance(INTERVAL)
        assert leaf_of(reloader.options) == x509.load_pem_x509_certificate(good[0])
        assert reloader.last_error is None

    def test_missing_files_keep_the_current_one_and_the_loop_running(self) -> None:
        reloader = self.started_reloader()
        before = reloader.options.current
        (self.secret.root / "..data").unlink()
        self.clock.advance(INTERVAL)
        assert reloader.options.current is before
        assert reloader.last_error is not None and "cannot read" in reloader.last_error
        assert reloader._timer._loop.running

        self.secret.write(*new_leaf(self.pki))
        self.clock.advance(INTERVAL)
        assert reloader.reloads == 1

    def test_an_unexpected_error_is_logged_and_the_loop_keeps_running(self) -> None:
        reloader = self.started_reloader()
        def broken(*args: object) -> None:
            raise RuntimeError("bug")

        patched = self.patch(certreload, "_load", broken)
        self.secret.write(*new_leaf(self.pki))
        with capturedLogs() as events:
            self.clock.advance(INTERVAL)
        assert reloader.failures == 1
        assert any("log_failure" in e for e in events)
        assert len(self.flushLoggedErrors(RuntimeError)) == 1  # (logged, not raised)
        assert reloader._timer._loop.running

        patched.restore()
        self.clock.advance(INTERVAL)
        assert reloader.reloads == 1

    def test_a_not_yet_valid_certificate_waits_until_it_is_valid(self) -> None:
        reloader = self.started_reloader()
        # A new certificate whose notBefore is a minute ahead (self.clock skew
        # between the issuer and this node): clients would refuse it now.
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.pki.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(seconds=60))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.pki.ca_key, hashes.SHA256())
        )
        before = reloader.options.current
        self.secret.write(_pem(cert), _key_pem(key))
        self.clock.advance(INTERVAL)
        assert reloader.options.current is before
        assert reloader.last_error is not None and "valid only from" in reloader.last_error

        self.clock.pump([INTERVAL] * 13)  # 65 s later
        assert leaf_of(reloader.options) == cert
        assert reloader.reloads == 1

    def test_a_swap_while_reading_is_read_again(self) -> None:
        reloader = self.started_reloader()
        # The symlink is swapped right after the certificate was read, so the
        # key read next is the new one: the pair is read again, not rejected.
        cert_pem, key_pem = new_leaf(self.pki)
        real_read = certreload._read
        swapped = []

        def read(path: str) -> bytes:
            content = real_read(path)
            if path == self.secret.cert_path and not swapped:
                swapped.append(True)
                self.secret.write(cert_pem, key_pem)
            return content

        self.patch(certreload, "_read", read)
        with capturedLogs() as events:
            assert reloader.check() is True
        assert swapped
        assert leaf_of(reloader.options) == x509.load_pem_x509_certificate(cert_pem)
        assert reloader.failures == 0
        assert warnings_in(list(events)) == []

    def test_a_bad_pair_at_start_up_raises(self) -> None:
        _, other_key_pem = new_leaf(self.pki)
        self.secret.write(self.pki.cert_path.read_bytes(), other_key_pem)
        with self.assertRaisesRegex(CertificateLoadError, "is not the key of") as raised:
            CertificateReloader(self.secret.cert_path, self.secret.key_path, self.clock)
        assert other_key_pem.decode().splitlines()[1] not in str(raised.exception)

        with self.assertRaisesRegex(CertificateLoadError, "cannot read"):
            CertificateReloader(str(self.secret.root / "nothing.crt"), self.secret.key_path, self.clock)

        with self.assertRaisesRegex(ValueError, "interval"):
            CertificateReloader(self.secret.cert_path, self.pki.key_path.as_posix(), self.clock, interval=0)

    def test_stop_service_stops_polling(self) -> None:
        reloader = self.started_reloader()
        done = reloader.stopService()
        assert done is not None
        assert done.called
        assert self.clock.getDelayedCalls() == []


# --- over loopback -------------------------------------------------------------


@implementer(IHandshakeListener)
class EchoClient(Protocol):
    """Sends lines and waits for their echo; remembers the server's certificate."""

    def __init__(self) -> None:
        self.handshake: Deferred[x509.Certificate] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._buffer = b""
        self._waiting: tuple[bytes, Deferred[bytes]] | None = None

    def handshakeCompleted(self) -> None:
        peer = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.handshake.callback(peer.to_cryptography())

    def roundtrip(self, data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting = (data, d)
        self.transport.write(data)  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self._waiting is not None and self._buffer.endswith(self._waiting[0]):
            d, received = self._waiting[1], self._buffer
            self._waiting, self._buffer = None, b""
            d.callback(received)

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


class Echo(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


class EchoFactory(Factory):
    def __init__(self) -> None:
        self.connections: list[Echo] = []

    def buildProtocol(self, addr: object) -> Echo:
        protocol = Echo()
        protocol.factory = self
        self.connections.append(protocol)
        return protocol


class OverLoopbackTests(TestCase):
    def setUp(self) -> None:
        self.pki, self.secret = mounted_secret(temporary_directory(self))
        self.clock = Clock()
        self.clock.advance(time.time())

    async def test_over_loopback_old_connection_survives_new_one_gets_new_certificate(self) -> None:
        reloader = CertificateReloader(self.secret.cert_path, self.secret.key_path, self.clock)
        server_factory = EchoFactory()
        port = await SSL4ServerEndpoint(
            reactor, 0, reloader.options, interface="127.0.0.1"
        ).listen(server_factory)
        clients: list[EchoClient] = []

        async def connect() -> EchoClient:
            endpoint = SSL4ClientEndpoint(
                reactor, "127.0.0.1", port.getHost().port, self.pki.client_options("127.0.0.1")
            )
            client = await connectProtocol(endpoint, EchoClient())
            clients.append(client)
            return client

        try:
            a = await connect()
            assert await a.roundtrip(b"before\n") == b"before\n"
            assert await a.handshake == self.pki.cert

            cert_pem, key_pem = new_leaf(self.pki)
            self.secret.write(cert_pem, key_pem)
            assert reloader.check() is True

            b = await connect()
            assert await b.roundtrip(b"new\n") == b"new\n"
            seen_by_b = await b.handshake
            assert seen_by_b == x509.load_pem_x509_certificate(cert_pem)
            assert seen_by_b.serial_number != self.pki.cert.serial_number

            # A, made before the reload, still works, with its certificate.
            assert a.transport is not None and a.transport.connected  # type: ignore[attr-defined]
            assert await a.roundtrip(b"after\n") == b"after\n"
            assert a.transport.getPeerCertificate().to_cryptography() == self.pki.cert  # type: ignore[union-attr]
            assert len(server_factory.connections) == 2
            assert not any(c.lost.called for c in server_factory.connections)
        finally:
            for client in clients:
                client.transport.loseConnection()  # type: ignore[union-attr]
            for client in clients:
                await client.lost
            for connection in server_factory.connections:
                await connection.lost
            await port.stopListening()


globals().update(pytest_twisted_functions(OverLoopbackTests))
