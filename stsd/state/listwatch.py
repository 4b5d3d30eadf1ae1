# -*- test-case-name: tests.test_listwatch,tests.test_sync -*-
"""
Follow one collection of the Kubernetes API with list + watch: a change
reaches the caller as soon as the API server streams it, instead of at
the next periodic list.

L{ListWatch} lists, then watches from the list's resourceVersion (with
bookmarks); a watch that ends normally is resumed from the last version
seen; a 410 or other C{ERROR} event, a failed or cut connection, a silent
stream or a failing list start over with a new list, after a backoff with
full jitter when something failed. A safety-net timer
(L{stsd.core.periodic}) re-lists every C{resync_seconds} whatever the watch
says, so a watch that stalls silently cannot leave the state stale for
longer.

It knows nothing of what it follows: the objects go to its caller's
C{on_replace} and C{on_event} (L{stsd.state.sync} for PolicyBindings and
Tenants, L{stsd.state.serviceaccounts} for ServiceAccounts).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from stsd.core.periodic import timer_service
from stsd.upstream.kube import KubernetesError, OnWatchEvent, WatchExpired

log = Logger()

WATCH_SECONDS = 300  # timeoutSeconds asked of the API server per watch request
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
# The backoff starts again from its base once nothing has failed for this
# long (as client-go's reflector does): a connection cut now and then is
# retried quickly, one cut again and again is not.
BACKOFF_RESET_SECONDS = 60.0
# A watch that ends cleanly sooner than this with nothing in it is treated
# like a failure (backoff): a server ending every watch at once must not be
# asked again in a tight loop.
MIN_WATCH_SECONDS = 1.0

EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")


def full_jitter(attempt: int, random: Callable[[], float]) -> float:
    """
    The delay before trying again after the C{attempt}-th failure in a row
    (from 0), with full jitter: uniform in [0, min(cap, base * 2 **
    attempt)), C{random} drawing from [0, 1).
    """
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(attempt, 32))
    return random() * ceiling


def _kept(listed: bool) -> str:
    """What a failure leaves in place, truthfully: a last good state only if one was listed."""
    return "keeping the last good state" if listed else "nothing listed yet (not ready)"


class Watcher(Protocol):
    """
    What L{ListWatch} needs of L{stsd.upstream.kube.KubernetesClient}.
    """

    async def list(
        self, path: str, what: str, *, transform: Any = None
    ) -> tuple[list[Any], str]: ...

    async def watch(self, path: str, resource_version: str, on_event: OnWatchEvent, *,
                    timeout_seconds: int, what: str = ...) -> None: ...


class _ErrorEvent(Exception):
    """
    The watch stream carried an C{ERROR} event (a Status): list again.

    @ivar code: the Status's HTTP code, if it has one.
    @ivar reason: the Status's reason.
    """

    def __init__(self, status: dict[str, Any]) -> None:
        code = status.get("code")
        reason = status.get("reason")
        self.code = code if isinstance(code, int) else None
        self.reason = reason if isinstance(reason, str) else "no reason"
        super().__init__(f"ERROR event: {self.code} {self.reason}")

    @property
    def expired(self) -> bool:
        """The Status says the version watched from is too old (410)."""
        return self.code == 410 or self.reason in ("Expired", "Gone")


def _resource_version(obj: dict[str, Any]) -> str | None:
    """An object's C{metadata.resourceVersion}, if it has one."""
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and version else None


def object_key(obj: dict[str, Any]) -> tuple[str, str] | None:
    """An API object's (namespace, name), if its metadata names both."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str):
        return namespace, name
    return None


class ListWatch(Service):
    """
    Follow the objects at one API path: list into C{on_replace(items,
    resourceVersion)}, then stream each change into C{on_event(type,
    object)} (C{ADDED}, C{MODIFIED}, C{DELETED}; bookmarks only advance the
    resourceVersion).

    Every step catches and logs its own failures and the loop goes on: a
    failure keeps the last good state. Stopping cancels the list, watch or
    backoff in flight and the safety-net timer; L{stopService}'s Deferred
    fires once the loop has ended, and no callback is called after that.

    @ivar listed: a list has succeeded at least once.
    @ivar attempted: the first list has finished, successfully or not.
    @ivar synced_at: clock time of the last successful list or event.
    @ivar resource_version: the version the next watch starts from.
    """

    def __init__(
        self,
        kubernetes: Watcher,
        path: str,
        what: str,
        *,
        on_replace: Callable[[list[Any], str], Deferred[None] | None],
        on_event: OnWatchEvent,
        clock: IReactorTime,
        resync_seconds: float,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        watch_seconds: int = WATCH_SECONDS,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._kubernetes = kubernetes
        self._path = path
        self.what = what
        self._on_replace = on_replace
        self._on_event = on_event
        self._transform = transform
        self._clock = clock
        self._watch_seconds = watch_seconds
        self._random = random

        self.listed = False
        self.attempted = False
        self.synced_at: float | None = None
        self.resource_version: str | None = None

        self._phase = "stopped"  # listing | watching | backoff | stopped
        self._stopping = False
        self._must_list = True
        self._resync_requested = False
        self._attempt = 0  # failures in a row, for the backoff
        self._last_failure = float("-inf")
        self._delivered = False  # the current watch delivered an event
        self._watch_started = 0.0
        self._pending: Deferred[Any] | None = None
        self._safety = timer_service(resync_seconds, clock, self.resync,
                                     f"{what}: the periodic re-list")
        self._waiters: list[Deferred[None]] = []

    # -- the service ------------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._stopping = False
        self._must_list = True
        self._phase = "listing"
        # The safety net ticks at once, while the first list is due anyway
        # (a tick then does nothing), and every resync_seconds after.
        self._safety.startService()
        Deferred.fromCoroutine(self._run())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        self._safety.stopService()  # resync never returns a Deferred: stopped at once
        if self._phase == "stopped":
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._waiters.append(stopped)
        if self._pending is not None:
            self._pending.cancel()
        return stopped

    def resync(self) -> None:
        """
        The safety net: list again now and restart the watch from the new
        version. A list or backoff in flight already leads to a list.
        """
        if self._stopping:
            return
        if self._phase == "watching" and self._pending is not None:
            self._resync_requested = True
            self._pending.cancel()
        elif self._phase == "backoff":
            self._must_list = True

    # -- the loop ---------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.0
        try:
            while not self._stopping:
                try:
                    if delay > 0:
                        self._phase = "backoff"
                        await self._wait(deferLater(self._clock, delay, lambda: None))
                        delay = 0.0
                    if self._must_list:
                        await self._list()
                    await self._watch()
                    delay = self._ended()
                except Exception as e:
                    if self._stopping:
                        break
                    delay = self._failed(e)
        finally:
            self._phase = "stopped"
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    async def _wait(self, d: Deferred[Any]) -> Any:
        if self._stopping:  # stopped from a callback of this very loop
            d.cancel()
            raise CancelledError()
        self._pending = d
        try:
            result = await d
        finally:
            self._pending = None
        if self._stopping:
            raise CancelledError()
        return result

    async def _list(self) -> None:
        self._phase = "listing"
        try:
            items, version = await self._wait(
                Deferred.fromCoroutine(self._kubernetes.list(
                    self._path, self.what, transform=self._transform)))
        finally:
            self.attempted = True
        replaced = self._on_replace(items, version)
        if isinstance(replaced, Deferred):
            await self._wait(replaced)
        first = not self.listed
        self.resource_version = version
        self._must_list = False
        self.listed = True
        self.synced_at = self._clock.seconds()
        (log.info if first else log.debug)(
            "{what}: listed {count} at resourceVersion {version}",
            what=self.what, count=len(items), version=version)

    async def _watch(self) -> None:
        self._phase = "watching"
        self._resync_requested = False
        self._delivered = False
        self._watch_started = self._clock.seconds()
        await self._wait(Deferred.fromCoroutine(self._kubernetes.watch(
            self._path, self.resource_version or "", self._event,
            timeout_seconds=self._watch_seconds, what=self.what,
        )))

    def _event(self, etype: str, obj: dict[str, Any]) -> None:
        if self._stopping:
            raise CancelledError()
        if etype == "ERROR":
            raise _ErrorEvent(obj)
        if etype in EVENT_TYPES:
            self._on_event(etype, obj)
        elif etype != "BOOKMARK":
            log.warn("{what}: ignoring a watch event of unknown type {type}",
                     what=self.what, type=etype[:40])
            return
        version = _resource_version(obj)
        if version is not None:
            self.resource_version = version
        self._delivered = True
        self.synced_at = self._clock.seconds()

    def _ended(self) -> float:
        """
        The API server ended the watch (its timeoutSeconds): resume from the
        last version at once, unless it ended at once with nothing in it.
        """
        now = self._clock.seconds()
        if self._delivered or now - self._watch_started >= MIN_WATCH_SECONDS:
            self.synced_at = now
            return 0.0
        delay = self._backoff()
        log.info("{what}: the watch ended at once; watching again in {delay} s",
                 what=self.what, delay=round(delay, 3))
        return delay

    def _failed(self, error: Exception) -> float:
        """
        Something failed: list again, after a backoff unless the failure
        was the safety net's own cancel or a first 410.
        """
        self._must_list = True
        if self._resync_requested:
            self._resync_requested = False
            return 0.0
        if isinstance(error, (_ErrorEvent, WatchExpired)):
            expired = isinstance(error, WatchExpired) or error.expired
            # A first "too old" is routine (history compacted while we were
            # away): list at once. Repeated ones back off like failures.
            delay = self._backoff(first_free=expired)
            log.info("{what}: {reason}; listing again in {delay} s",
                     what=self.what, reason=str(error), delay=round(delay, 3))
            return delay
        delay = self._backoff()
        # Say what is served meanwhile: the last list, or nothing (not ready).
        kept = _kept(self.synced_at is not None)
        if isinstance(error, KubernetesError):
            # The reason names what failed ("list Tenants: HTTP 500: ...").
            log.warn("{reason}; {kept}, listing {what} again in {delay} s",
                     what=self.what, reason=str(error), kept=kept, delay=round(delay, 3))
        else:
            log.failure("{what}: unexpected failure; {kept}, listing again in {delay} s",
                        what=self.what, kept=kept, delay=round(delay, 3))
        return delay

    def _backoff(self, *, first_free: bool = False) -> float:
        """
        The delay before the next try after a failure: L{full_jitter} for
        the n-th failure in a row (from 0); with C{first_free}, no delay at
        all if n is 0.
        """
        now = self._clock.seconds()
        if now - self._last_failure >= BACKOFF_RESET_SECONDS:
            self._attempt = 0
        self._last_failure = now
        attempt, self._attempt = self._attempt, self._attempt + 1
        if first_free and attempt == 0:
            return 0.0
        return full_jitter(attempt, self._random)
