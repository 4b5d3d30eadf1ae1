"""
Tests for L{stsd.auth.jwks}: local verification of ServiceAccount tokens against
the cluster's published keys, in memory (the strict fake API server behind
C{StubTreq}, a L{Clock}), and the TokenReview front that refuses forged
tokens before they reach the API server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.auth.jwks import (
    DISCOVERY_PATH,
    JWKS_PATH,
    JWKSAuthenticator,
    KeySet,
    LocallyCheckedTokenReview,
    parse_jwks,
)
from stsd.auth.tokenreview import TokenReviewAuthenticator
from stsd.model import Identity
from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.tokens import TokenIssuer
from stsd.upstream.kube import TOKENREVIEW_PATH, KubeAccess, KubernetesClient, KubernetesError

T = TypeVar("T")

AUDIENCE = "sts.min.io"
CLIENT_TOKEN = "client-token-0123456789"
TIMEOUT = 5.0
REFRESH = 300.0
MIN_REFETCH = 10.0
LEEWAY = 30.0

# Key generation is the slow part: a few keys for the whole module.
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_uint(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWT with any header and any signature function: what pyjwt refuses to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64_uint(numbers.x, 32), "y": b64_uint(numbers.y, 32)}


def es256(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


class Gated:
    """A JSON getter that holds every call until released: concurrency, in memory."""

    def __init__(self, inner: KubernetesClient) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self._gates: list[Deferred[None]] = []

    async def get_json(self, path: str, what: str) -> dict[str, Any]:
        self.calls.append(path)
        gate: Deferred[None] = Deferred()
        self._gates.append(gate)
        await gate
        return await self.inner.get_json(path, what)

    def release(self) -> None:
        while self._gates:
            self._gates.pop(0).callback(None)


class Static:
    """A JSON getter serving fixed discovery documents (an ES256 cluster)."""

    def __init__(self, issuer: str, jwks: dict[str, Any]) -> None:
        self.documents = {DISCOVERY_PATH: {"issuer": issuer}, JWKS_PATH: jwks}

    async def get_json(self, path: str, what: str) -> dict[str, Any]:
        return self.documents[path]


class Cluster(SynchronousTestCase):
    """The fake API server behind StubTreq, on a Clock at the wall-clock time."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.issuer = TokenIssuer(key=KEY, clock=self.clock)
        self.fake = FakeKubernetes(self.issuer, client_token=CLIENT_TOKEN, clock=self.clock)
        self.stub = StubTreq(self.fake.resource())
        access = KubeAccess(
            host="https://kube.test", https=None, configuration=None,  # type: ignore[arg-type]
            authorization=f"Bearer {CLIENT_TOKEN}",
        )
        self.kubernetes = KubernetesClient(
            access, self.stub, self.clock, TIMEOUT  # type: ignore[arg-type]
        )
        self.keys = self.keyset(self.kubernetes)
        self.authenticator = JWKSAuthenticator(self.keys, AUDIENCE, self.clock, leeway=LEEWAY)

    def tearDown(self) -> None:
        if self.keys.running:
            self.successResultOf(Deferred.fromCoroutine(_stop(self.keys)))
        self.fake.shutdown()

    def keyset(self, getter: Any) -> KeySet:
        return KeySet(getter, self.clock, refresh_interval=REFRESH,
                      min_refetch_interval=MIN_REFETCH)

    def start(self) -> None:
        self.keys.startService()
        self.assertTrue(self.keys.known)

    def fetches(self) -> tuple[int, int]:
        return self.fake.count(DISCOVERY_PATH), self.fake.count(JWKS_PATH)

    def mint(self, namespace: str = "apps", serviceaccount: str = "photo-sa", **kw: Any) -> str:
        return self.fake.token_for(namespace, serviceaccount, **kw)

    def accept(self, token: str, authenticator: Any = None) -> Identity:
        return self.successResultOf(run((authenticator or self.authenticator).authenticate(token)))

    def refuse(self, token: str, code: str = "AccessDenied", authenticator: Any = None) -> str:
        failure = self.failureResultOf(
            run((authenticator or self.authenticator).authenticate(token)), errors.STSError
        )
        error = failure.value
        assert isinstance(error, errors.STSError)
        self.assertEqual(error.code, code, error.message)
        self.assertEqual(error.status, {"AccessDenied": 403}.get(code, 400))
        # The reason is named; the token never is.
        if token:
            self.assertNotIn(token, error.message)
        for part in token.split("."):
            if len(part) > 8:
                self.assertNotIn(part, error.message)
        return error.message


async def _stop(service: KeySet) -> None:
    await service.stopService()  # type: ignore[misc]


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

    def test_keys_fetched_on_first_use_when_not_started(self) -> None:
        self.assertFalse(self.keys.known)
        self.assertEqual(self.accept(self.mint()).serviceaccount, "photo-sa")
        self.accept(self.mint())
        self.assertEqual(self.fetches(), (1, 1))

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

    def test_unknown_kid_one_rate_limited_refetch(self) -> None:
        self.start()
        forger = TokenIssuer(key=OTHER_KEY, clock=self.clock)
        message = self.refuse(forger.mint("apps", "photo-sa"))
        self.assertIn("does not publish", message)
        self.assertEqual(self.fetches(), (2, 2))  # one refetch
        # Another forgery within the interval: no further fetch.
        self.clock.advance(MIN_REFETCH - 1)
        self.refuse(forger.mint("apps", "photo-sa"))
        self.refuse(TokenIssuer(key=OTHER_KEY, kid="made-up", clock=self.clock)
                    .mint("apps", "photo-sa"))
        self.assertEqual(self.fetches(), (2, 2))
        # After it, one more is allowed.
        self.clock.advance(1)
        self.refuse(forger.mint("apps", "photo-sa"))
        self.assertEqual(self.fetches(), (3, 3))
        self.assertEqual(self.fake.count("/apis/authentication"), 0)

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

    def test_key_rotation(self) -> None:
        self.start()
        old = self.mint()
        self.issuer.rotate_key()
        new = self.mint()
        self.assertNotEqual(jwt.get_unverified_header(new)["kid"],
                            jwt.get_unverified_header(old)["kid"])
        self.assertEqual(self.accept(new).serviceaccount, "photo-sa")
        self.assertEqual(self.fetches(), (2, 2))  # the new kid: one refetch
        self.accept(old)  # the old key is still published
        self.accept(self.mint())
        self.assertEqual(self.fetches(), (2, 2))
        # The second key retired without a successor overlap: gone at the
        # next periodic refresh, with its tokens.
        retired = jwt.get_unverified_header(new)["kid"]
        self.issuer.rotate_key(keep_old=False)
        self.clock.advance(REFRESH)
        self.assertEqual(self.fetches(), (3, 3))
        self.assertEqual(self.keys.kids(), set(self.issuer.public_keys()))
        self.assertNotIn(retired, self.keys.kids())
        self.assertIn("does not publish", self.refuse(new))
        self.accept(old)
        self.accept(self.mint())

    def test_periodic_refresh_survives_failures(self) -> None:
        self.start()
        token = self.mint(lifetime=10 * 3600)
        self.clock.advance(REFRESH)
        self.assertEqual(self.fetches(), (2, 2))
        self.fake.fail(JWKS_PATH, "500", times=1)
        self.fake.fail(DISCOVERY_PATH, "500", times=1)
        with captured_logs() as events:
            self.clock.advance(REFRESH)  # discovery fails
            self.clock.advance(REFRESH)  # the JWKS fails
        self.assertEqual(self.fetches(), (4, 3))
        self.assertFalse(self.keys.healthy)
        warnings = [e for e in events if "signing keys failed" in e.get("log_format", "")
                    and e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)  # once per failing run
        # The last good keys are kept, and the loop goes on.
        self.assertTrue(self.keys.known)
        self.accept(token)
        self.clock.advance(REFRESH)
        self.assertEqual(self.fetches(), (5, 4))
        self.assertTrue(self.keys.healthy)
        self.accept(token)

    def test_stop(self) -> None:
        self.start()
        self.successResultOf(Deferred.fromCoroutine(_stop(self.keys)))
        self.clock.advance(10 * REFRESH)
        self.assertEqual(self.fetches(), (1, 1))

    def test_stop_gives_up_a_fetch_in_flight(self) -> None:
        self.fake.fail(DISCOVERY_PATH, "hang")
        with captured_logs() as events:
            self.keys.startService()
            self.stub.flush()
            stopped = self.keys.stopService()
            assert stopped is not None
            self.successResultOf(stopped)  # at once, not after the API timeout
        self.assertFalse(self.keys.known)
        self.assertEqual([e for e in events if e["log_level"].name in ("warn", "error")], [])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_api_server_down_at_start_then_recovers(self) -> None:
        self.fake.fail(DISCOVERY_PATH, "500")
        self.keys.startService()
        self.assertFalse(self.keys.known)
        token = self.mint()
        message = self.refuse(token, "IDPCommunicationError")  # tries once more
        self.assertIn("retry", message)
        self.assertEqual(self.fetches(), (2, 0))
        self.clock.advance(MIN_REFETCH - 1)
        self.refuse(token, "IDPCommunicationError")
        self.assertEqual(self.fetches(), (2, 0))  # rate-limited: no fetch per request
        self.fake.clear_faults()
        self.clock.advance(1)
        self.assertEqual(self.accept(token).namespace, "apps")
        self.assertEqual(self.fetches(), (3, 1))

    def test_api_server_hangs(self) -> None:
        self.fake.fail(DISCOVERY_PATH, "hang")
        d = run(self.authenticator.authenticate(self.mint()))
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(TIMEOUT)
        failure = self.failureResultOf(d, errors.STSError)
        self.assertEqual(failure.value.code, "IDPCommunicationError")

    def test_unknown_kid_while_the_api_server_is_down(self) -> None:
        self.start()
        self.issuer.rotate_key()
        self.fake.fail(JWKS_PATH, "500")
        # A new key may be legitimate: retry later, not "forged".
        self.refuse(self.mint(), "IDPCommunicationError")
        self.clock.advance(1)
        self.refuse(self.mint(), "IDPCommunicationError")
        self.assertEqual(self.fetches(), (2, 2))
        self.fake.clear_faults()
        self.clock.advance(MIN_REFETCH)
        self.accept(self.mint())

    def test_concurrent_unknown_kids_share_one_fetch(self) -> None:
        gated = Gated(self.kubernetes)
        self.keys = self.keyset(gated)
        authenticator = JWKSAuthenticator(self.keys, AUDIENCE, self.clock, leeway=LEEWAY)
        token = self.mint()
        forged = TokenIssuer(key=OTHER_KEY, clock=self.clock).mint("apps", "photo-sa")
        pending = [run(authenticator.authenticate(t)) for t in [token, forged, token, forged]]
        self.keys.startService()  # the periodic fetch joins the one in flight
        for d in pending:
            self.assertNoResult(d)
        self.assertEqual(gated.calls, [DISCOVERY_PATH])
        gated.release()
        gated.release()
        self.assertEqual(gated.calls, [DISCOVERY_PATH, JWKS_PATH])
        self.assertEqual(self.successResultOf(pending[0]).serviceaccount, "photo-sa")
        self.assertEqual(self.successResultOf(pending[2]).serviceaccount, "photo-sa")
        for d in pending[1::2]:
            self.assertEqual(self.failureResultOf(d, errors.STSError).value.code, "AccessDenied")
        self.assertEqual(self.keys.fetches, 1)
        # Unknown kids arriving together after the interval: again one fetch.
        self.clock.advance(MIN_REFETCH)
        pending = [run(authenticator.authenticate(forged)) for _ in range(5)]
        self.assertEqual(len(gated.calls), 3)
        pending[0].cancel()  # a client going away cancels neither the fetch nor the others
        gated.release()
        gated.release()
        self.assertEqual(self.keys.fetches, 2)
        for d in pending[1:]:
            self.assertEqual(self.failureResultOf(d, errors.STSError).value.code, "AccessDenied")
        self.failureResultOf(pending[0])

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

    def test_no_usable_keys_is_not_known(self) -> None:
        hmac_only = {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}
        keys = self.keyset(Static("https://x", hmac_only))
        authenticator = JWKSAuthenticator(keys, AUDIENCE, self.clock)
        keys.startService()
        self.assertFalse(keys.known)
        self.refuse(self.mint(), "IDPCommunicationError", authenticator=authenticator)
        keys.stopService()


def _pkcs1() -> Any:
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15()


def _sign_raw(header: dict[str, Any], payload: str) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
    signature = KEY.sign(signing_input.encode(), _pkcs1(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


class ParseJWKSTests(SynchronousTestCase):
    def test_usable_keys_only(self) -> None:
        rsa_jwk = TokenIssuer(key=KEY).jwks()["keys"][0]
        other = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
        private_ec = ec_jwk(EC_KEY, "ec-private")
        private_ec["d"] = b64_uint(EC_KEY.private_numbers().private_value, 32)
        document = {"keys": [
            rsa_jwk,
            ec_jwk(EC_KEY, "ec-1"),
            {**rsa_jwk, "kid": "enc", "use": "enc"},
            {**rsa_jwk, "kid": "ps256", "alg": "PS256"},
            {**rsa_jwk, "kid": "rs512", "alg": "RS512"},
            {**rsa_jwk, "kid": ""},
            {k: v for k, v in rsa_jwk.items() if k != "kid"},
            {**ec_jwk(EC_KEY, "ec-wrong-alg"), "alg": "ES384"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64_uint(other.x, 48),
             "y": b64_uint(other.y, 48)},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AAAA"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64_uint(1, 32),
             "y": b64_uint(1, 32)},
            private_ec,
            {**rsa_jwk, "d": "AQAB"},
            "not a key",
            {**ec_jwk(EC_KEY, rsa_jwk["kid"])},  # a second key with the same kid
        ]}
        keys = parse_jwks(document)
        self.assertEqual(set(keys), {rsa_jwk["kid"], "ec-1"})
        self.assertEqual(keys[rsa_jwk["kid"]].algorithm, "RS256")
        self.assertEqual(keys["ec-1"].algorithm, "ES256")
        self.assertIsInstance(keys["ec-1"].key, ec.EllipticCurvePublicKey)
        # A key without "alg" gets its type's algorithm.
        bare = {k: v for k, v in rsa_jwk.items() if k not in ("alg", "use")}
        self.assertEqual(parse_jwks({"keys": [bare]})[rsa_jwk["kid"]].algorithm, "RS256")

    def test_not_a_key_set(self) -> None:
        from stsd.auth.jwks import JWKSError

        for document in [None, [], {}, {"keys": {}}, {"keys": "x"}]:
            with self.subTest(document=document):
                with self.assertRaises(JWKSError):
                    parse_jwks(document)
        self.assertEqual(parse_jwks({"keys": []}), {})


class GetJSONTests(Cluster):
    def test_documents(self) -> None:
        discovery = self.successResultOf(run(self.kubernetes.get_json(DISCOVERY_PATH, "d")))
        self.assertEqual(discovery["issuer"], self.issuer.issuer)
        jwks = self.successResultOf(run(self.kubernetes.get_json(JWKS_PATH, "k")))
        self.assertEqual(jwks, self.issuer.jwks())

    def test_errors(self) -> None:
        self.fake.fail(JWKS_PATH, "500", times=1)
        failure = self.failureResultOf(run(self.kubernetes.get_json(JWKS_PATH, "keys")),
                                       KubernetesError)
        self.assertIn("get keys: HTTP 500", str(failure.value))
        failure = self.failureResultOf(run(self.kubernetes.get_json("/openid/v2/x", "x")),
                                       KubernetesError)
        self.assertIn("HTTP 404", str(failure.value))


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
