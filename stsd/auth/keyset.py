# -*- test-case-name: tests.test_keyset -*-
"""
The cluster's published token signing keys, from the API server's
service-account issuer discovery, for verifying ServiceAccount tokens
locally (L{stsd.auth.jwt}).

L{KeySet} fetches the issuer and its keys, refreshes them periodically,
and again (rate-limited) when a token names a key it does not know: a key
rotation is picked up at the first token signed with the new key.

PyJWT only turns the published JWKs into keys (C{RSAAlgorithm.from_jwk},
C{ECAlgorithm.from_jwk}); L{parse_jwks} keeps the RSA (RS256) and EC P-256
(ES256) signature keys among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd.core.cache import SingleFlight
from stsd.core.periodic import PeriodicService, timer_service
from stsd.upstream.kube import KubernetesError

__all__ = [
    "ALGORITHMS",
    "DISCOVERY_PATH",
    "JWKS_PATH",
    "JSONGetter",
    "JWKSError",
    "KeySet",
    "VerificationKey",
    "parse_jwks",
]

log = Logger()

DISCOVERY_PATH = "/.well-known/openid-configuration"
# The discovery document's jwks_uri names the issuer's public URL (often
# https://kubernetes.default.svc.cluster.local/openid/v1/jwks, or an external
# bucket when the issuer is public), which a pod may not resolve or reach, and
# which would be fetched without the API server's CA and credentials. The API
# server serves the same key set at this path: fetch it there, authenticated
# and with verified TLS, like every other Kubernetes call.
JWKS_PATH = "/openid/v1/jwks"

#: The algorithms of the keys kept, one per key type: the only ones a token may use.
ALGORITHMS = ("RS256", "ES256")

DEFAULT_REFRESH_SECONDS = 300.0
DEFAULT_MIN_REFETCH_SECONDS = 10.0


class JSONGetter(Protocol):
    """
    What L{KeySet} fetches with (L{stsd.upstream.kube.KubernetesClient}).
    """

    async def get_json(self, path: str, what: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class VerificationKey:
    """
    A public key from the cluster's JWKS, and the one algorithm it verifies.
    """

    kid: str
    algorithm: str  # "RS256" for RSA, "ES256" for EC P-256
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JWKSError(Exception):
    """
    The discovery document or the key set is unusable.
    """


def parse_jwks(document: object) -> dict[str, VerificationKey]:
    """
    The usable keys of a JWKS by C{kid}: RSA (RS256) and EC P-256 (ES256)
    signature keys. Other key types and curves, keys for another use or
    algorithm, keys without a C{kid} and keys carrying private parts are
    skipped (and logged).

    @raise JWKSError: C{document} is not a JWKS at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError("the key set has no list of keys")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        try:
            key = _parse_jwk(jwk)
        except JWKSError as e:
            log.info("ignoring a key of the cluster's key set: {reason}", reason=str(e))
            continue
        if key.kid in keys:
            log.warn("ignoring a second key with kid {kid}", kid=key.kid[:80])
            continue
        keys[key.kid] = key
    return keys


def _parse_jwk(jwk: object) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise JWKSError("not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JWKSError("no kid")
    if jwk.get("use", "sig") != "sig":
        raise JWKSError(f"kid {kid[:80]}: not a signature key")
    if "d" in jwk:
        raise JWKSError(f"kid {kid[:80]}: private key material in a public key set")
    kty = jwk.get("kty")
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    try:
        if kty == "RSA":
            algorithm = "RS256"
            loaded = RSAAlgorithm.from_jwk(jwk)
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise JWKSError(f"kid {kid[:80]}: not an RSA public key")
            public = loaded
        elif kty == "EC" and jwk.get("crv") == "P-256":
            algorithm = "ES256"
            loaded_ec = ECAlgorithm.from_jwk(jwk)
            if not isinstance(loaded_ec, ec.EllipticCurvePublicKey) or not isinstance(
                loaded_ec.curve, ec.SECP256R1
            ):
                raise JWKSError(f"kid {kid[:80]}: not an EC P-256 public key")
            public = loaded_ec
        else:
            raise JWKSError(f"kid {kid[:80]}: key type {str(kty)[:20]!r} "
                            f"(curve {str(jwk.get('crv'))[:20]!r}) is not RSA or EC P-256")
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
        raise JWKSError(f"kid {kid[:80]}: unusable {kty} key ({type(e).__name__})") from None
    if jwk.get("alg", algorithm) != algorithm:
        alg = str(jwk.get("alg"))[:20]
        raise JWKSError(f"kid {kid[:80]}: algorithm {alg!r} is not {algorithm}")
    return VerificationKey(kid, algorithm, public)


class KeySet(PeriodicService):
    """
    The cluster's ServiceAccount issuer and signing keys, from the API
    server's service-account issuer discovery (RBAC: C{get} on the
    non-resource URLs C{/.well-known/openid-configuration} and
    C{/openid/v1/jwks}, e.g. the ClusterRole
    C{system:service-account-issuer-discovery}).

    Fetched when the service starts, every C{refresh_interval} seconds, and
    on demand through L{refetch} (a token naming a key not in the set),
    which starts a fetch at most once per C{min_refetch_interval} seconds: a
    flood of forged tokens naming made-up keys costs at most one API call
    per interval. Concurrent callers share the fetch in flight. A failed
    fetch keeps the last good keys.

    @ivar fetches: how many fetches were started (for tests and metrics).
    @ivar fetched_at: clock time of the last successful fetch, or C{None}.
    """

    def __init__(
        self,
        kubernetes: JSONGetter,
        clock: IReactorTime,
        *,
        refresh_interval: float = DEFAULT_REFRESH_SECONDS,
        min_refetch_interval: float = DEFAULT_MIN_REFETCH_SECONDS,
    ) -> None:
        self._kubernetes = kubernetes
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._issuer: str | None = None
        self._keys: dict[str, VerificationKey] = {}
        self._healthy = False
        self._last_refetch: float | None = None
        # One fetch at a time, shared by its callers (key: None).
        self._fetching: SingleFlight[None, None] = SingleFlight()
        self._timer = timer_service(refresh_interval, clock, self.refresh,
                                    "refreshing the cluster's token signing keys")
        self.fetches = 0
        self.fetched_at: float | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def known(self) -> bool:
        """
        The issuer and keys have been fetched at least once.
        """
        return self._issuer is not None

    @property
    def healthy(self) -> bool:
        """
        The last fetch succeeded: a key not in the set is not published.
        """
        return self._healthy

    @property
    def issuer(self) -> str | None:
        return self._issuer

    def key(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    # -- service ----------------------------------------------------------------------

    def _give_up(self) -> None:
        # Shutdown must not wait out the API server timeout of a fetch in
        # flight: give it up (its waiters are released, keys unchanged).
        self._fetching.cancel(None)

    # -- fetching ---------------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """
        Fetch now (or join the fetch in flight). Never fails; see L{known}
        and L{healthy} for the outcome.
        """
        return self._fetching.join(None) or self._start_fetch()

    def refetch(self) -> Deferred[None]:
        """
        Fetch again, unless another L{refetch} started one less than
        C{min_refetch_interval} seconds ago; join the fetch in flight, if
        any. Never fails.
        """
        joined = self._fetching.join(None)
        if joined is not None:
            return joined
        # Only on-demand fetches count: a periodic fetch just before a
        # key rotation must not delay picking up the new key.
        now = self._clock.seconds()
        if self._last_refetch is not None and now - self._last_refetch < self._min_refetch_interval:
            return succeed(None)
        self._last_refetch = now
        return self._start_fetch()

    def _start_fetch(self) -> Deferred[None]:
        self.fetches += 1
        return self._fetching.start(None, self._fetch)

    async def _fetch(self) -> None:
        # Never fails: every caller, and the timer, is told "done".
        try:
            issuer, keys = await self._download()
        except Exception as e:
            if self._stopping:  # cancelled by stopService: nothing to report
                return
            if isinstance(e, (KubernetesError, JWKSError)):
                self._failed(str(e))
                return
            log.failure("fetching the cluster's token signing keys failed")
            self._failed("unexpected error")
            return
        try:
            self._update(issuer, keys)
        except Exception:  # never expected; the keys are kept as they were
            log.failure("fetching the cluster's token signing keys failed")

    def _update(self, issuer: str, keys: dict[str, VerificationKey]) -> None:
        if self._issuer is not None and issuer != self._issuer:
            log.warn("the ServiceAccount issuer changed from {old} to {new}",
                     old=self._issuer, new=issuer)
        if not self._healthy or set(keys) != set(self._keys):
            log.info("ServiceAccount issuer {issuer}: keys {kids}", issuer=issuer,
                     kids=sorted(keys))
        self._issuer, self._keys = issuer, keys
        self._healthy = True
        self.fetched_at = self._clock.seconds()

    def _failed(self, reason: str) -> None:
        # Warn on the first failure of a run only: without the optional RBAC
        # grant, every periodic fetch fails, and once is enough to say so.
        if self._healthy or self.fetches == 1:
            kept = "keeping the last good keys" if self.known else "no keys yet"
            log.warn("fetching the cluster's token signing keys failed ({kept}): {reason}",
                     kept=kept, reason=reason)
        else:
            log.debug("fetching the cluster's token signing keys failed: {reason}",
                      reason=reason)
        self._healthy = False

    async def _download(self) -> tuple[str, dict[str, VerificationKey]]:
        discovery = await self._kubernetes.get_json(
            DISCOVERY_PATH, "service-account issuer discovery"
        )
        issuer = discovery.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise JWKSError("the issuer discovery document names no issuer")
        keys = parse_jwks(await self._kubernetes.get_json(JWKS_PATH, "service-account keys"))
        if not keys:
            # A cluster signing with, say, ES384 only: nothing here can verify
            # its tokens, which is not the same as "every token is forged".
            raise JWKSError("the cluster publishes no RS256 or ES256 signing key")
        return issuer, keys
