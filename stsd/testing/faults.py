# -*- test-case-name: tests.test_fakes -*-
"""
Fault injection shared by the fakes: faults keyed by where they apply (a
path prefix, a route), each for a number of requests or until cleared,
the requests a "hang" fault holds open and those a "delay" fault answers
late.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.server import NOT_DONE_YET


def abort(request: Any) -> None:
    """Drop the request's connection at once, as a crashed server would."""
    transport = request.transport
    (getattr(transport, "abortConnection", None) or transport.loseConnection)()


class Faults:
    """
    @param applies: whether the fault set for a key applies to a value
        (the first fault set that applies wins).
    """

    def __init__(self, applies: Callable[[str, str], bool]) -> None:
        self._applies = applies
        # key -> (mode, requests left or None for "until cleared"), in the order set
        self._faults: dict[str, tuple[str, int | None]] = {}
        self._hung: set[Any] = set()
        self._delayed: dict[Any, Any] = {}  # request -> its delayed call

    @property
    def hung(self) -> int:
        """How many requests a "hang" fault holds open now."""
        return len(self._hung)

    def set(self, key: str, mode: str | None, times: int | None = None) -> None:
        self._faults.pop(key, None)
        if mode is not None:
            self._faults[key] = (mode, times)

    def take(self, value: str) -> str | None:
        """The mode of the fault for C{value}, counting one request against it."""
        for key, (mode, remaining) in self._faults.items():
            if self._applies(key, value):
                if remaining is not None:
                    if remaining <= 1:
                        del self._faults[key]
                    else:
                        self._faults[key] = (mode, remaining - 1)
                return mode
        return None

    def connection(self, request: Any, mode: str | None) -> int | None:
        """
        Carry out a connection-level fault ("close", "hang"): the value to
        return from C{render}, or C{None} for any other mode.
        """
        if mode == "close":
            abort(request)
            return NOT_DONE_YET
        if mode == "hang":
            self._hung.add(request)
            request.notifyFinish().addBoth(lambda _: self._hung.discard(request))
            return NOT_DONE_YET
        return None

    @property
    def delayed(self) -> int:
        """How many requests a "delay" fault holds back now."""
        return len(self._delayed)

    def delay(self, request: Any, clock: Any, seconds: float, render: Callable[[], Any]) -> int:
        """
        Carry out a "delay" fault (a slow server): C{render()} answers the
        request after C{seconds}; the value to return from C{render} now.
        """
        def answer() -> None:
            del self._delayed[request]
            body = render()
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()

        def gone(_: object) -> None:
            call = self._delayed.pop(request, None)
            if call is not None and call.active():
                call.cancel()

        self._delayed[request] = clock.callLater(seconds, answer)
        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET

    def clear(self) -> None:
        """Remove every fault and drop the connections of requests left hanging."""
        self._faults.clear()
        for request in list(self._hung) + list(self._delayed):
            abort(request)
        self._hung.clear()
        for call in self._delayed.values():
            if call.active():
                call.cancel()
        self._delayed.clear()
