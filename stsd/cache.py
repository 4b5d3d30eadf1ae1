# -*- test-case-name: tests.test_cache -*-
"""
A small time-bounded cache with single flight: concurrent misses for one
key share a single upstream fetch, and failures are not cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._inflight: dict[Hashable, list[Deferred[V]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: Hashable, default: object = None) -> V | object:
        """
        The cached value if it is fresh, else C{default}; never fetches.
        """
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
            return entry[1]
        return default

    def invalidate(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
            self._entries.move_to_end(key)
            return entry[1]
        waiters = self._inflight.get(key)
        if waiters is not None:
            d: Deferred[V] = Deferred()
            waiters.append(d)
            return await d
        self._inflight[key] = waiters = []
        first: Deferred[V] = Deferred()
        waiters.append(first)
        # The fetch runs detached from its callers: the first one going away
        # (Klein cancels a request whose client disconnected) must not cancel
        # the fetch, nor fail the others with its CancelledError.
        Deferred.fromCoroutine(self._fill(key, fetch, waiters))
        return await first

    async def _fill(
        self, key: Hashable, fetch: Callable[[], Awaitable[V]], waiters: list[Deferred[V]]
    ) -> None:
        try:
            value = await fetch()
        except Exception as e:  # not GeneratorExit: a collected fetch has no waiters left
            del self._inflight[key]
            for w in waiters:
                w.errback(e)
            return
        del self._inflight[key]
        self._entries[key] = (self._clock.seconds() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        for w in waiters:
            w.callback(value)
