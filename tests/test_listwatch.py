"""
Tests for L{stsd.state.listwatch}: L{ListWatch}'s decisions (when to list,
watch, resume, back off) against a scripted API whose every list and watch
waits for the test to answer it, on a C{Clock}.

Its work against the strict fake API server is tested through
L{stsd.state.sync.WatchSync}, in C{tests.test_sync}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.state.listwatch import ListWatch
from stsd.upstream.kube import KubernetesError, WatchExpired


class Jitter:
    """
    The injected random source: always C{value}, and counts its calls.
    """

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


# -- ListWatch's decisions, with a scripted API ---------------------------------------------


class ScriptedAPI:
    """
    Each list and watch waits for the test to answer it.
    """

    def __init__(self) -> None:
        self.lists: list[Deferred[tuple[list[dict[str, Any]], str]]] = []
        self.watches: list[tuple[str, Callable[[str, dict[str, Any]], None], Deferred[None]]] = []

    async def list(self, path: str, what: str, *,
                   transform: Any = None) -> tuple[list[dict[str, Any]], str]:
        d: Deferred[tuple[list[dict[str, Any]], str]] = Deferred()
        self.lists.append(d)
        return await d

    async def watch(self, path: str, resource_version: str,
                    on_event: Callable[[str, dict[str, Any]], None], *,
                    timeout_seconds: int, what: str = "objects") -> None:
        d: Deferred[None] = Deferred()
        self.watches.append((resource_version, on_event, d))
        await d


def _version(rv: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}}


class ListWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.api = ScriptedAPI()
        self.replaced: list[tuple[list[dict[str, Any]], str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.jitter = Jitter(1.0)
        self.lw = ListWatch(
            self.api, "/things", "things",
            on_replace=lambda items, rv: self.replaced.append((items, rv)),
            on_event=lambda etype, obj: self.events.append((etype, obj)),
            clock=self.clock, resync_seconds=3600, random=self.jitter,
        )

    def backoff(self) -> float:
        """The delay of the pending backoff (the earliest timer)."""
        return min(c.getTime() for c in self.clock.getDelayedCalls()) - self.clock.seconds()

    def listed(self, rv: str = "5") -> Callable[[str, dict[str, Any]], None]:
        self.api.lists[-1].callback(([], rv))
        rv_watched, on_event, _ = self.api.watches[-1]
        self.assertEqual(rv_watched, rv)
        return on_event

    def test_events_bookmarks_and_unknown_types(self) -> None:
        self.lw.startService()
        on_event = self.listed("5")
        on_event("ADDED", _version("6"))
        on_event("BOOKMARK", _version("9"))
        on_event("SOMETHING", _version("10"))
        self.assertEqual([e for e, _ in self.events], ["ADDED"])
        self.assertEqual(self.lw.resource_version, "9")
        self.successResultOf(self.lw.stopService())

    def deliver(self, etype: str, obj: dict[str, Any]) -> None:
        """As the client does: an exception from on_event ends the watch with it."""
        _, on_event, d = self.api.watches[-1]
        try:
            on_event(etype, obj)
        except Exception as e:
            d.errback(e)

    def test_410_relists_at_once_then_backs_off_if_repeated(self) -> None:
        expired = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
        self.lw.startService()
        self.listed("5")
        self.deliver("ERROR", expired)
        self.assertEqual(len(self.api.lists), 2, "listed again at once")
        self.listed("8")
        self.deliver("ERROR", expired)  # again, with nothing in between
        self.assertEqual(len(self.api.lists), 2)
        self.assertEqual(self.backoff(), 1.0)  # 1.0 * min(30, 0.5 * 2**1)
        self.clock.advance(1.0)
        self.listed("9")
        self.deliver("ADDED", _version("10"))
        # Any other ERROR: back off (the third failure in a row), then list.
        self.deliver("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError"})
        self.assertEqual(self.backoff(), 2.0)
        self.clock.advance(2.0)
        self.assertEqual(len(self.api.lists), 4)
        self.assertEqual([rv for _, rv in self.replaced], ["5", "8", "9"])
        self.successResultOf(self.lw.stopService())

    def test_http_410_on_the_watch_relists_at_once(self) -> None:
        self.lw.startService()
        self.listed("5")
        self.api.watches[-1][2].errback(WatchExpired("watch things: HTTP 410: too old"))
        self.assertEqual(len(self.api.lists), 2)
        self.assertEqual(self.jitter.calls, 0)
        self.successResultOf(self.lw.stopService())

    def test_watch_that_ran_a_while_is_resumed_at_once(self) -> None:
        self.lw.startService()
        self.listed("5")
        self.clock.advance(1.0)
        self.api.watches[-1][2].callback(None)
        self.assertEqual([w[0] for w in self.api.watches], ["5", "5"])
        self.assertEqual(len(self.api.lists), 1)
        self.assertEqual(self.lw.synced_at, 1.0)
        self.successResultOf(self.lw.stopService())

    def test_safety_net_tick_relists_and_restarts_the_watch(self) -> None:
        self.lw.startService()
        self.listed("5")
        first = self.api.watches[-1][2]
        self.clock.advance(3600)
        self.assertTrue(first.called, "the old watch was cancelled")
        self.assertEqual(len(self.api.lists), 2)
        self.listed("11")
        self.assertEqual(self.lw.resource_version, "11")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.successResultOf(self.lw.stopService())

    def test_backoff_doubles_to_the_cap_with_full_jitter(self) -> None:
        self.lw.startService()
        delays = []
        for _ in range(9):
            self.api.lists[-1].errback(KubernetesError("list things: HTTP 500"))
            delays.append(self.backoff())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(self.jitter.calls, 9)
        self.jitter.value = 0.25
        self.api.lists[-1].errback(KubernetesError("list things: HTTP 500"))
        self.assertEqual(self.backoff(), 7.5)
        self.assertEqual(self.replaced, [])
        self.assertFalse(self.lw.listed)
        self.assertTrue(self.lw.attempted)
        self.successResultOf(self.lw.stopService())

    def test_backoff_starts_over_after_a_quiet_minute(self) -> None:
        self.lw.startService()
        self.api.lists[-1].errback(KubernetesError("x"))
        self.clock.advance(self.backoff())
        self.api.lists[-1].errback(KubernetesError("x"))
        self.clock.advance(self.backoff())  # 1.0 s
        on_event = self.listed()
        on_event("MODIFIED", _version("7"))
        # Cut again and again: each one waits longer...
        self.clock.advance(58.9)
        self.api.watches[-1][2].errback(KubernetesError("watch things: connection lost"))
        self.assertEqual(self.backoff(), 2.0)
        self.clock.advance(2.0)
        self.listed()
        # ...but a minute without failure starts over.
        self.clock.advance(60)
        self.api.watches[-1][2].errback(KubernetesError("watch things: connection lost"))
        self.assertEqual(self.backoff(), 0.5)
        self.successResultOf(self.lw.stopService())

    def test_resync_during_a_list_or_backoff_does_not_cut_it(self) -> None:
        self.lw.startService()
        self.lw.resync()
        self.assertEqual(len(self.api.lists), 1)
        self.assertFalse(self.api.lists[0].called)
        self.api.lists[-1].errback(KubernetesError("x"))
        self.lw.resync()
        self.assertEqual(len(self.api.lists), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.api.lists), 2)
        self.successResultOf(self.lw.stopService())

    def test_nothing_is_applied_after_stop(self) -> None:
        self.lw.startService()
        on_event = self.listed()
        self.successResultOf(self.lw.stopService())
        self.assertEqual(len(self.replaced), 1)
        with self.assertRaises(CancelledError):
            on_event("ADDED", _version("6"))
        self.assertEqual(self.events, [])
        self.clock.advance(7200)
        self.assertEqual(len(self.api.lists), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
