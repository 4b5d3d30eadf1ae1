# -*- test-case-name: tests.test_periodic -*-
"""
Periodic work, done one way: a C{TimerService} on the injected clock (as
txacme's issuing service composes one), whose tick never lets a failure
escape. An exception, or a failed Deferred, would stop the C{LoopingCall}
under it for good while the service still reported itself running
(twisted/twisted#3627).

A L{PeriodicService} owns one, started and stopped with it: the first
tick runs at start, the next ones every C{seconds}; stopping waits for a
tick in flight (a Deferred the tick returned) to finish, so a service that
must not wait out an upstream timeout gives its work up as it stops.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["PeriodicService", "timer_service"]

log = Logger()


def timer_service(
    seconds: float, clock: IReactorTime, tick: Callable[[], object], what: str
) -> TimerService:
    """
    A C{TimerService} calling C{tick()} every C{seconds} of C{clock}, the
    first time when it starts.

    A tick that raises, or returns a Deferred that fails, is logged as
    "C{what} failed" and the timer goes on; a tick cancelled (a shutdown
    giving up its work) is not a failure.
    """

    def logged(failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("{what} failed", failure, what=what)

    def guarded() -> Deferred[object] | None:
        try:
            result = tick()
        except Exception:
            log.failure("{what} failed", what=what)
            return None
        if isinstance(result, Deferred):
            return result.addErrback(logged)
        return None

    timer = _Timer(seconds, guarded)
    timer.clock = clock
    return timer


class _Timer(TimerService):
    def stopService(self) -> Deferred[None]:
        # Its owner may be stopped without having been started.
        if getattr(self, "_loop", None) is None:
            return succeed(None)
        stopped: Deferred[None] = super().stopService()
        return stopped


class PeriodicService(Service):
    """
    A service doing its work on a timer: C{_timer}, a L{timer_service} the
    subclass makes in its C{__init__}, starts and stops with it. From
    L{stopService} on C{_stopping} is true, and L{_give_up} cancels the
    work in flight: a shutdown must not wait out an upstream timeout.
    L{stopService}'s Deferred fires once the tick in flight, if any, has
    ended.
    """

    _timer: TimerService
    _stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._timer.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        stopped: Deferred[None] = self._timer.stopService()
        self._give_up()
        return stopped

    def _give_up(self) -> None:
        """
        Cancel the work in flight, if any; by default there is none to
        cancel.
        """
