# -*- test-case-name: tests.test_jwt -*-
"""
Verifying a ServiceAccount token against the cluster's published keys
(L{stsd.auth.keyset.KeySet}), so that a request costs no API call.

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

The token is checked here, with no JWT library: its canonical base64url
segments and header (L{stsd.auth.jose}), the signature (with
C{cryptography} directly), issuer, audience, and C{exp}/C{nbf}/C{iat}
against the injected clock, not a wall clock.
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd import errors
from stsd.auth import jose
from stsd.auth.keyset import ALGORITHMS, KeySet, VerificationKey
from stsd.model import Authenticator, Identity, parse_serviceaccount

__all__ = ["JWKSAuthenticator", "LocallyCheckedTokenReview"]

log = Logger()

DEFAULT_LEEWAY_SECONDS = 30.0


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
