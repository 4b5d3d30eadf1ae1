# -*- test-case-name: tests.test_certreload -*-
"""
Reload the server certificate and key when their files change, without a
restart and without dropping a connection.

Kubernetes updates a mounted Secret by writing the new files to a fresh
directory and swapping the C{..data} symlink onto it; the modification
times seen through the symlinks may well be older than the last check, so
a change is detected from the files' contents (SHA-256 of the certificate
and the key bytes), polled every few seconds.

An C{SSL.Context} must not be changed once it has made a connection
(pyOpenSSL refuses), so a reload builds new C{CertificateOptions} and swaps
them in L{ReloadingServerOptions}, which the listening port asks for every
new connection: connections made earlier keep their own context, new ones
get the new certificate.

A pair that cannot be served (unreadable, unparsable, key not matching
the certificate, caught half-written, not valid now while the current one
is) keeps the current one, is logged (never the key) and is tried again on
the next tick.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from stsd.core.periodic import PeriodicService, timer_service
from stsd.http import tls

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "DEFAULT_INTERVAL",
    "CertificateLoadError",
    "CertificateReloader",
    "LoadedCertificate",
    "ReloadingServerOptions",
    "load_certificate",
]

log = Logger()

# The server certificate is fresh <= 10 s after the files change (docs/design.md,
# "Freshness bounds").
DEFAULT_INTERVAL = 5.0

# A Secret's files are read twice over if they change while being read
# (the symlink swapped between reading the certificate and the key).
_READ_ATTEMPTS = 3


class CertificateLoadError(Exception):
    """
    A certificate and key that cannot be served.  The message names the
    files and the reason, never the key's contents.
    """


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadingServerOptions:
    """
    Server TLS options whose certificate can be replaced while listening:
    each new connection is made by the options current at that moment.

    Pass this where C{CertificateOptions} would go (C{SSL4ServerEndpoint},
    C{listenSSL}): Twisted's TLS layer calls L{serverConnectionForTLS} once
    per accepted connection.
    """

    def __init__(self, options: CertificateOptions) -> None:
        self._options = options

    @property
    def current(self) -> CertificateOptions:
        return self._options

    def replace(self, options: CertificateOptions) -> None:
        self._options = options

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> SSL.Context:
        # Only for older callers of IOpenSSLContextFactory; Twisted's server
        # endpoints use serverConnectionForTLS.
        return self._options.getContext()


@dataclass(frozen=True)
class LoadedCertificate:
    """A checked certificate/key pair and the options serving it."""

    options: CertificateOptions
    leaf: x509.Certificate
    fingerprint: bytes  # SHA-256 over the certificate and key file contents

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def sha256(self) -> str:
        """The leaf's SHA-256 fingerprint, for logs."""
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    def valid_at(self, when: datetime.datetime) -> bool:
        return self.leaf.not_valid_before_utc <= when <= self.leaf.not_valid_after_utc


def load_certificate(cert_path: str, key_path: str) -> LoadedCertificate:
    """
    Read, parse and check a PEM certificate chain (leaf first) and its
    private key; build the server options and their OpenSSL context now, so
    that a pair OpenSSL refuses fails here rather than on a connection.

    @raise CertificateLoadError: the pair cannot be served.
    """
    cert_pem, key_pem = _read_pair(cert_path, key_path)
    return _load(cert_path, key_path, cert_pem, key_pem, _fingerprint(cert_pem, key_pem))


class CertificateReloader(PeriodicService):
    """
    Polls the server certificate and key files every C{interval} seconds
    and swaps new options into L{options} when their contents change.

    The first pair is loaded by the constructor: a bad one raises
    L{CertificateLoadError}, so that start-up stops with a clear reason.

    @ivar options: what the listening port must be given.
    @ivar loaded_at: clock time the current pair was loaded.
    @ivar reloads: pairs swapped in since start-up.
    @ivar failures: checks that found changed files and could not load them
        (each tick counts: the counter keeps rising while the files are bad).
    @ivar last_error: why the files on disk are not being served, or
        C{None} when they are.
    """

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.cert_path = cert_path
        self.key_path = key_path
        self._clock = clock
        self._timer = timer_service(interval, clock, self.check,
                                    f"checking the server certificate {cert_path}")
        self._current = load_certificate(cert_path, key_path)
        self.options = ReloadingServerOptions(self._current.options)
        self.loaded_at = clock.seconds()
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate being served to new connections."""
        return self._current.leaf

    @property
    def not_after(self) -> datetime.datetime:
        """When the leaf being served expires (UTC)."""
        return self._current.not_after

    def check(self) -> bool:
        """
        One poll: load the files if their contents changed.  Never raises:
        a failure is counted in L{failures} as well as logged.

        @return: whether a new pair was swapped in.
        """
        try:
            return self._check()
        except Exception:
            self.failures += 1
            self.last_error = "unexpected error"
            log.failure(
                "checking the server certificate {cert_path} failed; keeping the current one",
                cert_path=self.cert_path,
            )
            return False

    def _check(self) -> bool:
        try:
            cert_pem, key_pem = _read_pair(self.cert_path, self.key_path)
            fingerprint = _fingerprint(cert_pem, key_pem)
            if fingerprint == self._current.fingerprint:
                self.last_error = None  # unchanged, or back to what is served
                return False
            candidate = _load(self.cert_path, self.key_path, cert_pem, key_pem, fingerprint)
            now = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)
            if not candidate.valid_at(now) and self._current.valid_at(now):
                raise CertificateLoadError(
                    f"{self.cert_path}: the new certificate is valid only from"
                    f" {candidate.leaf.not_valid_before_utc.isoformat()} to"
                    f" {candidate.not_after.isoformat()}, the current one is valid now"
                )
        except CertificateLoadError as e:
            self._failed(str(e))
            return False
        self._current = candidate
        self.options.replace(candidate.options)
        self.loaded_at = self._clock.seconds()
        self.reloads += 1
        self.last_error = None
        log.info(
            "server certificate reloaded: {subject} serial {serial} sha256 {sha256}"
            " valid until {not_after}",
            cert_path=self.cert_path,
            subject=candidate.leaf.subject.rfc4514_string(),
            serial=format(candidate.leaf.serial_number, "x"),
            sha256=candidate.sha256,
            not_after=candidate.not_after.isoformat(),
        )
        return True

    def _failed(self, reason: str) -> None:
        self.failures += 1
        if reason != self.last_error:
            # Once per distinct reason; the counter shows that it persists.
            log.warn(
                "server certificate not reloaded, keeping the current one: {reason}",
                cert_path=self.cert_path,
                key_path=self.key_path,
                reason=reason,
            )
        else:
            log.debug("server certificate still not reloadable: {reason}", reason=reason)
        self.last_error = reason


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateLoadError(f"cannot read {path}: {e.strerror or e}") from None


def _read_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    # Certificate, key, certificate again: if the two certificate reads
    # agree, no swap happened in between and the key belongs to them.
    for _ in range(_READ_ATTEMPTS):
        cert_pem = _read(cert_path)
        key_pem = _read(key_path)
        if _read(cert_path) == cert_pem:
            return cert_pem, key_pem
    raise CertificateLoadError(f"{cert_path} kept changing while it was read")


def _fingerprint(cert_pem: bytes, key_pem: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (cert_pem, key_pem):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _load(
    cert_path: str, key_path: str, cert_pem: bytes, key_pem: bytes, fingerprint: bytes
) -> LoadedCertificate:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateLoadError(f"{cert_path}: no PEM certificate could be parsed") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except Exception:
        # Not the parser's message: keep anything from the key out of logs.
        raise CertificateLoadError(
            f"{key_path}: not an unencrypted PEM private key of a supported type"
        ) from None
    try:
        matches = _public_key_der(key.public_key()) == _public_key_der(chain[0].public_key())
    except Exception:
        raise CertificateLoadError(
            f"{cert_path}: the certificate's public key is of an unsupported type"
        ) from None
    if not matches:
        raise CertificateLoadError(
            f"{key_path} is not the key of the first certificate in {cert_path}"
        )
    options = tls.server_options_for(chain, key)
    try:
        options.getContext()  # builds and checks the context once, now
    except (SSL.Error, ValueError, TypeError) as e:
        raise CertificateLoadError(
            f"{cert_path}, {key_path}: OpenSSL refused the pair: {e}"
        ) from None
    return LoadedCertificate(options=options, leaf=chain[0], fingerprint=fingerprint)


def _public_key_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
