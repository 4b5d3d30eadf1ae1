"""
Tests for L{stsd.auth.keyset}: the cluster's published keys, fetched from the
strict fake API server behind C{StubTreq} on a L{Clock} (refreshed, refetched
for an unknown key at most once per interval, one fetch shared by its
callers, given up on stop), and the parsing of a JWKS. The keys are driven
through L{stsd.auth.jwt.JWKSAuthenticator}, which reads them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.auth.jwt import JWKSAuthenticator
from stsd.auth.keyset import DISCOVERY_PATH, JWKS_PATH, JWKSError, KeySet, parse_jwks
from stsd.model import Identity
from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.tokens import TokenIssuer
from stsd.upstream.kube import KubeAccess, KubernetesClient, KubernetesError

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


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64_uint(numbers.x, 32), "y": b64_uint(numbers.y, 32)}


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


# -- KeySet -----------------------------------------------------------------------------


class KeySetTests(Cluster):
    def test_keys_fetched_on_first_use_when_not_started(self) -> None:
        self.assertFalse(self.keys.known)
        self.assertEqual(self.accept(self.mint()).serviceaccount, "photo-sa")
        self.accept(self.mint())
        self.assertEqual(self.fetches(), (1, 1))

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

    def test_no_usable_keys_is_not_known(self) -> None:
        hmac_only = {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}
        keys = self.keyset(Static("https://x", hmac_only))
        authenticator = JWKSAuthenticator(keys, AUDIENCE, self.clock)
        keys.startService()
        self.assertFalse(keys.known)
        self.refuse(self.mint(), "IDPCommunicationError", authenticator=authenticator)
        keys.stopService()


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
