# -*- test-case-name: tests.test_sync -*-
"""
Keep stsd's in-memory view of PolicyBindings and Tenants fresh with list +
watch (L{stsd.state.listwatch}): a change reaches the indexes as soon as
the API server streams it. The Secrets the Tenants name are read one by
one with C{get} (stsd may not list or watch Secrets).

L{WatchSync} is the drop-in counterpart of L{stsd.state.refresh.Refresher}: the
same C{ready} and C{synced_at}, the same failure semantics (a failure keeps
the last good state, is logged, and never stops anything).

Secret data and tokens are never logged.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from stsd.model import Binding, RootCredentials, Tenant
from stsd.state.bindings import BINDINGS_PATH, BindingIndex, parse_binding
from stsd.state.listwatch import WATCH_SECONDS, ListWatch, Watcher, full_jitter, object_key
from stsd.state.refresh import Lister
from stsd.state.tenants import TENANTS_PATH, TenantIndex, parse_tenant, root_credentials, secret_config_env
from stsd.upstream.kube import KubernetesError

log = Logger()


class SyncClient(Watcher, Lister, Protocol):
    """
    What L{WatchSync} needs of L{stsd.upstream.kube.KubernetesClient}: list
    and watch for the PolicyBindings and Tenants, get for their Secrets.
    """


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
        kubernetes: SyncClient,
        bindings: BindingIndex,
        tenants: TenantIndex,
        clock: IReactorTime,
        resync_seconds: float,
        *,
        watch_seconds: int = WATCH_SECONDS,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._kubernetes = kubernetes
        self._bindings = bindings
        self._tenants = tenants
        self._clock = clock
        self._random = random
        self._feeds: dict[tuple[str, str], _SecretFeed] = {}
        self._ready = False
        follow = partial(ListWatch, kubernetes, clock=clock, resync_seconds=resync_seconds,
                         watch_seconds=watch_seconds, random=random)
        self.binding_watch = follow(
            BINDINGS_PATH, "PolicyBindings", on_replace=self._replace_bindings,
            on_event=self._binding_event, transform=parse_binding)
        self.tenant_watch = follow(
            TENANTS_PATH, "Tenants", on_replace=self._replace_tenants,
            on_event=self._tenant_event, transform=parse_tenant)

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
            key = object_key(obj)
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
            key = object_key(obj)
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
        delay = full_jitter(feed.failures, self._random)
        feed.failures += 1
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
