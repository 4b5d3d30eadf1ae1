"""
Tests for L{stsd.auth.jwt}: verifying ServiceAccount tokens against the
cluster's published keys, in memory (the strict fake API server behind
C{StubTreq}, a L{Clock}), and the TokenReview front that refuses forged
tokens before they reach the API server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from stsd import errors
from stsd.auth.jwt import JWKSAuthenticator, LocallyCheckedTokenReview
from stsd.auth.keyset import DISCOVERY_PATH, JWKS_PATH
from stsd.auth.tokenreview import TokenReviewAuthenticator
from stsd.model import Identity
from stsd.testing.tokens import TokenIssuer
from stsd.upstream.kube import TOKENREVIEW_PATH
from tests.test_keyset import (
    AUDIENCE,
    EC_KEY,
    KEY,
    LEEWAY,
    OTHER_KEY,
    REFRESH,
    Cluster,
    Static,
    b64,
    captured_logs,
    ec_jwk,
    run,
)


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWT with any header and any signature function: what pyjwt refuses to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def es256(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


# -- JWKSAuthenticator ------------------------------------------------------------------


class JWKSAuthenticatorTests(Cluster):
    def test_valid_token_no_api_call_per_request(self) -> None:
        self.start()
        self.assertEqual(self.fetches(), (1, 1))
        before = len(self.fake.requests)
        for pod in ["pod-1", "pod-2", "pod-3"]:
            identity = self.accept(self.mint(pod=pod))
            self.assertEqual(identity, Identity("apps", "photo-sa", pod))
        self.assertEqual(self.accept(self.mint("other", "a.b", pod=None)),
                         Identity("other", "a.b", None))
        self.assertEqual(len(self.fake.requests), before)
        self.assertEqual(self.fake.count("/apis/authentication"), 0)
        self.assertEqual(self.fetches(), (1, 1))
        self.assertEqual(self.keys.issuer, self.issuer.issuer)
        self.assertEqual(self.keys.kids(), {self.issuer.kid})
        self.assertEqual(self.authenticator.audience, AUDIENCE)

    def test_expired(self) -> None:
        self.start()
        now = self.clock.seconds()
        self.assertIn("expired", self.refuse(self.mint(now=now - 3600 - LEEWAY, lifetime=3600)))
        self.assertIn("expired", self.refuse(self.mint(now=now - 7200, lifetime=3600)))
        # Within the leeway: a clock skew, not an expired token.
        self.accept(self.mint(now=now - 3600 - LEEWAY + 1, lifetime=3600))
        # And expiry follows the clock, not the wall clock.
        token = self.mint(lifetime=600)
        self.accept(token)
        self.clock.advance(600 + LEEWAY)
        self.assertIn("expired", self.refuse(token))

    def test_not_yet_valid(self) -> None:
        self.start()
        now = self.clock.seconds()
        message = self.refuse(self.mint(not_before=now + LEEWAY + 1))
        self.assertIn("not valid yet", message)
        self.accept(self.mint(not_before=now + LEEWAY - 1))
        self.assertIn("issued in the future", self.refuse(self.mint(now=now + LEEWAY + 5,
                                                                    not_before=now)))
        self.refuse(self.mint(nbf="yesterday"))
        self.refuse(self.mint(iat=True))

    def test_exp_required_and_numeric(self) -> None:
        self.start()
        header = {"alg": "RS256", "kid": self.issuer.kid}
        claims = claims_of(self.mint())
        for exp in ["null", '"never"', "NaN", "Infinity", "1e400", "true", "[1]"]:
            with self.subTest(exp=exp):
                payload = json.dumps({**claims, "exp": "EXP"}).replace('"EXP"', exp)
                self.refuse(_sign_raw(header, payload))
        self.accept(_sign_raw(header, json.dumps(claims)))
        del claims["exp"]
        self.refuse(_sign_raw(header, json.dumps(claims)))

    def test_wrong_audience(self) -> None:
        self.start()
        message = self.refuse(self.mint(audiences=["https://kubernetes.default.svc"]))
        self.assertIn(AUDIENCE, message)
        self.refuse(self.mint(audiences=[]))
        self.refuse(self.mint(aud="sts.min.io.evil"))
        self.accept(self.mint(aud=AUDIENCE))  # a single string is an audience too
        self.accept(self.mint(audiences=["other", AUDIENCE]))

    def test_wrong_issuer_is_not_a_serviceaccount_token(self) -> None:
        self.start()
        # Signed with the cluster's own key, but another issuer.
        self.refuse(self.mint(iss="https://evil.example"), "InvalidIdentityToken")
        other = TokenIssuer(issuer="https://oidc.example", key=KEY, kid=self.issuer.kid,
                            clock=self.clock)
        self.refuse(other.mint("apps", "photo-sa"), "InvalidIdentityToken")
        no_iss = claims_of(self.mint())
        del no_iss["iss"]
        self.refuse(jwt.encode(no_iss, KEY, "RS256", headers={"kid": self.issuer.kid}),
                    "InvalidIdentityToken")
        self.assertEqual(self.fetches(), (1, 1))

    def test_alg_none(self) -> None:
        self.start()
        claims = claims_of(self.mint())
        for alg in ["none", "None", "NONE", ""]:
            with self.subTest(alg=alg):
                message = self.refuse(forge({"alg": alg, "kid": self.issuer.kid}, claims,
                                            lambda _: b""))
                self.assertIn("algorithm", message)
        self.refuse(forge({"kid": self.issuer.kid}, claims, lambda _: b""))
        self.assertEqual(self.fetches(), (1, 1))

    def test_hs256_with_the_public_key_as_secret(self) -> None:
        self.start()
        claims = claims_of(self.mint())
        public = KEY.public_key()
        secrets = [
            public.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
            json.dumps(self.issuer.jwks()["keys"][0]).encode(),
        ]
        for alg, digest in [("HS256", hashlib.sha256), ("HS384", hashlib.sha384),
                            ("HS512", hashlib.sha512)]:
            for secret in secrets:
                token = forge({"alg": alg, "kid": self.issuer.kid}, claims,
                              lambda data, s=secret, d=digest: hmac.new(s, data, d).digest())
                self.assertIn("algorithm", self.refuse(token))
        self.assertEqual(self.fetches(), (1, 1))

    def test_other_algorithms_with_the_right_key(self) -> None:
        self.start()
        claims = claims_of(self.mint())
        for alg in ["RS384", "RS512", "PS256"]:
            with self.subTest(alg=alg):
                self.refuse(jwt.encode(claims, KEY, alg, headers={"kid": self.issuer.kid}))

    def test_es256_header_with_an_rsa_key(self) -> None:
        self.start()
        claims = claims_of(self.mint())
        message = self.refuse(forge({"alg": "ES256", "kid": self.issuer.kid}, claims,
                                    es256(EC_KEY)))
        self.assertIn("does not match", message)

    def test_signed_with_another_key_under_the_known_kid(self) -> None:
        self.start()
        forged = TokenIssuer(key=OTHER_KEY, kid=self.issuer.kid, clock=self.clock)
        self.assertIn("signature", self.refuse(forged.mint("apps", "photo-sa")))
        self.assertEqual(self.fetches(), (1, 1))  # a known kid: nothing to refetch

    def test_kid_missing_or_not_a_string(self) -> None:
        self.start()
        claims = claims_of(self.mint())
        for header in [{"alg": "RS256"}, {"alg": "RS256", "kid": ""},
                       {"alg": "RS256", "kid": 7}, {"alg": "RS256", "kid": None}]:
            with self.subTest(header=header):
                self.refuse(forge(header, claims,
                                  lambda data: KEY.sign(data, _pkcs1(), hashes.SHA256())))
        self.assertEqual(self.fetches(), (1, 1))

    def test_subject_and_claims_must_agree(self) -> None:
        self.start()
        for extra in [
            {"sub": "system:serviceaccount:kube-system:admin"},
            {"sub": "system:serviceaccount:apps:other-sa"},
            {"kubernetes.io": {"namespace": "kube-system",
                               "serviceaccount": {"name": "photo-sa", "uid": "x"}}},
            {"kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "admin"}}},
            {"kubernetes.io": {"namespace": "apps", "serviceaccount": "photo-sa"}},
            {"kubernetes.io": {"namespace": "apps"}},
            {"kubernetes.io": None},
            {"kubernetes.io": "apps"},
        ]:
            with self.subTest(extra=extra):
                message = self.refuse(self.mint(**extra))
                self.assertIn("kubernetes.io", message)
        # Without kubernetes.io at all.
        claims = claims_of(self.mint())
        del claims["kubernetes.io"]
        self.refuse(jwt.encode(claims, KEY, "RS256", headers={"kid": self.issuer.kid}))

    def test_not_a_serviceaccount_subject(self) -> None:
        self.start()
        for sub in ["oidc:alice", "alice", "system:serviceaccount:apps",
                    "system:serviceaccount:apps:photo-sa:x", "system:node:worker-1",
                    "oidc:system:serviceaccount:apps:photo-sa",
                    "system:serviceaccount:Apps:photo-sa"]:
            with self.subTest(sub=sub):
                self.refuse(self.mint(sub=sub), "InvalidIdentityToken")
        self.refuse(self.mint(sub=42))  # not even a string: pyjwt refuses it as malformed

    def test_malformed(self) -> None:
        self.start()
        token = self.mint()
        header, payload, signature = token.split(".")
        string = b64(b'"a string"')
        for bad in [
            "", "a.b", "a.b.c.d", f"{header}.{payload}", f"{header}.{payload}.{signature}.",
            f"{header}=.{payload}.{signature}",  # padding
            f"{header}.{payload}.{signature}==",
            f"{header}.{payload}.{signature[:-1]}",  # a truncated signature
            f"{header}.{payload}.{signature}\u00e9",
            f"{b64(b'[1]')}.{payload}.{signature}",
            f"{header}.{b64(b'not json')}.{signature}",
            f"{header}.{string}.{signature}",
            f"{b64(b'{' * 100_000)}.{payload}.{signature}",
        ]:
            with self.subTest(bad=bad[:40]):
                self.refuse(bad)

    def test_non_canonical_base64_is_refused(self) -> None:
        # A 256-byte signature is 342 characters: the last one carries 4
        # unused bits. Python's (and Go's) decoders ignore them, so there
        # are 16 spellings of one signature; only the canonical one passes.
        self.start()
        token = self.mint()
        self.accept(token)
        head, _, last = token.rpartition(".")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        index = alphabet.index(last[-1])
        sibling = alphabet[index ^ 1]  # same top bits, a non-zero unused bit
        self.assertEqual(base64.urlsafe_b64decode(last[:-1] + sibling + "=="),
                         base64.urlsafe_b64decode(last + "=="))
        self.refuse(f"{head}.{last[:-1]}{sibling}")

    def test_es256_cluster(self) -> None:
        issuer = "https://ec.example"
        kid = "ec-key-1"
        rsa_jwk = self.issuer.jwks()["keys"][0]
        keys = self.keyset(Static(issuer, {"keys": [ec_jwk(EC_KEY, kid), rsa_jwk]}))
        authenticator = JWKSAuthenticator(keys, AUDIENCE, self.clock, leeway=LEEWAY)
        claims = {**claims_of(self.mint()), "iss": issuer}
        token = forge({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims, es256(EC_KEY))
        self.assertEqual(self.accept(token, authenticator), Identity("apps", "photo-sa", "pod-1"))
        # pyjwt's own ES256 signer agrees.
        self.accept(jwt.encode(claims, EC_KEY, "ES256", headers={"kid": kid}), authenticator)
        # The EC key under an RS256 header, or the RSA key under ES256: refused.
        self.refuse(forge({"alg": "RS256", "kid": kid}, claims,
                          lambda data: KEY.sign(data, _pkcs1(), hashes.SHA256())),
                    authenticator=authenticator)
        self.refuse(forge({"alg": "ES256", "kid": rsa_jwk["kid"]}, claims, es256(EC_KEY)),
                    authenticator=authenticator)
        # Another EC key under the known kid.
        other = ec.generate_private_key(ec.SECP256R1())
        self.refuse(forge({"alg": "ES256", "kid": kid}, claims, es256(other)),
                    authenticator=authenticator)


def _pkcs1() -> Any:
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15()


def _sign_raw(header: dict[str, Any], payload: str) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
    signature = KEY.sign(signing_input.encode(), _pkcs1(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


# -- LocallyCheckedTokenReview ----------------------------------------------------------


class LocallyCheckedTokenReviewTests(Cluster):
    def setUp(self) -> None:
        super().setUp()
        self.tokenreview = TokenReviewAuthenticator(self.kubernetes, AUDIENCE)
        self.checked = LocallyCheckedTokenReview(self.tokenreview, self.keys, self.clock,
                                                 leeway=LEEWAY)

    def reviews(self) -> int:
        return self.fake.count(TOKENREVIEW_PATH)

    def test_audience(self) -> None:
        self.assertEqual(self.checked.audience, AUDIENCE)

    def test_valid_token_one_tokenreview(self) -> None:
        self.start()
        token = self.mint(pod="pod-7")
        identity = self.accept(token, self.checked)
        self.assertEqual(identity, Identity("apps", "photo-sa", "pod-7"))
        self.assertEqual(identity.expires, claims_of(token)["exp"], "the verified exp")
        self.assertEqual(self.reviews(), 1)
        self.assertEqual(self.fetches(), (1, 1))

    def test_forged_tokens_never_reach_the_api_server(self) -> None:
        self.start()
        now = self.clock.seconds()
        claims = claims_of(self.mint())
        forgeries = [
            TokenIssuer(key=OTHER_KEY, clock=self.clock).mint("apps", "photo-sa"),  # unknown kid
            TokenIssuer(key=OTHER_KEY, kid=self.issuer.kid, clock=self.clock)
            .mint("apps", "photo-sa"),  # known kid, wrong key
            self.mint(now=now - 7200),  # expired
            self.mint(not_before=now + 3600),
            self.mint(audiences=["https://kubernetes.default.svc"]),
            self.mint(sub="system:serviceaccount:kube-system:admin"),
            forge({"alg": "none", "kid": self.issuer.kid}, claims, lambda _: b""),
            forge({"alg": "HS256", "kid": self.issuer.kid}, claims,
                  lambda data: hmac.new(KEY.public_key().public_bytes(
                      serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
                  ), data, hashlib.sha256).digest()),
        ]
        for token in forgeries:
            self.refuse(token, authenticator=self.checked)
        self.assertEqual(self.reviews(), 0)

    def test_foreign_tokens_are_not_serviceaccount_tokens(self) -> None:
        # As in the end-to-end test: an OIDC user the API server would
        # authenticate is still not a ServiceAccount: the same answer,
        # without asking.
        self.start()
        token = jwt.encode({"sub": "alice"}, "k" * 64, algorithm="HS256")
        self.fake.add_static_token(token, "oidc:alice")
        self.refuse(token, "InvalidIdentityToken", self.checked)
        self.assertEqual(self.reviews(), 0)

    def test_deleted_serviceaccount_is_caught_by_tokenreview(self) -> None:
        self.start()
        token = self.mint("apps", "doomed-sa")
        self.fake.delete_serviceaccount("apps", "doomed-sa")
        self.accept(token)  # the keys alone cannot tell
        self.refuse(token, authenticator=self.checked)
        self.assertEqual(self.reviews(), 1)
        # Same for a deleted pod.
        token = self.mint(pod="gone")
        self.fake.delete_pod("apps", "gone")
        self.refuse(token, authenticator=self.checked)
        self.assertEqual(self.reviews(), 2)

    def test_keys_unknown_tokenreview_alone(self) -> None:
        self.fake.fail(DISCOVERY_PATH, "500")  # e.g. RBAC does not allow the discovery
        with captured_logs() as events:
            self.keys.startService()
            self.assertFalse(self.keys.known)
            self.assertEqual(self.accept(self.mint(), self.checked).serviceaccount, "photo-sa")
            forged = TokenIssuer(key=OTHER_KEY, clock=self.clock).mint("apps", "photo-sa")
            self.refuse(forged, authenticator=self.checked)
            self.accept(self.mint(), self.checked)
        self.assertEqual(self.reviews(), 3)
        self.assertEqual(self.fetches(), (1, 0))  # no discovery attempt per request
        fallbacks = [e for e in events if "TokenReview alone" in e.get("log_format", "")]
        self.assertEqual(len(fallbacks), 1)  # logged once
        # The discovery comes back: local checks again.
        self.fake.clear_faults()
        self.clock.advance(REFRESH)
        self.assertTrue(self.keys.known)
        self.refuse(forged, authenticator=self.checked)
        self.assertEqual(self.reviews(), 3)

    def test_unknown_kid_while_discovery_fails_asks_tokenreview(self) -> None:
        self.start()
        old_kid = self.issuer.kid
        self.issuer.rotate_key()
        self.fake.fail(JWKS_PATH, "500")
        # The new key cannot be fetched: the API server decides.
        self.accept(self.mint(), self.checked)
        self.assertEqual(self.reviews(), 1)
        self.assertEqual(self.fetches(), (2, 2))
        # But tokens naming a known key are still checked locally.
        self.refuse(TokenIssuer(key=OTHER_KEY, kid=old_kid, clock=self.clock)
                    .mint("apps", "photo-sa"), authenticator=self.checked)
        expired = TokenIssuer(key=KEY, kid=old_kid, clock=self.clock).mint(
            "apps", "photo-sa", now=self.clock.seconds() - 7200)
        self.refuse(expired, authenticator=self.checked)
        self.assertEqual(self.reviews(), 1)

    def test_tokenreview_failure(self) -> None:
        self.start()
        self.fake.fail(TOKENREVIEW_PATH, "500")
        self.refuse(self.mint(), "IDPCommunicationError", self.checked)

    def test_inconsistent_identity_refused(self) -> None:
        class Liar:
            audience = AUDIENCE

            async def authenticate(self, token: str) -> Identity:
                return Identity("kube-system", "admin")

        self.start()
        checked = LocallyCheckedTokenReview(Liar(), self.keys, self.clock)
        self.refuse(self.mint(), authenticator=checked)


# -- property ---------------------------------------------------------------------------


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


class MutationTests(Cluster):
    def setUp(self) -> None:
        super().setUp()
        self.start()
        self.token = self.mint(pod="pod-7")
        self.accept(self.token)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(_ALPHABET)),
                    min_size=1, max_size=3))
    def test_mutated_tokens_are_never_accepted(self, edits: list[tuple[int, str]]) -> None:
        chars = list(self.token)
        for position, char in edits:
            chars[position % len(chars)] = char
        mutated = "".join(chars)
        if mutated == self.token:
            return
        d = run(self.authenticator.authenticate(mutated))
        failure = self.failureResultOf(d, errors.STSError)
        self.assertIn(failure.value.code, ("AccessDenied", "InvalidIdentityToken"))
        self.assertEqual(self.fake.count("/apis/authentication"), 0)
