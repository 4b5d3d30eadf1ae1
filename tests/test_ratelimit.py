"""
Tests for L{stsd.core.ratelimit}: token buckets on a L{Clock}, their LRU bound,
and — with hypothesis — that no window of T seconds ever lets through more
than C{burst + rate * T} requests for one key.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.core.ratelimit import Rate, RateLimiter, retry_after
from tests._trial import cases, expand


def drain(limiter: RateLimiter, key: object) -> int:
    """Acquire until refused; return how many were allowed."""
    n = 0
    while limiter.try_acquire(key) is None:
        n += 1
        assert n <= 10_000, "never refused"
    return n


class RateTests(SynchronousTestCase):
    def test_valid(self) -> None:
        r = Rate(rate=5, burst=20)
        self.assertEqual((r.rate, r.burst), (5, 20))

    def test_invalid(self) -> None:
        for rate, burst in [(0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1),
                            ("5", 1), (True, 1), (1, 0), (1, 1.5), (1, True), (1, "2")]:
            with self.assertRaises(ValueError, msg=(rate, burst)):
                Rate(rate, burst)  # type: ignore[arg-type]

    def test_frozen(self) -> None:
        r = Rate(1, 1)
        with self.assertRaises(AttributeError):
            r.rate = 2  # type: ignore[misc]


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # a wall-clock-sized time, as in production

    def limiter(self, rate: float = 2, burst: int = 5, **kw: int) -> RateLimiter:
        return RateLimiter(Rate(rate, burst), self.clock, **kw)

    def test_burst_then_refusal(self) -> None:
        limiter = self.limiter(rate=2, burst=5)
        for _ in range(5):
            self.assertIsNone(limiter.try_acquire("a"))
        wait = limiter.try_acquire("a")
        self.assertIsNotNone(wait)
        # Refused and still refused: a refusal takes nothing.
        self.assertEqual(limiter.try_acquire("a"), wait)

    def test_refill_is_rate_times_elapsed(self) -> None:
        limiter = self.limiter(rate=2, burst=10)
        self.assertEqual(drain(limiter, "a"), 10)
        self.clock.advance(1.5)
        self.assertEqual(drain(limiter, "a"), 3)
        self.clock.advance(0.25)
        self.assertEqual(drain(limiter, "a"), 0)  # half a token is not a token
        self.clock.advance(0.25)
        self.assertEqual(drain(limiter, "a"), 1)

    def test_refill_in_many_small_steps(self) -> None:
        # Ten refills of 0.1 token sum to 0.9999999999999999: the slack keeps
        # a client that waited the advertised second from being refused.
        clock = Clock()
        limiter = RateLimiter(Rate(1, 3), clock)
        self.assertEqual(drain(limiter, "a"), 3)
        for _ in range(9):
            clock.advance(0.1)
            self.assertIsNotNone(limiter.try_acquire("a"))  # stores each refill
        clock.advance(0.1)
        self.assertIsNone(limiter.try_acquire("a"))

    def test_refill_capped_at_burst(self) -> None:
        limiter = self.limiter(rate=2, burst=5)
        self.assertEqual(drain(limiter, "a"), 5)
        self.clock.advance(3600)
        self.assertEqual(drain(limiter, "a"), 5)
        self.clock.advance(3600)
        n = 0
        while limiter.try_acquire("a", cost=0.5) is None:
            n += 1
        self.assertEqual(n, 10)

    def test_almost_a_token_is_not_a_token(self) -> None:
        limiter = self.limiter(rate=1, burst=1)
        self.assertIsNone(limiter.try_acquire("a"))
        self.clock.advance(0.999)
        self.assertIsNotNone(limiter.try_acquire("a"))
        self.clock.advance(0.001)
        self.assertIsNone(limiter.try_acquire("a"))

    def test_retry_after_value(self) -> None:
        limiter = self.limiter(rate=0.5, burst=2)
        self.assertEqual(drain(limiter, "a"), 2)
        # Empty; one token takes 1 / 0.5 = 2 s.
        self.assertAlmostEqual(limiter.try_acquire("a"), 2.0)
        self.clock.advance(0.5)
        self.assertAlmostEqual(limiter.try_acquire("a"), 1.5)
        self.assertAlmostEqual(limiter.try_acquire("a", cost=2), 3.5)
        self.clock.advance(1.5)
        # Coming back after exactly the advertised wait succeeds.
        self.assertIsNone(limiter.try_acquire("a"))

    def test_retry_after_header(self) -> None:
        self.assertEqual(retry_after(0.0), 1)
        self.assertEqual(retry_after(1e-12), 1)
        self.assertEqual(retry_after(1.0), 1)
        self.assertEqual(retry_after(1.01), 2)
        self.assertEqual(retry_after(59.5), 60)

    def test_cost(self) -> None:
        limiter = self.limiter(rate=1, burst=5)
        self.assertIsNone(limiter.try_acquire("a", cost=4))
        self.assertAlmostEqual(limiter.try_acquire("a", cost=2), 1.0)
        self.assertIsNone(limiter.try_acquire("a", cost=1))
        for bad in (-1, 6, float("nan")):
            with self.assertRaises(ValueError):
                limiter.try_acquire("a", cost=bad)
            with self.assertRaises(ValueError):
                limiter.peek("a", cost=bad)

    def test_keys_independent(self) -> None:
        limiter = self.limiter(rate=1, burst=3)
        self.assertEqual(drain(limiter, ("sa", "apps", "x")), 3)
        self.assertEqual(drain(limiter, "10.0.0.1"), 3)
        self.assertEqual(drain(limiter, ("sa", "apps", "y")), 3)
        self.assertEqual(len(limiter), 3)

    def test_lru_bound(self) -> None:
        limiter = self.limiter(rate=0.001, burst=2, max_keys=3)
        for key in "abc":
            self.assertEqual(drain(limiter, key), 2)
        self.assertIsNotNone(limiter.try_acquire("a"))  # a is now the most recent
        self.assertIsNone(limiter.try_acquire("d"))  # evicts b, the least recent
        self.assertEqual(len(limiter), 3)
        # a, c, d are still remembered (and empty or nearly); b starts full.
        self.assertIsNotNone(limiter.try_acquire("a"))
        self.assertIsNotNone(limiter.try_acquire("c"))
        self.assertEqual(len(limiter), 3)
        self.assertIsNone(limiter.try_acquire("b"))
        self.assertEqual(len(limiter), 3)

    def test_peek_takes_nothing(self) -> None:
        limiter = self.limiter(rate=1, burst=2)
        self.assertIsNone(limiter.peek("a"))
        self.assertEqual(len(limiter), 0)  # peeking a new key remembers nothing
        self.assertIsNone(limiter.try_acquire("a"))
        for _ in range(5):
            self.assertIsNone(limiter.peek("a"))
        self.assertIsNone(limiter.try_acquire("a"))
        wait = limiter.peek("a")
        self.assertAlmostEqual(wait, 1.0)
        self.assertEqual(limiter.peek("a"), wait)
        self.assertEqual(limiter.try_acquire("a"), wait)

    def test_peek_refreshes_lru(self) -> None:
        # A client refused by peek alone is still active: do not forget it.
        limiter = self.limiter(rate=0.001, burst=1, max_keys=2)
        self.assertIsNone(limiter.try_acquire("attacker"))
        self.assertIsNone(limiter.try_acquire("b"))
        self.assertIsNotNone(limiter.peek("attacker"))
        self.assertIsNone(limiter.try_acquire("c"))  # evicts b, not the attacker
        self.assertIsNotNone(limiter.peek("attacker"))

    def test_full_buckets_dropped(self) -> None:
        limiter = self.limiter(rate=1, burst=2)
        limiter.try_acquire("idle")
        self.clock.advance(1)
        limiter.try_acquire("busy")
        # "idle" is full again: forgetting it changes no answer.
        self.assertEqual(len(limiter), 1)
        self.assertEqual(drain(limiter, "idle"), 2)

    def test_clock_stepped_backwards(self) -> None:
        limiter = self.limiter(rate=1, burst=2)
        self.assertEqual(drain(limiter, "a"), 2)
        self.clock.rightNow -= 3600
        self.assertIsNotNone(limiter.try_acquire("a"))
        self.clock.advance(1)
        self.assertIsNone(limiter.try_acquire("a"))

    def test_invalid_max_keys(self) -> None:
        with self.assertRaises(ValueError):
            self.limiter(max_keys=0)


@expand
class RateLimitFunctionTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        rate=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 7.5, 100.0]),
        burst=st.integers(min_value=1, max_value=8),
        ops=st.lists(
            st.tuples(
                # advance in milliseconds: exact windows, no float needles
                st.one_of(st.just(0), st.integers(min_value=0, max_value=3000)).map(
                    lambda ms: ms / 1000),
                st.sampled_from("abc"),
                st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0]),
            ),
            max_size=120,
        ),
    )
    def test_no_window_exceeds_burst_plus_rate(self, 
        rate: float, burst: int, ops: list[tuple[float, str, float]]
    ) -> None:
        clock = Clock()
        limiter = RateLimiter(Rate(rate, burst), clock)
        granted: dict[str, list[tuple[float, float]]] = {}
        for advance, key, cost in ops:
            clock.advance(advance)
            cost = min(cost, burst)
            before = limiter.peek(key, cost)
            got = limiter.try_acquire(key, cost)
            assert (before is None) == (got is None), "peek and try_acquire disagree"
            if got is None:
                granted.setdefault(key, []).append((clock.seconds(), cost))
            else:
                assert got > 0
        for grants in granted.values():
            # The tightest windows start and end at grants.
            for i in range(len(grants)):
                spent = 0.0
                for j in range(i, len(grants)):
                    spent += grants[j][1]
                    window = grants[j][0] - grants[i][0]
                    assert spent <= burst + rate * window + 1e-9, (i, j, grants)

    @cases("n", [1, 1000])
    def test_lru_never_exceeds_max_keys(self, n: int) -> None:
        limiter = RateLimiter(Rate(1, 1), Clock(), max_keys=n)
        for k in range(3 * n):
            limiter.try_acquire(k)
            assert len(limiter) <= n
        assert len(limiter) == n
