# -*- test-case-name: tests.test_cache -*-
"""
Single flight (concurrent calls for one key share one run of the work),
the one implementation stsd has; a small time-bounded cache built on it,
whose failures are not cached; and a least-recently-used map bounded by
the bytes its entries weigh.

Caches holding documents a caller chooses (policies) are bounded in bytes:
a count bound lets a few thousand large documents fill a pod's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What a cache entry costs beyond the bytes it is weighed at (the tuple,
# the dict slot, small objects): a rough CPython figure.
ENTRY_OVERHEAD = 200


class _Flight(Generic[V]):
    __slots__ = ("waiters", "work")

    def __init__(self, first: Deferred[V]) -> None:
        self.waiters = [first]
        self.work: Deferred[V] | None = None


class SingleFlight(Generic[K, V]):
    """
    Concurrent calls for one key share one run of the work: the first
    L{start}s it, the others L{join} it, and all get its outcome, failure
    included (nothing is remembered once it has landed: caching is the
    work's own business, done before the callers hear of it).

    Each caller waits on its own Deferred, and the work runs detached from
    them: a caller going away (Klein cancels the request of a client that
    disconnected) cancels neither the work nor the other callers. Only
    L{cancel} stops the work itself (a service shutting down).

    A hit on a cache in front of this costs nothing here: callers look
    there first, and come here only on a miss.
    """

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[K]:
        return iter(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def join(self, key: K) -> Deferred[V] | None:
        """
        A Deferred of the outcome of the work in flight for C{key}, or
        C{None} when none is.
        """
        flight = self._flights.get(key)
        if flight is None:
            return None
        waiter: Deferred[V] = Deferred()
        flight.waiters.append(waiter)
        return waiter

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> Deferred[V]:
        """
        Run C{work()} for C{key}, which has none in flight, and return a
        Deferred of its outcome. The work may finish at once (then so does
        the Deferred); the key is free again before any caller hears of it.
        """
        first: Deferred[V] = Deferred()
        flight = _Flight(first)
        self._flights[key] = flight
        try:
            work_done = Deferred.fromCoroutine(work())
        except BaseException:
            del self._flights[key]
            raise
        if not work_done.called:
            flight.work = work_done
        work_done.addBoth(self._landed, key, flight)
        return first

    def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> Deferred[V]:
        """
        Join the work in flight for C{key}, or start C{work} for it.
        """
        joined = self.join(key)
        return joined if joined is not None else self.start(key, work)

    def cancel(self, key: K) -> None:
        """
        Cancel the work in flight for C{key}, if any: its callers get what
        the work makes of the cancellation.
        """
        flight = self._flights.get(key)
        if flight is not None and flight.work is not None:
            flight.work.cancel()

    def _landed(self, result: V | Failure, key: K, flight: _Flight[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.work = None
        for waiter in flight.waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


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
        self._inflight: SingleFlight[Hashable, V] = SingleFlight()

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
        return await self._inflight.run(key, lambda: self._fill(key, fetch))

    async def _fill(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        value = await fetch()
        weight = self._weigh(key, value) if self._weigh is not None else 0
        self._entries.put(key, (self._clock.seconds() + self._ttl, value), weight)
        return value
