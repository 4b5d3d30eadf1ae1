# -*- test-case-name: tests.test_tokencache -*-
"""
A positive cache of authentications in front of an authenticator, so that
a pod asking again within seconds costs no TokenReview.

Only successes are cached, for at most C{ttl} seconds and never past the
token's own C{exp}; entries are keyed by the token's SHA-256, so no raw
token outlives the call that carried it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from stsd.auth.jose import json_segment, number
from stsd.core.cache import SingleFlight
from stsd.model import Authenticator, Identity

__all__ = ["CachingAuthenticator"]



def _expiry(token: str) -> float | None:
    """
    The token's C{exp} claim, read WITHOUT verifying the signature: only
    used once the inner authenticator has accepted this very token (the
    cache key covers the signed payload). C{None} if there is none.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json_segment(parts[1], canonical=False)
    except ValueError:
        return None
    return number(payload.get("exp"))


class CachingAuthenticator:
    """
    Caches successful authentications keyed by SHA-256 of the token (never
    the raw token), for C{min(ttl, exp - now)} seconds. Failures are never
    cached. A bounded LRU of C{max_entries}. Concurrent identical misses
    share one upstream review (single flight); its failure reaches every
    waiter and is not cached. C{ttl == 0} passes every call through.

    @ivar hits: calls answered from the cache.
    @ivar misses: calls that went upstream (one per upstream review).
    @ivar coalesced: calls that joined a review already in flight.
    """

    def __init__(
        self,
        inner: Authenticator,
        clock: IReactorTime,
        *,
        ttl: float = 10.0,
        max_entries: int = 10_000,
    ) -> None:
        if not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"ttl must be a non-negative number of seconds, not {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries!r}")
        self._inner = inner
        self._clock = clock
        self._ttl = ttl
        self._max_entries = max_entries
        # digest -> (valid until, identity); least recently used first.
        self._entries: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        # digest -> the review in flight, shared by its callers.
        self._inflight: SingleFlight[bytes, Identity] = SingleFlight()
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    @property
    def audience(self) -> str:
        return self._inner.audience

    def __len__(self) -> int:
        return len(self._entries)

    async def authenticate(self, token: str) -> Identity:
        if self._ttl == 0:
            self.misses += 1
            return await self._inner.authenticate(token)
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock.seconds()
        self._drop_oldest_if_expired(now)
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry[0]:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            del self._entries[key]

        waiter = self._inflight.join(key)
        if waiter is not None:
            self.coalesced += 1
            return await waiter
        self.misses += 1
        # Measured from before the review, so an entry is never fresher
        # than the review it records.
        return await self._inflight.start(key, lambda: self._review(key, token, now + self._ttl))

    async def _review(self, key: bytes, token: str, deadline: float) -> Identity:
        identity = await self._inner.authenticate(token)
        exp = identity.expires if identity.expires is not None else _expiry(token)
        if exp is not None:
            deadline = min(deadline, exp)
        if self._clock.seconds() < deadline:
            self._entries[key] = (deadline, identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return identity

    def _drop_oldest_if_expired(self, now: float) -> None:
        # One look per call reclaims expired entries in O(1), without a timer.
        if self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0] <= now:
                del self._entries[oldest]
