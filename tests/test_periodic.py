"""
Tests for L{stsd.core.periodic}: the one way stsd runs periodic work, a
L{TimerService} on an injected L{Clock} whose tick never stops it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from stsd.core.periodic import timer_service


class TimerServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ticks: list[float] = []

    def test_first_tick_at_start_then_every_interval(self) -> None:
        timer = timer_service(5.0, self.clock, lambda: self.ticks.append(self.clock.seconds()),
                              "ticking")
        timer.startService()
        self.assertEqual(self.ticks, [0.0])
        self.clock.advance(4.9)
        self.assertEqual(self.ticks, [0.0])
        self.clock.advance(0.1)
        self.clock.advance(5.0)
        self.assertEqual(self.ticks, [0.0, 5.0, 10.0])
        self.successResultOf(timer.stopService())
        self.clock.advance(50)
        self.assertEqual(len(self.ticks), 3)

    def test_a_raising_tick_is_logged_and_the_timer_goes_on(self) -> None:
        def tick() -> None:
            self.ticks.append(self.clock.seconds())
            raise RuntimeError("bug")

        timer = timer_service(1.0, self.clock, tick, "ticking")
        with capturedLogs() as events:
            timer.startService()
            self.clock.advance(1.0)
        self.assertEqual(self.ticks, [0.0, 1.0])
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 2)
        self.assertEqual(formatEvent(failures[0]), "ticking failed")
        self.flushLoggedErrors(RuntimeError)
        self.successResultOf(timer.stopService())

    def test_a_failed_deferred_is_logged_and_the_timer_goes_on(self) -> None:
        def tick() -> Deferred[None]:
            self.ticks.append(self.clock.seconds())
            return fail(ValueError("async bug"))

        timer = timer_service(1.0, self.clock, tick, "ticking")
        with capturedLogs() as events:
            timer.startService()
            self.clock.advance(1.0)
        self.assertEqual(self.ticks, [0.0, 1.0])
        self.assertEqual(sum("log_failure" in e for e in events), 2)
        self.flushLoggedErrors(ValueError)
        self.successResultOf(timer.stopService())

    def test_stopping_waits_for_the_tick_in_flight(self) -> None:
        pending: list[Deferred[None]] = []

        def tick() -> Deferred[None]:
            pending.append(Deferred())
            return pending[-1]

        timer = timer_service(1.0, self.clock, tick, "ticking")
        timer.startService()
        stopped = timer.stopService()
        self.assertNoResult(stopped)
        with capturedLogs() as events:
            pending[0].cancel()  # a shutdown giving up its work is not a failure
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.successResultOf(stopped)
        self.assertEqual(len(pending), 1)

    def test_stopping_a_timer_never_started(self) -> None:
        timer = timer_service(1.0, self.clock, lambda: None, "ticking")
        self.successResultOf(timer.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
