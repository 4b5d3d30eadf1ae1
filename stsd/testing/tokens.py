# -*- test-case-name: tests.test_fakes -*-
"""Mint real projected ServiceAccount tokens (RS256) like kube-apiserver does."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["DEFAULT_ISSUER", "TokenIssuer"]

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_UID_NAMESPACE = uuid.UUID("6f1b7c1e-4f7e-4a57-9a53-5c8a0b1d2e3f")


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _kid_for(key: rsa.RSAPrivateKey) -> str:
    # kube-apiserver's key id: base64url(sha256(DER public key)).
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


class TokenIssuer:
    """The cluster's ServiceAccount token signer (and its discovery documents)."""

    def __init__(
        self,
        *,
        issuer: str = DEFAULT_ISSUER,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        jwks_uri: str | None = None,
        clock: Any = None,
    ) -> None:
        self.issuer = issuer
        self.key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid or _kid_for(self.key)
        self.jwks_uri = jwks_uri or issuer.rstrip("/") + "/openid/v1/jwks"
        self._clock = clock
        # Retired keys stay published (and verifiable) after rotate_key(), as
        # kube-apiserver keeps every --service-account-key-file key.
        self._old_keys: dict[str, rsa.RSAPublicKey] = {}
        self._generation: dict[tuple[str, str], int] = {}

    # -- identities ---------------------------------------------------------

    def uid(self, namespace: str, serviceaccount: str) -> str:
        """The ServiceAccount's current uid: stable until rotate_uid()."""
        gen = self._generation.get((namespace, serviceaccount), 0)
        return str(uuid.uuid5(_UID_NAMESPACE, f"sa/{namespace}/{serviceaccount}/{gen}"))

    def rotate_uid(self, namespace: str, serviceaccount: str) -> str:
        """Simulate delete + recreate: tokens minted before carry a stale uid."""
        key = (namespace, serviceaccount)
        self._generation[key] = self._generation.get(key, 0) + 1
        return self.uid(namespace, serviceaccount)

    def pod_uid(self, namespace: str, pod: str) -> str:
        return str(uuid.uuid5(_UID_NAMESPACE, f"pod/{namespace}/{pod}"))

    # -- keys ---------------------------------------------------------------

    def rotate_key(self, *, keep_old: bool = True) -> str:
        """New signing key; the old one stays valid and published if keep_old."""
        if keep_old:
            self._old_keys[self.kid] = self.key.public_key()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = _kid_for(self.key)
        return self.kid

    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        """kid -> public key, for every key tokens may be verified with."""
        return {**self._old_keys, self.kid: self.key.public_key()}

    # -- tokens -------------------------------------------------------------

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor.seconds()
        return self._clock.seconds()

    def mint(
        self,
        namespace: str,
        serviceaccount: str,
        *,
        audiences: Sequence[str] = ("sts.min.io",),
        lifetime: int = 3600,
        pod: str | None = "pod-1",
        now: float | None = None,
        not_before: float | None = None,
        **extra_claims: Any,
    ) -> str:
        """A signed token; C{extra_claims} are merged last, so they can override any claim."""
        iat = int(self._now() if now is None else now)
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {
                "name": serviceaccount,
                "uid": self.uid(namespace, serviceaccount),
            },
        }
        if pod is not None:
            k8s["pod"] = {"name": pod, "uid": self.pod_uid(namespace, pod)}
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{serviceaccount}",
            "aud": list(audiences),
            "exp": iat + int(lifetime),
            "iat": iat,
            "nbf": int(iat if not_before is None else not_before),
            "kubernetes.io": k8s,
        }
        claims.update(extra_claims)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    # -- discovery documents --------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, pub in self.public_keys().items():
            numbers = pub.public_numbers()
            keys.append({
                "use": "sig",
                "kty": "RSA",
                "kid": kid,
                "alg": "RS256",
                "n": _b64url_uint(numbers.n),
                "e": _b64url_uint(numbers.e),
            })
        return {"keys": keys}

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
