# -*- test-case-name: tests.test_fakes -*-
"""A throwaway certificate authority for tests: one CA, server leaves on demand."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.internet.ssl import CertificateOptions

__all__ = ["TestPKI"]

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)  # tolerate small clock differences between processes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, accepted by every TLS stack we test against.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: pathlib.Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


@dataclass(frozen=True)
class TestPKI:
    """A CA plus one server certificate written as C{ca.pem}/C{tls.crt}/C{tls.key}."""

    __test__ = False  # not a pytest test class despite the name

    directory: pathlib.Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def ca_path(self) -> pathlib.Path:
        return self.directory / "ca.pem"

    @property
    def cert_path(self) -> pathlib.Path:
        return self.directory / "tls.crt"

    @property
    def key_path(self) -> pathlib.Path:
        return self.directory / "tls.key"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(
        cls,
        directory: pathlib.Path,
        hostnames: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1",),
    ) -> TestPKI:
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stsd test CA")])
        ca_cert = (
            _certificate(name, name, ca_key.public_key(), ca=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert, key = _leaf(ca_cert, ca_key, hostnames, ips)
        pki = cls(directory, ca_cert, ca_key, cert, key)
        _write(pki.ca_path, pki.ca_pem)
        # The leaf alone: the CA is trusted explicitly by clients, never sent.
        _write(pki.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.key_path, _key_pem(key), 0o600)
        return pki

    def issue(
        self, hostnames: Sequence[str] = (), ips: Sequence[str] = ()
    ) -> tuple[bytes, bytes]:
        """Another leaf from this CA, e.g. for the wrong host: C{(cert_pem, key_pem)}."""
        cert, key = _leaf(self.ca_cert, self.ca_key, hostnames, ips)
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def server_options(self) -> CertificateOptions:
        """TLS >= 1.2 server options for C{reactor.listenSSL} with the leaf: stsd's own."""
        from stsd.http.tls import server_options_for

        return server_options_for([self.cert], self.key)

    def client_options(self, hostname: str = "localhost") -> IOpenSSLClientConnectionCreator:
        """Client TLS options trusting only this CA (for tests talking to fakes)."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(self.ca_pem))


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hostnames: Sequence[str],
    ips: Sequence[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not hostnames and not ips:
        raise ValueError("a leaf certificate needs at least one hostname or IP")
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cn = hostnames[0] if hostnames else ips[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        _certificate(subject, ca_cert.subject, key.public_key(), ca=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _certificate(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, *, ca: bool
) -> x509.CertificateBuilder:
    """What the CA and a leaf share: names, key, a random serial, the validity window
    (backdated), and the critical constraints: a CA signs certificates, a leaf signs
    handshakes."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
