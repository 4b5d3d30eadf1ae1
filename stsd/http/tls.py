# -*- test-case-name: tests.test_http_tls -*-
"""
The STS port's TLS: the server certificate options (TLS 1.2 or newer).

Built from C{cryptography} objects (pyOpenSSL's X509/PKey are deprecated);
files are read when the options are built, at start-up or by
L{stsd.ops.certreload}, never on the request path. The client side (the
calls to Kubernetes and the tenants) is L{stsd.upstream.tls}, whose
minimum version and PEM readers these share.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.internet.ssl import CertificateOptions

from stsd.upstream.tls import MINIMUM_TLS, read_certificates, read_private_key


def server_options(cert_path: str, key_path: str) -> CertificateOptions:
    """
    Server TLS options from a PEM certificate chain and key: TLS 1.2 or
    newer, Twisted's default (modern, forward-secret) cipher list.
    """
    chain = read_certificates(cert_path)
    key = read_private_key(key_path)
    return server_options_for(chain, key)


def server_options_for(
    chain: Sequence[x509.Certificate], key: PrivateKeyTypes
) -> CertificateOptions:
    """
    The same server TLS options as L{server_options}, from a chain (leaf
    first) and key already parsed, e.g. from bytes read once and checked
    by L{stsd.ops.certreload}.
    """
    # Twisted annotates pyOpenSSL's X509/PKey only, but hands them to pyOpenSSL's
    # context, which takes cryptography's objects as well (and deprecates its own).
    return CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=MINIMUM_TLS,
    )
