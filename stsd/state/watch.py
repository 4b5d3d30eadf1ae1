# -*- test-case-name: tests.test_watch -*-
"""
Keep the in-memory view of PolicyBindings and Tenants fresh with list +
watch: a change reaches the indexes as soon as the API server streams it,
instead of at the next periodic list. The Secrets the Tenants name are
read one by one with C{get} (stsd may not list or watch Secrets).

L{ListWatch} follows one collection: list, then watch from the list's
resourceVersion (with bookmarks); a watch that ends normally is resumed
from the last version seen; a 410 or other C{ERROR} event, a failed or cut
connection, a silent stream or a failing list start over with a new list,
after a backoff with full jitter when something failed. A safety-net
timer (L{stsd.core.periodic}) re-lists every C{resync_seconds} whatever the watch says, so
a watch that stalls silently cannot leave the state stale for longer.

L{WatchSync} is the drop-in counterpart of L{stsd.state.refresh.Refresher}: the
same C{ready} and C{synced_at}, the same failure semantics (a failure keeps
the last good state, is logged, and never stops anything).

Secret data and tokens are never logged.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from stsd.core.periodic import timer_service
from stsd.model import Binding, RootCredentials, Tenant
from stsd.state.bindings import BINDINGS_PATH, BindingIndex, parse_binding
from stsd.state.tenants import TENANTS_PATH, TenantIndex, parse_tenant, root_credentials, secret_config_env
from stsd.upstream.kube import KubernetesError, WatchExpired

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

    async def watch(
        self,
        path: str,
        resource_version: str,
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        timeout_seconds: int,
        what: str = ...,
    ) -> None: ...

    async def get(self, path: str, what: str) -> dict[str, Any] | None: ...


class _ErrorEvent(Exception):
    """
    The watch stream carried an C{ERROR} event (a Status): list again.
    """

    def __init__(self, status: dict[str, Any]) -> None:
        code = status.get("code")
        reason = status.get("reason")
        self.code = code if isinstance(code, int) else None
        self.reason = reason if isinstance(reason, str) else "no reason"
        super().__init__(f"ERROR event: {self.code} {self.reason}")

    @property
    def expired(self) -> bool:
        return self.code == 410 or self.reason in ("Expired", "Gone")


def _resource_version(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and version else None


def _object_key(obj: dict[str, Any]) -> tuple[str, str] | None:
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
        on_event: Callable[[str, dict[str, Any]], None],
        clock: IReactorTime,
        resync_seconds: float,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        watch_seconds: int = WATCH_SECONDS,
        random: Callable[[], float] = _random.random,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
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
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

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
        The delay before the next try after a failure. Full jitter: uniform
        in [0, min(cap, base * 2 ** n)) for the n-th failure in a row (from
        0); with C{first_free}, no delay at all if n is 0.
        """
        now = self._clock.seconds()
        if now - self._last_failure >= BACKOFF_RESET_SECONDS:
            self._attempt = 0
        self._last_failure = now
        attempt, self._attempt = self._attempt, self._attempt + 1
        if first_free and attempt == 0:
            return 0.0
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(attempt, 32))
        return self._random() * ceiling


@dataclass(eq=False)
class _SecretFeed:
    """
    One tenant's configuration Secret: what was last read of it, and the
    read in flight or waiting.
    """

    tenant: Tenant
    secret_name: str
    # The Secret's config.env; None until it has been read once.
    config_env: dict[str, str] | None = field(default=None, repr=False)
    missing: bool = False  # the last read found no such Secret (404)
    attempted: bool = False  # a first read has finished, successfully or not
    reading: Deferred[None] | None = None
    again: bool = False  # read again once the read in flight has finished
    retry: IDelayedCall | None = None
    failures: int = 0  # failed reads in a row, for the backoff
    warned: str | None = None  # the credential problem last logged


class WatchSync(Service):
    """
    List + watch PolicyBindings and Tenants into the given indexes, and get
    each Tenant's Secret by name: the watch-based counterpart of
    L{stsd.state.refresh.Refresher}.

    Secrets are never listed or watched (that would need list/watch on
    every Secret of the cluster): a tenant's Secret is read with one C{get}
    when the tenant appears or changes, and at every re-list of the
    Tenants (the safety net's, every C{resync_seconds}), so a rotated root
    password is picked up within C{resync_seconds}. A Secret that is gone
    (404) takes its credentials with it; a failed read keeps the last ones
    read and is tried again after a backoff.

    @ivar synced_at: per resource (C{bindings}, C{tenants}), clock time of
        the last successful list or event.
    """

    def __init__(
        self,
        kubernetes: Watcher,
        bindings: BindingIndex,
        tenants: TenantIndex,
        clock: IReactorTime,
        resync_seconds: float,
        *,
        watch_seconds: int = WATCH_SECONDS,
        random: Callable[[], float] = _random.random,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
    ) -> None:
        self._kubernetes = kubernetes
        self._bindings = bindings
        self._tenants = tenants
        self._clock = clock
        self._resync_seconds = resync_seconds
        self._watch_seconds = watch_seconds
        self._random = random
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._feeds: dict[tuple[str, str], _SecretFeed] = {}
        self._ready = False
        self.binding_watch = self._list_watch(
            BINDINGS_PATH, "PolicyBindings", self._replace_bindings, self._binding_event,
            transform=parse_binding)
        self.tenant_watch = self._list_watch(
            TENANTS_PATH, "Tenants", self._replace_tenants, self._tenant_event,
            transform=parse_tenant)

    def _list_watch(
        self,
        path: str,
        what: str,
        on_replace: Callable[[list[Any], str], Any],
        on_event: Callable[[str, dict[str, Any]], None],
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ) -> ListWatch:
        return ListWatch(
            self._kubernetes, path, what, on_replace=on_replace, on_event=on_event,
            clock=self._clock, resync_seconds=self._resync_seconds,
            watch_seconds=self._watch_seconds, random=self._random, transform=transform,
            backoff_base=self._backoff_base, backoff_cap=self._backoff_cap,
        )

    @property
    def ready(self) -> bool:
        """
        Bindings and tenants have been listed (and the first read of each
        listed tenant's Secret has finished, as the Refresher did): before
        that, a missing binding means "not known yet", not "denied". Once
        ready, always ready.
        """
        if not self._ready:
            self._ready = (
                self.binding_watch.listed
                and self.tenant_watch.listed
                and all(f.attempted for f in self._feeds.values())
            )
        return self._ready

    @property
    def synced_at(self) -> dict[str, float]:
        out = {}
        for name, watch in (("bindings", self.binding_watch), ("tenants", self.tenant_watch)):
            if watch.synced_at is not None:
                out[name] = watch.synced_at
        return out

    def secrets(self) -> dict[tuple[str, str], str]:
        """
        The Secrets read: (namespace, tenant) to Secret name.
        """
        return {key: feed.secret_name for key, feed in self._feeds.items()}

    def startService(self) -> None:
        super().startService()
        known = list(self._feeds.values())  # from before a stop
        self.binding_watch.startService()
        self.tenant_watch.startService()
        for feed in known:
            self._read(feed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stops = [self.binding_watch.stopService(), self.tenant_watch.stopService()]
        for feed in self._feeds.values():
            stops.append(self._halt(feed))
        return gatherResults(stops).addCallback(lambda _: None)

    # -- bindings ---------------------------------------------------------------

    def _replace_bindings(self, bindings: list[Binding], version: str) -> Deferred[None]:
        # Parsed page by page as the list arrived (transform=parse_binding),
        # and indexed a chunk per reactor turn.
        return Deferred.fromCoroutine(self._bindings.replace_gradually(
            bindings, lambda: deferLater(self._clock, 0, lambda: None)))

    def _binding_event(self, etype: str, obj: dict[str, Any]) -> None:
        binding = parse_binding(obj)
        if binding is None:
            # Malformed now: whatever it granted before is gone.
            key = _object_key(obj)
            if key is not None:
                self._bindings.apply("DELETED", Binding(key[0], key[1], "", "", ()))
            return
        self._bindings.apply(etype, binding)

    # -- tenants ----------------------------------------------------------------

    def _replace_tenants(self, tenants: list[Tenant], version: str) -> None:
        # A re-list (every resync_seconds at the latest) reads every
        # tenant's Secret again: nothing tells of a Secret's changes.
        self._tenants.replace(tenants)
        live = {(t.namespace, t.name) for t in tenants}
        for key in [k for k in self._feeds if k not in live]:
            self._drop_feed(key)
        for tenant in tenants:
            self._track(tenant)

    def _tenant_event(self, etype: str, obj: dict[str, Any]) -> None:
        tenant = parse_tenant(obj)
        if tenant is None:
            key = _object_key(obj)
            if key is not None:
                self._tenants.apply("DELETED", Tenant(key[0], key[1], True, None, {}))
                self._drop_feed(key)
            return
        self._tenants.apply(etype, tenant)
        if etype == "DELETED":
            self._drop_feed((tenant.namespace, tenant.name))
        else:
            self._track(tenant)

    def _track(self, tenant: Tenant) -> None:
        """
        The tenant was listed, added or changed: read the Secret it names
        (again), and let its credentials follow a change of C{spec.env}.
        """
        key = (tenant.namespace, tenant.name)
        feed = self._feeds.get(key)
        if feed is not None and feed.secret_name == tenant.secret_name:
            feed.tenant = tenant
            if feed.config_env is not None:
                self._set_credentials(feed)
            self._read(feed)
            return
        if feed is not None:
            # Another Secret now: the old one's credentials stay until the
            # new one has been read.
            self._drop_feed(key)
        if tenant.secret_name is None:
            self._tenants.set_credentials(tenant, root_credentials(tenant, {}))
            return
        feed = self._feeds[key] = _SecretFeed(tenant, tenant.secret_name)
        self._read(feed)

    def _drop_feed(self, key: tuple[str, str]) -> None:
        feed = self._feeds.pop(key, None)
        if feed is not None:
            self._halt(feed)

    # -- secrets ----------------------------------------------------------------

    def _current(self, feed: _SecretFeed) -> bool:
        return bool(self.running) and self._feeds.get(
            (feed.tenant.namespace, feed.tenant.name)) is feed

    def _halt(self, feed: _SecretFeed) -> Deferred[None]:
        """
        No more reads of C{feed}'s Secret: cancel the one in flight and the
        retry waiting.
        """
        feed.again = False
        if feed.retry is not None and feed.retry.active():
            feed.retry.cancel()
        feed.retry = None
        reading = feed.reading
        if reading is None:
            return succeed(None)
        reading.cancel()
        return reading

    def _read(self, feed: _SecretFeed) -> None:
        """
        Read the Secret now, or once the read in flight has finished (its
        answer may predate the change that asks for this one).
        """
        if not self._current(feed):
            return
        if feed.reading is not None:
            feed.again = True
            return
        if feed.retry is not None and feed.retry.active():
            feed.retry.cancel()
        feed.retry = None
        reading = Deferred.fromCoroutine(self._get(feed))
        if not reading.called:  # an answer at once (tests) has nothing left to cancel
            feed.reading = reading

    async def _get(self, feed: _SecretFeed) -> None:
        tenant = feed.tenant
        try:
            secret = await self._kubernetes.get(
                tenant.secret_path, f"Secret {tenant.namespace}/{feed.secret_name}")
        except CancelledError as e:
            if not self._current(feed):
                feed.reading = None
                return  # dropped or stopping
            failure: Exception | None = e  # not ours: a failure like any other
        except Exception as e:
            failure = e
        else:
            failure = None
        feed.reading = None
        feed.attempted = True
        try:
            if not self._current(feed):
                return
            if failure is not None:
                self._read_failed(feed, failure)
            else:
                feed.failures = 0
                feed.missing = secret is None
                feed.config_env = secret_config_env(secret) if secret is not None else {}
                self._set_credentials(feed)
            if feed.again:
                feed.again = False
                self._read(feed)
        except Exception:
            log.failure("Tenant {namespace}/{name}: applying Secret {secret} failed",
                        namespace=tenant.namespace, name=tenant.name, secret=feed.secret_name)

    def _read_failed(self, feed: _SecretFeed, error: Exception) -> None:
        """
        Keep whatever credentials the tenant has (a hiccup must not lock it
        out), say so truthfully, and read again after a backoff.
        """
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(feed.failures, 32))
        feed.failures += 1
        delay = self._random() * ceiling
        feed.retry = self._clock.callLater(delay, self._retry, feed)
        tenant = feed.tenant
        kept = ("keeping its last root credentials" if self._tenants.has_credentials(tenant)
                else "no root credentials for it yet")
        if isinstance(error, KubernetesError):
            # The reason names the call and the status, never the Secret's data.
            log.warn("Tenant {namespace}/{name}: {reason}; {kept}, reading again in {delay} s",
                     namespace=tenant.namespace, name=tenant.name, reason=str(error),
                     kept=kept, delay=round(delay, 3))
        else:
            log.failure("Tenant {namespace}/{name}: reading Secret {secret} failed "
                        "unexpectedly; {kept}, reading again in {delay} s",
                        namespace=tenant.namespace, name=tenant.name, secret=feed.secret_name,
                        kept=kept, delay=round(delay, 3))

    def _retry(self, feed: _SecretFeed) -> None:
        feed.retry = None
        try:
            self._read(feed)
        except Exception:
            log.failure("reading Secret {secret} again failed", secret=feed.secret_name)

    def _set_credentials(self, feed: _SecretFeed) -> None:
        credentials: RootCredentials | None = root_credentials(feed.tenant, feed.config_env or {})
        problem = None
        if credentials is None:
            problem = "not found" if feed.missing else "without root credentials"
        if problem is not None and problem != feed.warned:
            log.warn("Tenant {namespace}/{name} has no root credentials: "
                     "Secret {secret} {problem}",
                     namespace=feed.tenant.namespace, name=feed.tenant.name,
                     secret=feed.secret_name, problem=problem)
        feed.warned = problem
        self._tenants.set_credentials(feed.tenant, credentials)
