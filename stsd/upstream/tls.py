# -*- test-case-name: tests.test_tls -*-
"""
TLS for stsd's calls: the verified client connections to Kubernetes and
the tenants (TLS 1.2+), and the PEM readers and minimum version the STS
port's server options (L{stsd.http.tls}) share.

Everything is built from C{cryptography} objects (pyOpenSSL's X509/PKey
are deprecated), and files are read when the options are built, at
start-up, never on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import TLSVersion, optionsForClientTLS
from twisted.web.iweb import IPolicyForHTTPS
# Private to Twisted; stsd.twisted_private says why it is used and its test checks
# it. Imported from Twisted by name here so that the API docs resolve the interface.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from zope.interface import implementer

MINIMUM_TLS = TLSVersion.TLSv1_2


def read_certificates(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def read_private_key(path: str) -> PrivateKeyTypes:
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


@implementer(IOpenSSLTrustRoot)
@dataclass(frozen=True)
class CertificateTrust:
    """
    Trust the given CA certificates and, optionally, the system's store.

    Twisted's own trust roots are either the platform's or a fixed list,
    never both; tenants need both (public CAs and the cluster's CA).
    """

    certificates: tuple[x509.Certificate, ...]
    system: bool = False

    def _addCACertsToContext(self, context: SSL.Context) -> None:  # twisted_private.TRUST_ROOT_METHOD
        if self.system:
            context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for cert in self.certificates:
            store.add_cert(X509.from_cryptography(cert))


def trust_from_files(paths: Sequence[str], *, system: bool) -> CertificateTrust:
    certs: list[x509.Certificate] = []
    for path in paths:
        certs.extend(read_certificates(path))
    return CertificateTrust(tuple(certs), system=system)


@implementer(IPolicyForHTTPS)
@dataclass
class VerifiedHTTPS:
    """
    The HTTPS policy for upstream calls: the server must present a
    certificate for the host name (or IP address) in the URL, signed by
    C{trust}; optionally present a client certificate (kubeconfigs of
    kind/minikube clusters authenticate that way).
    """

    trust: CertificateTrust
    client_cert: x509.Certificate | None = None
    client_key: object | None = None
    _creators: dict[tuple[bytes, int], IOpenSSLClientConnectionCreator] = field(
        default_factory=dict, repr=False
    )

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        # One context per upstream host, made once: building an SSL
        # context per connection costs far more than the handshake.
        key = (hostname, port)
        creator = self._creators.get(key)
        if creator is None:
            extra: dict[str, object] = {"raiseMinimumTo": MINIMUM_TLS}
            if self.client_cert is not None:
                extra.update(privateKey=self.client_key, certificate=self.client_cert)
            creator = optionsForClientTLS(
                hostname.decode("ascii"), trustRoot=self.trust, extraCertificateOptions=extra
            )
            self._creators[key] = creator
        return creator
