# -*- test-case-name: tests.test_drain -*-
"""
A graceful stop: what happens between SIGTERM and the exit.

twistd stops the application's services on SIGTERM and waits for the
Deferred their C{stopService} returns (txacme's habit). L{GracefulStop}
is stsd's top service; its stop, timed by the injected clock:

 1. at once: C{/readyz} answers 503 on both ports (L{readiness}), and
    every STS answer from now on closes its connection (the client's next
    connection goes through the Service again);
 2. for C{delay} seconds the STS port still takes new connections, while
    Kubernetes removes the pod from the Service's endpoints and every
    node's proxy catches up (without this, connections routed here in that
    window are refused);
 3. then the STS listener stops (new connections are refused), idle
    keep-alive connections are closed, and requests in flight have
    C{grace} seconds to be answered;
 4. what is still in flight then is cut off (once every request is
    answered, the last connections get up to L{LINGER_SECONDS} to close);
    the other services (the metrics port, the sync, the timers) stop, and
    the process exits 0.

The pod's C{terminationGracePeriodSeconds} must exceed C{delay + grace}.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd.http.channel import DeadlineSite
from stsd.twisted_private import clear_exit_signal

log = Logger()

SHUTTING_DOWN = "shutting down"
# How long the last answers' connections may take to close once no request
# is in flight, before they are dropped.
LINGER_SECONDS = 1.0


class GracefulStop(MultiService):
    """
    The top service of stsd: its children stop only once the STS port is
    drained (see the module docstring).

    @param clock: the reactor (its C{_exitSignal} is reset after a
        completed drain, so that twistd exits 0 rather than re-raising
        SIGTERM on itself).
    """

    def __init__(self, clock: IReactorTime, *, delay: float, grace: float) -> None:
        super().__init__()
        self._clock = clock
        self.delay = delay
        self.grace = grace
        self.draining = False
        self._listener: IService | None = None
        self._site: DeadlineSite | None = None
        self._began = 0.0

    def drains(self, listener: IService, site: DeadlineSite) -> None:
        """
        Drain C{site}, served by C{listener} (a child service, stopped
        C{delay} seconds after the stop begins, before the other children).
        """
        self._listener = listener
        self._site = site

    def readiness(self, inner: Callable[[], str | None]) -> Callable[[], str | None]:
        """C{inner}, except that a stopping stsd is not ready."""

        def readiness() -> str | None:
            return SHUTTING_DOWN if self.draining else inner()

        return readiness

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)  # not running from now on, as Twisted's services
        self.draining = True
        self._began = self._clock.seconds()
        if self._site is not None:
            self._site.draining = True
        log.info("stopping: /readyz answers 503; new connections are taken for {delay:g} s, "
                 "then requests in flight have {grace:g} s", delay=self.delay, grace=self.grace)
        d: Deferred[None] = Deferred()
        self._clock.callLater(self.delay, self._stop_listening, d)
        # A drain that went wrong is logged; the rest stops all the same.
        d.addErrback(lambda f: log.failure("draining the STS port", failure=f))
        d.addCallback(lambda _: self._stop_the_rest())
        return d

    def _elapsed(self) -> float:
        return self._clock.seconds() - self._began

    def _stop_listening(self, done: Deferred[None]) -> None:
        if self._listener is None or self._site is None:
            done.callback(None)
            return
        site = self._site
        stopped = maybeDeferred(self._listener.stopService)
        # Whatever the port says, the drain goes on: the process is stopping.
        stopped.addErrback(lambda f: log.failure("stopping the STS listener", failure=f))

        def listening_stopped(_: object) -> Deferred[None]:
            closed = site.close_idle()
            log.info("stopped listening {elapsed:.2f} s after the stop began; "
                     "{busy} requests in flight, {closed} idle connections closed",
                     elapsed=self._elapsed(), busy=site.busy, closed=closed)
            return self._finish_in_flight(site)

        stopped.addCallback(listening_stopped).chainDeferred(done)

    def _finish_in_flight(self, site: DeadlineSite) -> Deferred[None]:
        quiet = _within(self._clock, site.when_quiet(), self.grace)

        def settled(in_time: bool) -> Deferred[None] | None:
            cut_off = 0 if in_time else site.busy
            if cut_off:
                log.warn("{cut_off} requests still in flight {grace:g} s after the listener "
                         "stopped: cutting them off", cut_off=cut_off, grace=self.grace)
                self._close(site, cut_off)
                return None
            # The last answers are written, their connections closing: let
            # them go out (a TLS close waits for the client's) for a moment.
            closed = _within(self._clock, site.when_closed(), LINGER_SECONDS)
            return closed.addCallback(lambda _: self._close(site, 0))

        return quiet.addCallback(settled)

    def _close(self, site: DeadlineSite, cut_off: int) -> None:
        # Requests cut off get Klein's cancellation (audited as 499).
        site.abort_all()
        log.info("drained {elapsed:.2f} s after the stop began ({cut_off} requests cut off)",
                 elapsed=self._elapsed(), cut_off=cut_off)

    def _stop_the_rest(self) -> Deferred[None]:
        # MultiService.stopService, less the listener already stopped.
        waits = [maybeDeferred(service.stopService)
                 for service in reversed(list(self)) if service is not self._listener]

        def stopped(_: object) -> None:
            log.info("stopped {elapsed:.2f} s after the stop began", elapsed=self._elapsed())
            _exit_cleanly(self._clock)

        return DeferredList(waits).addCallback(stopped)


def _within(clock: IReactorTime, d: Deferred[None], seconds: float) -> Deferred[bool]:
    """Whether C{d} fired within C{seconds} (it is cancelled if not)."""
    if d.called:
        return succeed(True)
    timer = clock.callLater(seconds, d.cancel)

    def fired(result: object) -> bool:
        if timer.active():
            timer.cancel()
            return True
        return False

    return d.addBoth(fired)


def _exit_cleanly(reactor: Any) -> None:
    """
    A drained SIGTERM is an orderly stop: twistd would otherwise re-raise
    the signal on itself once the reactor stops (exit status 143), which
    Kubernetes and process supervisors report as a failure.
    """
    clear_exit_signal(reactor, signal.SIGTERM)
