# -*- test-case-name: tests.test_periodic -*-
"""
Periodic work, done one way: a L{TimerService} on the injected clock (as
txacme's issuing service composes one), whose tick never lets a failure
escape. An exception, or a failed Deferred, would stop the L{LoopingCall}
under it for good while the service still reported itself running
(twisted/twisted#3627).

The services owning one start it in their C{startService} and return its
C{stopService}: the first tick runs at start, the next ones every
C{seconds}; stopping waits for a tick in flight (a Deferred the tick
returned) to finish, so a service that must not wait out an upstream
timeout cancels its own work as it stops.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["timer_service"]

log = Logger()


def timer_service(
    seconds: float, clock: IReactorTime, tick: Callable[[], object], what: str
) -> TimerService:
    """
    A L{TimerService} calling C{tick()} every C{seconds} of C{clock}, the
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
