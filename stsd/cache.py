# -*- test-case-name: tests.test_cache -*-
"""
A small time-bounded cache with single flight: concurrent misses for one
key share a single upstream fetch, and failures are not cached; and a
least-recently-used map bounded by the bytes its entries weigh.

Caches holding documents a caller chooses (policies) are bounded in bytes:
a count bound lets a few thousand large documents fill a pod's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What a cache entry costs beyond the bytes it is weighed at (the tuple,
# the dict slot, small objects): a rough CPython figure.
ENTRY_OVERHEAD = 200


class ByteLRU(Generic[K, V]):
    """
    A least-recently-used map holding at most C{max_bytes}, as its entries
    are weighed by the caller (an entry heavier than the whole bound is not
    kept), and at most C{max_entries} entries.
    """

    def __init__(self, max_bytes: int, max_entries: int = 100_000) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The weight of the entries held, overhead included."""
        return self._bytes

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, weight: int) -> None:
        self.pop(key)
        weight += ENTRY_OVERHEAD
        if weight > self._max_bytes:
            return
        self._entries[key] = (value, weight)
        self._bytes += weight
        while self._bytes > self._max_bytes or len(self._entries) > self._max_entries:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]


class TTLCache(Generic[V]):
    """
    Values fetched on a miss and kept for C{ttl} seconds, at most
    C{max_entries} of them and, with C{weigh}, at most C{max_bytes} as
    weighed (least recently used first out).
    """

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = 10_000, *,
                 max_bytes: int | None = None, weigh: Callable[[Hashable, V], int] | None = None) -> None:
        self._clock = clock
        self._ttl = ttl
        self._weigh = weigh
        self._entries: ByteLRU[Hashable, tuple[float, V]] = ByteLRU(
            max_bytes if max_bytes is not None else 1 << 62, max_entries)
        self._inflight: dict[Hashable, list[Deferred[V]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._entries.bytes

    def fresh(self, key: Hashable, default: object = None) -> V | object:
        """
        The cached value if it is fresh, else C{default}; never fetches.
        """
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
            return entry[1]
        return default

    def invalidate(self, key: Hashable) -> None:
        self._entries.pop(key)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
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
        weight = self._weigh(key, value) if self._weigh is not None else 0
        self._entries.put(key, (self._clock.seconds() + self._ttl, value), weight)
        for w in waiters:
            w.callback(value)
