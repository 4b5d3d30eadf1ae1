# -*- test-case-name: tests.test_jwks -*-
"""
Local verification of ServiceAccount tokens against the cluster's published
keys (service-account issuer discovery), so that a request costs no API call.

  - L{KeySet} fetches the issuer and its keys from the API server, refreshes
    them periodically, and again (rate-limited) when a token names a key it
    does not know: a key rotation is picked up at the first token signed
    with the new key.
  - L{JWKSAuthenticator} (C{kubernetes.token_verification: jwks}) verifies a
    token with those keys alone: signature (RS256 or ES256, matching the
    key's type), issuer, audience, C{exp}/C{nbf}/C{iat} with a small leeway,
    and the C{kubernetes.io} claims against C{sub}.
  - L{LocallyCheckedTokenReview} (C{tokenreview}, the default) runs the same
    checks first when the keys are known, so that forged, expired and
    wrong-audience tokens never reach the API server; a token that passes is
    then reviewed by the API server, which alone knows whether its pod and
    ServiceAccount still exist.

The trade-off of C{jwks}: the keys say who signed a token, not whether what
it names still exists. A token of a deleted pod or ServiceAccount stays
valid until it expires (a projected token lives for its volume's
C{expirationSeconds}, an hour by default; tokens from the TokenRequest API
or minted for the API server's own audience may live much longer); only
C{tokenreview} refuses it at once.

PyJWT only turns the published JWKs into keys (C{RSAAlgorithm.from_jwk},
C{ECAlgorithm.from_jwk}). The token itself is checked here: its canonical
base64url segments and header, the signature (with C{cryptography}
directly), issuer, audience, and C{exp}/C{nbf}/C{iat} against the injected
clock, not a wall clock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd import errors

from stsd.auth import jose
from stsd.core.cache import SingleFlight
from stsd.core.periodic import PeriodicService, timer_service
from stsd.model import Authenticator, Identity, parse_serviceaccount
from stsd.upstream.kube import KubernetesError

__all__ = [
    "DISCOVERY_PATH",
    "JWKS_PATH",
    "JWKSAuthenticator",
    "KeySet",
    "LocallyCheckedTokenReview",
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

#: The only signature algorithms accepted; each is tied to one key type.
ALGORITHMS = ("RS256", "ES256")

DEFAULT_REFRESH_SECONDS = 300.0
DEFAULT_MIN_REFETCH_SECONDS = 10.0
DEFAULT_LEEWAY_SECONDS = 30.0


class JSONGetter(Protocol):
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
        self._refresh_interval = refresh_interval
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


# -- verification ---------------------------------------------------------------------


class _KeysUnavailable(Exception):
    """
    The token's key is not known and the keys could not be fetched.
    """


def _signature_valid(key: VerificationKey, signing_input: bytes, signature: bytes) -> bool:
    """
    Check a JWS signature with C{cryptography} directly: the header and
    claims are already decoded, and a JWT library would decode them again
    (a seventh of a fresh credential's CPU in the benchmark's profile).
    """
    try:
        if key.algorithm == "RS256":
            assert isinstance(key.key, rsa.RSAPublicKey)
            key.key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:  # ES256: the JWS signature is r || s, 32 bytes each
            assert isinstance(key.key, ec.EllipticCurvePublicKey)
            if len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _segment(text: str) -> bytes:
    """
    One segment, decoded canonically (L{jose.segment}).
    """
    try:
        return jose.segment(text)
    except ValueError:
        raise errors.access_denied("the token is malformed") from None


def _json_object(text: str) -> dict[str, Any]:
    """
    The header or the claims, decoded canonically (L{jose.json_segment}).
    """
    try:
        return jose.json_segment(text)
    except ValueError:
        raise errors.access_denied("the token is malformed") from None


@functools.lru_cache(maxsize=64)
def _header(segment: str) -> dict[str, Any]:
    """
    A token's decoded header. The cluster's tokens share a handful of
    headers (one per signing key), so they are decoded once; a refused
    header raises and is not remembered. Callers only read the result.
    """
    return _json_object(segment)


class JWKSAuthenticator:
    """
    Authenticate a ServiceAccount token against the cluster's published
    keys, with no API call per request (C{kubernetes.token_verification:
    jwks}).

    Refusals are L{errors.STSError}s: AccessDenied for a token that is
    forged, expired, not yet valid, for another audience, or inconsistent;
    InvalidIdentityToken for a token that is not a ServiceAccount token
    (another issuer, or a subject that is not
    C{system:serviceaccount:<namespace>:<name>}); IDPCommunicationError when
    the keys cannot be fetched. Messages name the reason, never the token.
    """

    def __init__(
        self,
        keys: KeySet,
        audience: str,
        clock: IReactorTime,
        *,
        leeway: float = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        self._keys = keys
        self.audience = audience
        self._clock = clock
        self._leeway = leeway

    async def authenticate(self, token: str) -> Identity:
        try:
            return await self._verify(token)
        except _KeysUnavailable:
            raise errors.idp_communication_error(
                "the cluster's token signing keys could not be fetched; retry later"
            ) from None
        except errors.STSError as e:
            log.info("token refused: {reason}", reason=e.message)
            raise

    async def _verify(self, token: str) -> Identity:
        """
        @raise errors.STSError: the token is refused.
        @raise _KeysUnavailable: the keys to decide with could not be fetched.
        """
        parts = token.split(".")
        if len(parts) != 3 or not token.isascii():
            raise errors.access_denied("the token is malformed")
        header = _header(parts[0])
        claims = _json_object(parts[1])
        signature = _segment(parts[2])

        if not self._keys.known:
            await self._keys.refetch()
            if not self._keys.known:
                raise _KeysUnavailable()
        issuer = self._keys.issuer
        # Not a ServiceAccount token at all (an OIDC token, say): the same
        # answer TokenReview gives an authenticated non-ServiceAccount user.
        if claims.get("iss") != issuer:
            raise errors.invalid_identity_token(
                "the token was not issued by the cluster's ServiceAccount issuer"
            )

        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:  # none, HS256, RS512, ...: before any key lookup
            raise errors.access_denied(
                "the token's signing algorithm is not accepted (only RS256 and ES256 are)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise errors.access_denied("the token names no signing key (kid)")
        key = self._keys.key(kid)
        if key is None:
            await self._keys.refetch()  # rate-limited: a rotated key, or a forgery
            key = self._keys.key(kid)
            if key is None:
                if not self._keys.healthy:
                    raise _KeysUnavailable()
                raise errors.access_denied(
                    "the token is signed with a key the cluster does not publish"
                )
        if key.algorithm != algorithm:  # e.g. "ES256" with an RSA key
            raise errors.access_denied("the token's algorithm does not match its signing key")

        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not _signature_valid(key, signing_input, signature):
            raise errors.access_denied("the token's signature is not valid")
        for claim in ("exp", "iss", "aud", "sub"):
            if claim not in claims:
                if claim == "aud":
                    raise errors.access_denied(
                        f"the token is not valid for the audience {self.audience}")
                raise errors.access_denied(f"the token has no {claim} claim")
        if not isinstance(claims["sub"], str):
            raise errors.access_denied("the token is malformed")
        audiences = claims["aud"]
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise errors.access_denied("the token is malformed")
        if self.audience not in audiences:
            raise errors.access_denied(f"the token is not valid for the audience {self.audience}")

        self._check_times(claims)
        identity = self._identity(claims)
        return Identity(identity.namespace, identity.serviceaccount, identity.pod,
                        jose.number(claims["exp"]))

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock.seconds()
        leeway = self._leeway
        expires = jose.number(claims.get("exp"))
        if expires is None:
            raise errors.access_denied("the token has no valid expiry (exp)")
        if now >= expires + leeway:
            raise errors.access_denied("the token has expired")
        for claim in ("nbf", "iat"):
            if claim not in claims:
                continue
            value = jose.number(claims[claim])
            if value is None:
                raise errors.access_denied(f"the token's {claim} claim is not a time")
            if value > now + leeway:
                raise errors.access_denied(
                    "the token is not valid yet" if claim == "nbf"
                    else "the token was issued in the future"
                )

    @staticmethod
    def _identity(claims: dict[str, Any]) -> Identity:
        parsed = parse_serviceaccount(claims.get("sub"))
        if parsed is None:
            raise errors.invalid_identity_token(
                "the token does not belong to a Kubernetes ServiceAccount"
            )
        namespace, name = parsed
        # The API server mints sub from these claims; a token where they
        # disagree was not minted by it, whatever its signature says.
        k8s = claims.get("kubernetes.io")
        serviceaccount = k8s.get("serviceaccount") if isinstance(k8s, dict) else None
        if (
            not isinstance(k8s, dict)
            or not isinstance(serviceaccount, dict)
            or k8s.get("namespace") != namespace
            or serviceaccount.get("name") != name
        ):
            raise errors.access_denied("the token's kubernetes.io claims do not match its subject")
        pod = k8s.get("pod")
        pod_name = pod.get("name") if isinstance(pod, dict) else None
        return Identity(namespace, name, pod_name if isinstance(pod_name, str) else None)


class LocallyCheckedTokenReview:
    """
    TokenReview, with the local checks of L{JWKSAuthenticator} in front
    (C{kubernetes.token_verification: tokenreview}).

    When the keys are known, a token is verified locally first: a forged,
    expired, not-yet-valid or wrong-audience token is refused without an API
    call, and one that passes is sent to TokenReview, which alone knows
    whether its pod and ServiceAccount still exist. When the keys are not
    known (the discovery is not allowed by RBAC, or not reachable yet),
    TokenReview decides alone. When a token names a key that is not known
    and the keys cannot be fetched right now, TokenReview decides too: the
    API server is authoritative in this mode, and a failing discovery must
    not lock out pods signed with a rotated key.
    """

    def __init__(
        self,
        tokenreview: Authenticator,
        keys: KeySet,
        clock: IReactorTime,
        *,
        leeway: float = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        self._tokenreview = tokenreview
        self._keys = keys
        self._local = JWKSAuthenticator(keys, tokenreview.audience, clock, leeway=leeway)
        self._fallback_logged = False

    @property
    def audience(self) -> str:
        return self._tokenreview.audience

    async def authenticate(self, token: str) -> Identity:
        if not self._keys.known:
            if not self._fallback_logged:
                self._fallback_logged = True
                log.warn("the cluster's token signing keys are not known (see the key fetch "
                         "errors): tokens are checked by TokenReview alone, forged ones included")
            return await self._tokenreview.authenticate(token)
        if self._fallback_logged:
            self._fallback_logged = False
            log.info("the cluster's token signing keys are known: tokens are checked locally first")
        try:
            local = await self._local._verify(token)
        except _KeysUnavailable:
            log.info("token signed with a key not known yet and the keys cannot be fetched: "
                     "TokenReview decides")
            return await self._tokenreview.authenticate(token)
        except errors.STSError as e:
            log.info("token refused without TokenReview: {reason}", reason=e.message)
            raise
        identity = await self._tokenreview.authenticate(token)
        if (identity.namespace, identity.serviceaccount) != (local.namespace, local.serviceaccount):
            log.error("TokenReview names {reviewed}, the token's claims {claimed}: refused",
                      reviewed=identity.username, claimed=local.username)
            raise errors.access_denied("the token's identity is inconsistent")
        # The verified exp, for the TokenReview cache in front.
        return Identity(identity.namespace, identity.serviceaccount, identity.pod, local.expires)
