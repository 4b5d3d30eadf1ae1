# -*- test-case-name: tests.test_tokencache -*-
"""
A positive cache of authentications in front of an authenticator, so that
a pod asking again within seconds costs no TokenReview.

Only successes are cached, for at most C{ttl} seconds and never past the
token's own C{exp}; entries are keyed by the token's SHA-256, so no raw
token outlives the call that carried it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from typing import Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from stsd.identity import Identity

__all__ = ["Authenticator", "CachingAuthenticator"]


class Authenticator(Protocol):
    @property
    def audience(self) -> str: ...

    async def authenticate(self, token: str) -> Identity: ...


def _expiry(token: str) -> float | None:
    """
    The token's C{exp} claim, read WITHOUT verifying the signature: only
    used once the inner authenticator has accepted this very token (the
    cache key covers the signed payload). C{None} if there is none.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1]
    try:
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        # ValueError covers bad JSON and bad UTF-8; RecursionError a payload
        # of deeply nested brackets.
        return None
    if not isinstance(payload, dict):
        return None
    exp = payload.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    try:
        exp = float(exp)
    except OverflowError:
        return None
    return exp if math.isfinite(exp) else None


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
        # digest -> callers waiting for the review in flight.
        self._inflight: dict[bytes, list[Deferred[Identity]]] = {}
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

        # Each caller waits on its own Deferred, so a caller that goes away
        # (Klein cancels on disconnect) cancels neither the review nor the
        # other callers waiting on it.
        mine: Deferred[Identity] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            self.coalesced += 1
            waiters.append(mine)
            return await mine
        self.misses += 1
        self._inflight[key] = [mine]
        # Measured from before the review, so an entry is never fresher
        # than the review it records.
        upstream: Deferred[Identity] = ensureDeferred(self._inner.authenticate(token))
        upstream.addBoth(self._settle, key, now + self._ttl, token)
        return await mine

    def _settle(
        self, result: Identity | Failure, key: bytes, deadline: float, token: str
    ) -> None:
        waiters = self._inflight.pop(key)
        if not isinstance(result, Failure):
            exp = result.expires if result.expires is not None else _expiry(token)
            if exp is not None:
                deadline = min(deadline, exp)
            if self._clock.seconds() < deadline:
                self._entries[key] = (deadline, result)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _drop_oldest_if_expired(self, now: float) -> None:
        # One look per call reclaims expired entries in O(1), without a timer.
        if self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0] <= now:
                del self._entries[oldest]
