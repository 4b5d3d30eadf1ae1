"""
Tests for L{stsd.cache}: single flight, the byte-bounded LRU and the TTL cache's byte
bound, and that the exchange's caches of policy documents stay within
their bytes whatever callers send (issue 9, finding 4).
"""

from __future__ import annotations

import json

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from stsd.cache import ENTRY_OVERHEAD, ByteLRU, SingleFlight, TTLCache


def test_byte_lru_evicts_least_recently_used_by_weight() -> None:
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


def test_byte_lru_replacing_and_popping_keep_the_account() -> None:
    lru: ByteLRU[str, int] = ByteLRU(max_bytes=10_000)
    lru.put("k", 1, 500)
    lru.put("k", 2, 100)
    assert (lru.get("k"), lru.bytes, len(lru)) == (2, 100 + ENTRY_OVERHEAD, 1)
    assert lru.pop("k") == 2 and lru.bytes == 0 and lru.pop("k") is None
    lru.put("huge", 3, 20_000)  # heavier than the whole bound: not kept
    assert lru.get("huge") is None and lru.bytes == 0


def test_byte_lru_entry_bound() -> None:
    lru: ByteLRU[int, int] = ByteLRU(max_bytes=1 << 30, max_entries=5)
    for i in range(10):
        lru.put(i, i, 1)
    assert len(lru) == 5 and lru.get(4) is None and lru.get(9) == 9


def _get(cache: TTLCache, key, value):
    results: list = []
    Deferred.fromCoroutine(cache.get(key, lambda: succeed(value))).addCallback(results.append)
    return results[0]


def test_ttl_cache_weighs_its_values() -> None:
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


def test_exchange_caches_stay_within_their_bytes(monkeypatch) -> None:
    """
    Callers sending ever new ~2 KB Policies fill the effective-policy and
    reuse caches only up to their byte bounds (issue 9, finding 4: with a
    count bound, 15,000 of them grew the daemon by 146 MiB).
    """
    import stsd.exchange
    from tests.test_exchange import Harness

    monkeypatch.setattr(stsd.exchange, "EFFECTIVE_CACHE_BYTES", 64 * 1024)
    monkeypatch.setattr(stsd.exchange, "MINTED_CACHE_BYTES", 64 * 1024)
    h = Harness()
    h.exchange = stsd.exchange.Exchange(
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


def test_single_flight_shares_one_run_and_frees_the_key_before_callers_hear() -> None:
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


def test_single_flight_work_that_finishes_at_once() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def work() -> str:
        return "now"

    d = flights.start("k", work)
    assert d.called and d.result == "now" and len(flights) == 0
