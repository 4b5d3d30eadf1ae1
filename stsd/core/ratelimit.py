# -*- test-case-name: tests.test_ratelimit -*-
"""
Token-bucket rate limits keyed by a client address or a ServiceAccount.

Buckets refill lazily from the injected clock when they are touched: no
timers, O(1) per call, and memory bounded by an LRU of buckets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

__all__ = ["Rate", "RateLimiter", "retry_after"]

# Refills are float sums, so a client that comes back after exactly the
# wait we told it can find its bucket a hair short of a whole token; this
# slack keeps our Retry-After honest at the cost of 1e-9 of a token.
_SLACK = 1e-9


@dataclass(frozen=True)
class Rate:
    """
    A token bucket's parameters.

    @ivar rate: tokens added per second (> 0).
    @ivar burst: the bucket's capacity (>= 1), and so the most requests
        allowed at once after a quiet period.
    """

    rate: float
    burst: int

    def __post_init__(self) -> None:
        # Checked here so that a bad "limits" entry fails at start-up, not
        # as a ZeroDivisionError on the first refusal.
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise ValueError(f"rate must be a number, not {self.rate!r}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, not {self.burst!r}")


def retry_after(wait: float) -> int:
    """
    The C{Retry-After} header value for a wait returned by
    L{RateLimiter.try_acquire}: whole seconds, rounded up, at least 1 (a
    client told 0 would retry at once and be refused again).
    """
    return max(1, math.ceil(wait))


class RateLimiter:
    """
    Token buckets keyed by an arbitrary hashable key (a client address, a
    ServiceAccount), with memory bounded by an LRU of at most C{max_keys}
    buckets. The least recently used bucket is forgotten; a forgotten key
    starts again with a full bucket, which only ever errs towards allowing.
    """

    def __init__(self, rate: Rate, clock: IReactorTime, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys!r}")
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens at stamp, stamp); oldest use first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, key: Hashable, cost: float = 1.0) -> float | None:
        """
        Take C{cost} tokens from C{key}'s bucket.

        @return: C{None} if allowed (the tokens are taken); otherwise the
            seconds until C{cost} tokens will be available (nothing taken).
        @raise ValueError: if C{cost} is negative or more than the burst,
            which could never be allowed.
        """
        self._check_cost(cost)
        now = self._clock.seconds()
        tokens = self._level(key, now)
        if tokens + _SLACK >= cost:
            self._store(key, tokens - cost, now)
            self._drop_oldest_if_full(now)
            return None
        self._store(key, tokens, now)
        return (cost - tokens) / self.rate.rate

    def peek(self, key: Hashable, cost: float = 1.0) -> float | None:
        """
        Like L{try_acquire}, but take nothing: to refuse a client that is
        already over its budget before doing the work the budget limits.
        """
        self._check_cost(cost)
        tokens = self._level(key, self._clock.seconds())
        if tokens + _SLACK >= cost:
            return None
        # Still in use: keep it from being forgotten (and refilled) first.
        self._buckets.move_to_end(key)
        return (cost - tokens) / self.rate.rate

    def _check_cost(self, cost: float) -> None:
        if not 0 <= cost <= self.rate.burst:
            raise ValueError(f"cost must be in [0, burst={self.rate.burst}], not {cost!r}")

    def _level(self, key: Hashable, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.rate.burst)
        tokens, stamp = bucket
        # A wall clock stepped backwards refills nothing rather than
        # draining the bucket.
        elapsed = max(0.0, now - stamp)
        return min(float(self.rate.burst), tokens + elapsed * self.rate.rate)

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        # Stamping with now even after a backwards step errs towards
        # allowing: the repeated span is refilled twice, never withheld.
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def _drop_oldest_if_full(self, now: float) -> None:
        # A full bucket is what a forgotten key gets anyway, so dropping it
        # changes no answer; one look per call reclaims idle keys in O(1).
        oldest = next(iter(self._buckets))
        tokens, stamp = self._buckets[oldest]
        if tokens + (now - stamp) * self.rate.rate >= self.rate.burst:
            del self._buckets[oldest]
