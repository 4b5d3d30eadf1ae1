"""
Tests for L{stsd.upstream.tls}: the verifying client policy. (The server's
options, L{stsd.http.tls}, are tested in test_http_tls.py.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from stsd.testing.pki import TestPKI
from stsd.upstream import tls
from tests._trial import temporary_directory


class TLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = TestPKI.create(temporary_directory(self))

    def test_creator_per_netloc_is_reused(self) -> None:
        policy = tls.VerifiedHTTPS(tls.trust_from_files([str(self.pki.ca_path)], system=False))
        first = policy.creatorForNetloc(b"minio.test", 443)
        self.assertIs(policy.creatorForNetloc(b"minio.test", 443), first)
        self.assertIsNot(policy.creatorForNetloc(b"minio.test", 9000), first)
        self.assertIsNot(policy.creatorForNetloc(b"other.test", 443), first)
        self.assertIs(policy.creatorForNetloc(b"minio.test", 443), first)
