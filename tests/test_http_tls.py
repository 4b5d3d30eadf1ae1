"""
Tests for L{stsd.http.tls}: the STS port's server TLS options, with in-memory handshakes.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from stsd.http import tls
from stsd.testing.pki import TestPKI
from tests._trial import temporary_directory


def _handshake(server: SSL.Context, version: int) -> str:
    """
    A TLS handshake in memory, the client limited to exactly C{version}.
    """
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(version)
    client_context.set_max_proto_version(version)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    peer = SSL.Connection(server, None)
    peer.set_accept_state()
    for _ in range(10):
        for a, b in ((client, peer), (peer, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
    assert client.get_protocol_version_name() == peer.get_protocol_version_name()
    return peer.get_protocol_version_name()


class ServerTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = TestPKI.create(temporary_directory(self))

    def test_server_minimum_tls12(self) -> None:
        options = tls.server_options(str(self.pki.cert_path), str(self.pki.key_path))
        context = options.getContext()
        # pyOpenSSL 26 has no Context.get_options; a Connection inherits the
        # context's options, and set_options(0) returns them unchanged.
        flags = SSL.Connection(context, None).set_options(0)
        for disabled in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(flags & disabled, hex(disabled))
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_3)
        self.assertEqual(_handshake(context, SSL.TLS1_2_VERSION), "TLSv1.2")
        self.assertEqual(_handshake(context, SSL.TLS1_3_VERSION), "TLSv1.3")
        with self.assertRaises(SSL.Error):
            _handshake(context, SSL.TLS1_1_VERSION)

    def test_server_options_serve_the_certificate(self) -> None:
        options = tls.server_options(str(self.pki.cert_path), str(self.pki.key_path))
        self.assertEqual(options.certificate, self.pki.cert)
        self.assertEqual(options.privateKey.private_numbers(), self.pki.key.private_numbers())
