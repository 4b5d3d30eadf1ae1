"""
Tests for L{stsd.core.cache}: single flight, the byte-bounded LRU, the TTL cache
(single flight, expiry, failures not cached) and its byte bound, and that the
exchange's caches of policy documents stay within their bytes whatever
callers send (issue 9, finding 4).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.core.cache import ENTRY_OVERHEAD, ByteLRU, SingleFlight, TTLCache
from stsd.upstream.minio import MinIOError

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


def _get(cache: TTLCache, key, value):
    results: list = []
    Deferred.fromCoroutine(cache.get(key, lambda: succeed(value))).addCallback(results.append)
    return results[0]


class CacheTests(SynchronousTestCase):
    def test_byte_lru_evicts_least_recently_used_by_weight(self) -> None:
        lru: ByteLRU[str, str] = ByteLRU(max_bytes=3 * (100 + ENTRY_OVERHEAD))
        for key in "abc":
            lru.put(key, key * 100, 100)
        assert lru.bytes == 3 * (100 + ENTRY_OVERHEAD) and len(lru) == 3
        assert lru.get("a") == "a" * 100  # now the most recent
        lru.put("d", "d", 100)
        assert lru.get("b") is None and [lru.get(k) is not None for k in "acd"] == [True, True, True]
        # One heavy entry pushes out as many as it must.
        lru.put("e", "e", 2 * 100 + ENTRY_OVERHEAD)
        assert [k for k in "acde" if lru.get(k) is not None] == ["d", "e"]
        assert lru.bytes <= 3 * (100 + ENTRY_OVERHEAD)

    def test_byte_lru_replacing_and_popping_keep_the_account(self) -> None:
        lru: ByteLRU[str, int] = ByteLRU(max_bytes=10_000)
        lru.put("k", 1, 500)
        lru.put("k", 2, 100)
        assert (lru.get("k"), lru.bytes, len(lru)) == (2, 100 + ENTRY_OVERHEAD, 1)
        assert lru.pop("k") == 2 and lru.bytes == 0 and lru.pop("k") is None
        lru.put("huge", 3, 20_000)  # heavier than the whole bound: not kept
        assert lru.get("huge") is None and lru.bytes == 0

    def test_byte_lru_entry_bound(self) -> None:
        lru: ByteLRU[int, int] = ByteLRU(max_bytes=1 << 30, max_entries=5)
        for i in range(10):
            lru.put(i, i, 1)
        assert len(lru) == 5 and lru.get(4) is None and lru.get(9) == 9

    def test_ttl_cache_weighs_its_values(self) -> None:
        clock = Clock()
        cache: TTLCache[str] = TTLCache(clock, 30, max_bytes=2 * (1000 + ENTRY_OVERHEAD),
                                        weigh=lambda key, value: len(value))
        for key in "abc":
            assert _get(cache, key, key * 1000) == key * 1000
        assert len(cache) == 2 and cache.bytes == 2 * (1000 + ENTRY_OVERHEAD)
        assert cache.fresh("a") is None and cache.fresh("c") == "c" * 1000
        cache.invalidate("c")
        assert cache.bytes == 1000 + ENTRY_OVERHEAD
        clock.advance(31)
        assert cache.fresh("b") is None
        assert _get(cache, "b", "new") == "new" and cache.bytes == 3 + ENTRY_OVERHEAD

    def test_exchange_caches_stay_within_their_bytes(self) -> None:
        """
        Callers sending ever new ~2 KB Policies fill the effective-policy and
        reuse caches only up to their byte bounds (issue 9, finding 4: with a
        count bound, 15,000 of them grew the daemon by 146 MiB).
        """
        import stsd.core.exchange
        from tests.test_exchange import Harness

        self.patch(stsd.core.exchange, "EFFECTIVE_CACHE_BYTES", 64 * 1024)
        self.patch(stsd.core.exchange, "MINTED_CACHE_BYTES", 64 * 1024)
        h = Harness()
        h.exchange = stsd.core.exchange.Exchange(
            authenticator=h.authenticator, bindings=h.bindings, tenants=h.tenants, minio=h.exchange._minio,
            clock=h.clock, is_ready=lambda: True, reuse_seconds=60)
        for i in range(60):
            policy = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"],
                 "Resource": [f"arn:aws:s3:::bucket-{i}-{j:02}/{'p' * 20}/*" for j in range(34)]}]}
            assert 1500 < len(json.dumps(policy)) <= 2048
            h.run(policy=policy)
        effective, minted = h.exchange._effective, h.exchange._minted
        assert 0 < effective.bytes <= 64 * 1024 and 0 < minted.bytes <= 64 * 1024
        assert len(effective) < 60 and len(minted) < 60, "older entries were evicted"
        # the most recent ones are still there: the cache still works
        assert h.minio.count("assumerole") == 60
        h.run(policy=policy)
        assert h.minio.count("assumerole") == 60

    def test_single_flight_shares_one_run_and_frees_the_key_before_callers_hear(self) -> None:
        flights: SingleFlight[str, int] = SingleFlight()
        started: list[Deferred[int]] = []

        async def work() -> int:
            started.append(Deferred())
            return await started[-1]

        first = flights.start("k", work)
        second, third = flights.join("k"), flights.run("k", work)
        assert second is not None and len(started) == 1 and "k" in flights and len(flights) == 1
        third.cancel()  # a caller going away cancels neither the work nor the others
        seen: list[bool] = []
        first.addCallback(lambda v: seen.append("k" in flights) or v)
        started[0].callback(7)
        assert seen == [False] and len(flights) == 0
        assert [first.result, second.result] == [7, 7]
        third.addErrback(lambda f: f.trap(CancelledError))
        assert flights.join("k") is None

        # A failure reaches every caller and is not remembered; cancel stops the work.
        failing = flights.start("k", work)
        joined = flights.join("k")
        assert joined is not None
        flights.cancel("k")
        for d in (failing, joined):
            errors: list[object] = []
            d.addErrback(lambda f: errors.append(f.check(CancelledError)))
            assert errors == [CancelledError]
        assert len(flights) == 0 and len(started) == 2

    def test_single_flight_work_that_finishes_at_once(self) -> None:
        flights: SingleFlight[str, str] = SingleFlight()

        async def work() -> str:
            return "now"

        d = flights.start("k", work)
        assert d.called and d.result == "now" and len(flights) == 0


# -- TTLCache --------------------------------------------------------------------------


class Fetcher:
    """
    A fetch function whose calls stay pending until the test fires them.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[str]] = []

    def __call__(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.pending.append(d)
        return d

    @property
    def calls(self) -> int:
        return len(self.pending)


class TTLCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache: TTLCache[str] = TTLCache(self.clock, ttl=10)
        self.fetch = Fetcher()

    def get(self, key: str, fetch: Callable[[], Any] | None = None) -> Deferred[str]:
        return run(self.cache.get(key, fetch or self.fetch))

    def test_single_flight(self) -> None:
        first, second = self.get("k"), self.get("k")
        self.assertEqual(self.fetch.calls, 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("v", "v"))
        # and the value is now cached
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_distinct_keys_fetch_separately(self) -> None:
        a, b = self.get("a"), self.get("b")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("vb")
        self.fetch.pending[0].callback("va")
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("va", "vb"))

    def test_ttl(self) -> None:
        d = self.get("k")
        self.fetch.pending[0].callback("v1")
        self.successResultOf(d)
        self.clock.advance(9.999)
        self.assertEqual(self.successResultOf(self.get("k")), "v1")
        self.assertEqual(self.fetch.calls, 1)
        self.clock.advance(0.001)
        again = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v2")
        self.assertEqual(self.successResultOf(again), "v2")

    def test_ttl_counts_from_when_the_fetch_ends(self) -> None:
        d = self.get("k")
        self.clock.advance(8)
        self.fetch.pending[0].callback("v")
        self.successResultOf(d)
        self.clock.advance(9)
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_failure_reaches_every_waiter_and_is_not_cached(self) -> None:
        first, second = self.get("k"), self.get("k")
        self.fetch.pending[0].errback(MinIOError("down"))
        self.assertEqual(str(self.failureResultOf(first, MinIOError).value), "down")
        self.assertEqual(str(self.failureResultOf(second, MinIOError).value), "down")
        self.assertEqual(len(self.cache), 0)
        retry = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v")
        self.assertEqual(self.successResultOf(retry), "v")

    def test_lru_bound(self) -> None:
        cache: TTLCache[str] = TTLCache(self.clock, ttl=100, max_entries=2)
        fetched: list[str] = []

        def getter(key: str) -> str:
            async def fetch() -> str:
                fetched.append(key)
                return key.upper()
            return self.successResultOf(run(cache.get(key, fetch)))

        self.assertEqual([getter("a"), getter("b")], ["A", "B"])
        self.assertEqual(getter("a"), "A")  # a is now the most recently used
        self.assertEqual(getter("c"), "C")  # evicts b, the least recently used
        self.assertEqual(len(cache), 2)
        self.assertEqual(fetched, ["a", "b", "c"])
        getter("a")
        self.assertEqual(fetched, ["a", "b", "c"])  # still cached
        getter("b")
        self.assertEqual(fetched, ["a", "b", "c", "b"])  # was evicted

    def test_invalidate(self) -> None:
        d = self.get("k")
        self.fetch.pending[0].callback("v1")
        self.successResultOf(d)
        self.cache.invalidate("k")
        again = self.get("k")
        self.assertEqual(self.fetch.calls, 2)
        self.fetch.pending[1].callback("v2")
        self.assertEqual(self.successResultOf(again), "v2")

    def test_cancelled_waiter(self) -> None:
        # Klein cancels a request's Deferred when its client goes away: a
        # waiter giving up must not break the fetch for the others.
        first, second, third = self.get("k"), self.get("k"), self.get("k")
        second.cancel()
        self.failureResultOf(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual(self.successResultOf(first), "v")
        self.assertEqual(self.successResultOf(third), "v")
        self.assertEqual(self.successResultOf(self.get("k")), "v")
        self.assertEqual(self.fetch.calls, 1)

    def test_cancelled_first_caller(self) -> None:
        # The caller that started the fetch going away must not fail the
        # others with its cancellation.
        first, second = self.get("k"), self.get("k")
        first.cancel()
        self.failureResultOf(first)
        self.assertNoResult(second)
        self.fetch.pending[0].callback("v")
        self.assertEqual(self.successResultOf(second), "v")
        self.assertEqual(self.fetch.calls, 1)
