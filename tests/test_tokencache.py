"""
Tests for L{stsd.auth.tokencache}: the positive TokenReview cache, on a
L{Clock}, in front of a stand-in authenticator.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.auth.tokencache import CachingAuthenticator, _expiry
from stsd.model import Identity

T0 = 1_700_000_000.0
ALICE = Identity("apps", "alice", "pod-1")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt(exp: Any = None, sub: str = "system:serviceaccount:apps:alice", **claims: Any) -> str:
    """A JWT-shaped token (the signature is not checked by the cache)."""
    payload = {"sub": sub, **claims}
    if exp is not None:
        payload["exp"] = exp
    header = b64url(json.dumps({"alg": "RS256", "kid": "k"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}.{b64url(b'signature-' + sub.encode())}"


class StandIn:
    """
    Counts calls. Answers with C{result} (an Identity, or an exception to
    raise), or, with C{pending}, an unfired Deferred the test fires.
    """

    audience = "sts.min.io"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result: Identity | Exception = ALICE
        self.pending: list[Deferred[Identity]] | None = None

    def authenticate(self, token: str) -> Deferred[Identity]:
        self.calls.append(token)
        if self.pending is not None:
            d: Deferred[Identity] = Deferred()
            self.pending.append(d)
            return d
        return Deferred.fromCoroutine(self._answer())

    async def _answer(self) -> Identity:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def reachable(obj: Any, seen: set[int]) -> Iterator[Any]:
    """Every object reachable from C{obj}'s attributes and containers."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        children: list[Any] = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        children = []
    for child in children:
        yield from reachable(child, seen)


class CachingAuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.inner = StandIn()
        self.cache = CachingAuthenticator(self.inner, self.clock, ttl=10)
        self.token = jwt(exp=T0 + 3600)

    def auth(self, token: str, cache: CachingAuthenticator | None = None) -> Deferred[Identity]:
        return Deferred.fromCoroutine((self.cache if cache is None else cache).authenticate(token))

    def ok(self, token: str, cache: CachingAuthenticator | None = None) -> Identity:
        return self.successResultOf(self.auth(token, cache))

    def denied(self, token: str) -> errors.STSError:
        return self.failureResultOf(self.auth(token), errors.STSError).value

    def test_audience(self) -> None:
        self.assertEqual(self.cache.audience, "sts.min.io")
        self.inner.audience = "other"
        self.assertEqual(self.cache.audience, "other")

    def test_hit_within_ttl(self) -> None:
        self.assertEqual(self.ok(self.token), ALICE)
        self.clock.advance(9.9)
        self.assertEqual(self.ok(self.token), ALICE)
        self.assertEqual(len(self.inner.calls), 1)
        self.assertEqual((self.cache.hits, self.cache.misses), (1, 1))

    def test_upstream_again_after_ttl(self) -> None:
        self.ok(self.token)
        self.clock.advance(10)
        self.inner.result = Identity("apps", "alice", "pod-2")
        self.assertEqual(self.ok(self.token), Identity("apps", "alice", "pod-2"))
        self.assertEqual(len(self.inner.calls), 2)
        self.assertEqual((self.cache.hits, self.cache.misses), (0, 2))
        self.ok(self.token)
        self.assertEqual(len(self.inner.calls), 2)

    def test_token_exp_bounds_ttl(self) -> None:
        self.ok(jwt(exp=T0 + 3600, sub="system:serviceaccount:apps:older"))
        token = jwt(exp=T0 + 3)
        self.ok(token)
        self.clock.advance(2.9)
        self.ok(token)
        self.assertEqual(len(self.inner.calls), 2)
        self.clock.rightNow = T0 + 3  # now == exp: the token is no longer valid
        self.inner.result = errors.access_denied("token expired")
        self.denied(token)
        self.assertEqual(len(self.inner.calls), 3)

    def test_expired_token_not_cached(self) -> None:
        # The stand-in accepts it; an upstream clock skewed behind ours could.
        token = jwt(exp=T0 - 1)
        self.ok(token)
        self.ok(token)
        self.assertEqual(len(self.inner.calls), 2)
        self.assertEqual(len(self.cache), 0)
        token = jwt(exp=T0)
        self.ok(token)
        self.assertEqual(len(self.cache), 0)

    def test_no_or_bad_exp_uses_ttl(self) -> None:
        for token in [jwt(), jwt(exp="soon"), jwt(exp=True), jwt(exp=float("nan")),
                      jwt(exp=10**400), "not-a-jwt", "a.%%%.c", "a.b.c.d",
                      f"x.{b64url(b'[1, 2]')}.y", f"x.{b64url(b'[' * 100_000)}.y",
                      f"x.{b64url(bytes([0xff, 0xfe]))}.y"]:
            self.assertIsNone(_expiry(token), token[:40])
        self.assertEqual(_expiry(jwt(exp=T0 + 5)), T0 + 5)
        self.assertEqual(_expiry(jwt(exp=T0 + 5.5)), T0 + 5.5)
        token = jwt()
        self.ok(token)
        self.clock.advance(9.9)
        self.ok(token)
        self.clock.advance(0.1)
        self.ok(token)
        self.assertEqual(len(self.inner.calls), 2)

    def test_failures_not_cached(self) -> None:
        self.inner.result = errors.access_denied("x")
        self.assertEqual(self.denied(self.token).code, "AccessDenied")
        self.assertEqual(self.denied(self.token).code, "AccessDenied")
        self.assertEqual(len(self.inner.calls), 2)
        self.assertEqual(len(self.cache), 0)
        # And a failure does not poison a later success.
        self.inner.result = ALICE
        self.assertEqual(self.ok(self.token), ALICE)

    def test_single_flight(self) -> None:
        self.inner.pending = []
        first, second = self.auth(self.token), self.auth(self.token)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.inner.calls), 1)
        self.inner.pending[0].callback(ALICE)
        self.assertEqual(self.successResultOf(first), ALICE)
        self.assertEqual(self.successResultOf(second), ALICE)
        self.assertEqual(self.ok(self.token), ALICE)
        self.assertEqual(len(self.inner.calls), 1)
        self.assertEqual((self.cache.misses, self.cache.coalesced, self.cache.hits), (1, 1, 1))

    def test_single_flight_only_for_identical_tokens(self) -> None:
        self.inner.pending = []
        self.auth(self.token)
        self.auth(jwt(exp=T0 + 3600, sub="system:serviceaccount:apps:bob"))
        self.assertEqual(len(self.inner.calls), 2)

    def test_concurrent_failure(self) -> None:
        self.inner.pending = []
        first, second = self.auth(self.token), self.auth(self.token)
        self.inner.pending[0].errback(errors.idp_communication_error("API server down"))
        for d in (first, second):
            self.assertEqual(self.failureResultOf(d, errors.STSError).value.code,
                             "IDPCommunicationError")
        self.assertEqual(len(self.inner.calls), 1)
        self.inner.pending = None
        self.assertEqual(self.ok(self.token), ALICE)
        self.assertEqual(len(self.inner.calls), 2)

    def test_cancelled_caller_does_not_cancel_others(self) -> None:
        # Klein cancels a request's Deferred when its client disconnects.
        self.inner.pending = []
        first, second = self.auth(self.token), self.auth(self.token)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.inner.pending[0].callback(ALICE)
        self.assertEqual(self.successResultOf(second), ALICE)
        self.ok(self.token)
        self.assertEqual(len(self.inner.calls), 1)

    def test_synchronous_inner(self) -> None:
        # An inner that answers at once still goes through single flight.
        self.assertEqual(self.ok(self.token), ALICE)
        self.assertEqual(len(self.cache._inflight), 0)

    def test_review_slower_than_ttl_not_cached(self) -> None:
        self.inner.pending = []
        d = self.auth(self.token)
        self.clock.advance(10)
        self.inner.pending[0].callback(ALICE)
        self.assertEqual(self.successResultOf(d), ALICE)
        self.assertEqual(len(self.cache), 0)

    def test_lru_bound(self) -> None:
        cache = CachingAuthenticator(self.inner, self.clock, ttl=10, max_entries=3)
        tokens = [jwt(exp=T0 + 60, sub=f"system:serviceaccount:apps:sa{i}") for i in range(4)]
        for t in tokens[:3]:
            self.ok(t, cache)
        self.ok(tokens[0], cache)  # tokens[0] is now the most recent
        self.ok(tokens[3], cache)  # evicts tokens[1]
        self.assertEqual(len(cache), 3)
        self.assertEqual(len(self.inner.calls), 4)
        for t in (tokens[0], tokens[2], tokens[3]):
            self.ok(t, cache)
        self.assertEqual(len(self.inner.calls), 4)
        self.ok(tokens[1], cache)
        self.assertEqual(len(self.inner.calls), 5)
        self.assertEqual(len(cache), 3)

    def test_expired_entries_reclaimed(self) -> None:
        self.ok(self.token)
        self.clock.advance(11)
        self.ok(jwt(exp=T0 + 3600, sub="system:serviceaccount:apps:bob"))
        self.assertEqual(len(self.cache), 1)

    def test_raw_token_never_kept(self) -> None:
        good, bad = self.token, jwt(exp=T0 + 3600, sub="system:serviceaccount:apps:mallory")
        self.ok(good)
        self.ok(good)
        self.inner.result = errors.access_denied("x")
        self.denied(bad)
        self.inner.result = ALICE
        self.inner.pending = []
        inflight = self.auth(jwt(exp=T0 + 3600, sub="system:serviceaccount:apps:carol"))
        for token in (good, bad):
            # The stand-in records the tokens it saw: it is not the cache.
            for obj in reachable(self.cache, {id(self.inner)}):
                self.assertFalse(isinstance(obj, (str, bytes)) and token in str(obj),
                                 "raw token in the cache's state")
        self.assertEqual(len(self.cache._inflight), 1)
        for key in [*self.cache._entries, *self.cache._inflight]:
            self.assertIsInstance(key, bytes)
            self.assertEqual(len(key), 32)  # a SHA-256 digest
        self.inner.pending[0].callback(ALICE)
        self.successResultOf(inflight)
        self.assertEqual(len(self.cache._inflight), 0)

    def test_ttl_zero_passes_through(self) -> None:
        cache = CachingAuthenticator(self.inner, self.clock, ttl=0)
        for _ in range(3):
            self.assertEqual(self.ok(self.token, cache), ALICE)
        self.assertEqual(len(self.inner.calls), 3)
        self.assertEqual(len(cache), 0)
        self.inner.pending = []
        self.auth(self.token, cache)
        self.auth(self.token, cache)
        self.assertEqual(len(self.inner.calls), 5)  # no single flight either

    def test_invalid_arguments(self) -> None:
        for kw in ({"ttl": -1}, {"ttl": float("nan")}, {"ttl": float("inf")},
                   {"max_entries": 0}):
            with self.assertRaises(ValueError, msg=kw):
                CachingAuthenticator(self.inner, self.clock, **kw)  # type: ignore[arg-type]

    def test_verified_expiry_from_the_identity_bounds_the_ttl(self) -> None:
        # An authenticator that verified the token hands its exp over; the
        # cache does not decode the token again (this one has no readable exp).
        clock = Clock()
        clock.advance(T0)

        class Verified:
            audience = "sts.min.io"
            calls = 0

            async def authenticate(self, token: str) -> Identity:
                self.calls += 1
                return Identity("apps", "sa", None, T0 + 2)

        inner = Verified()
        cache = CachingAuthenticator(inner, clock, ttl=10)
        for _ in range(2):
            _settled(cache.authenticate("not.a.jwt"))
        assert inner.calls == 1
        clock.advance(2)
        _settled(cache.authenticate("not.a.jwt"))
        assert inner.calls == 2, "expired with the verified exp, before the 10 s ttl"


def _settled(coroutine: Any) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results and not hasattr(results[0], "raiseException"), results
    return results[0]
