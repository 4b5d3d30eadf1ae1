# -*- test-case-name: tests.test_refresh -*-
"""
Keep the in-memory view of PolicyBindings, Tenants and their Secrets fresh:
a full list every C{resync_seconds}, in the background, and a C{get} of
each Tenant's Secret by name (stsd may not list or watch Secrets).

A failed refresh keeps the last good state and is logged; it never stops
the timer (L{stsd.core.periodic}).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from stsd.core.periodic import PeriodicService, timer_service
from stsd.state.bindings import BINDINGS_PATH, BindingIndex, parse_binding
from stsd.state.tenants import (
    TENANTS_PATH,
    TenantIndex,
    parse_tenant,
    root_credentials,
    secret_config_env,
)
from stsd.upstream.kube import KubernetesError

__all__ = ["BINDINGS_PATH", "TENANTS_PATH", "Lister", "Refresher"]

log = Logger()



class Lister(Protocol):
    async def list(
        self, path: str, what: str, *, transform: Any = None
    ) -> tuple[list[Any], str]: ...
    async def get(self, path: str, what: str) -> dict[str, Any] | None: ...


class Refresher(PeriodicService):
    """
    Lists bindings and tenants (and gets each tenant's Secret) every
    C{interval} seconds into the given indexes.

    @ivar synced_at: clock time of the last successful list, per resource.
    """

    def __init__(
        self,
        kubernetes: Lister,
        bindings: BindingIndex,
        tenants: TenantIndex,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self._kubernetes = kubernetes
        self._bindings = bindings
        self._tenants = tenants
        self._clock = clock
        self._timer = timer_service(interval, clock, self.refresh,
                                    "refreshing PolicyBindings and Tenants")
        self._refreshing: Deferred[None] | None = None
        self.synced_at: dict[str, float] = {}
        self._warned: dict[tuple[str, str], str] = {}  # tenant: credential problem logged

    @property
    def ready(self) -> bool:
        """
        Both bindings and tenants have been listed at least once: before
        that, a missing binding means "not known yet", not "denied".
        """
        return "bindings" in self.synced_at and "tenants" in self.synced_at

    def _give_up(self) -> None:
        if self._refreshing is not None:
            # Shutdown must not wait out the upstream timeouts of a refresh in
            # flight (one per list and per Secret): give it up.
            self._refreshing.cancel()

    def refresh(self) -> Deferred[None]:
        self._refreshing = Deferred.fromCoroutine(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        # Each step catches its own failures, so one failing resource
        # neither stops the loop nor keeps the others stale.
        await self._guarded("bindings", self._refresh_bindings())
        if not self._stopping:
            await self._guarded("tenants", self._refresh_tenants())

    async def _guarded(self, what: str, step: Any) -> None:
        try:
            await step
        except KubernetesError as e:
            log.warn("refreshing {what} failed, {kept}: {reason}",
                     what=what, kept=self._kept(what), reason=str(e))
        except Exception:
            log.failure("refreshing {what} failed, {kept}", what=what, kept=self._kept(what))
        else:
            self.synced_at[what] = self._clock.seconds()

    def _kept(self, what: str) -> str:
        # What a failure leaves in place, truthfully: a last good state only if one was listed.
        if what in self.synced_at:
            return "keeping the last good state"
        return "nothing listed yet (not ready)"

    async def _refresh_bindings(self) -> None:
        parsed, version = await self._kubernetes.list(
            BINDINGS_PATH, "PolicyBindings", transform=parse_binding)
        await self._bindings.replace_gradually(
            parsed, lambda: deferLater(self._clock, 0, lambda: None))
        log.debug("listed {count} PolicyBindings at resourceVersion {version}",
                  count=len(parsed), version=version)

    async def _refresh_tenants(self) -> None:
        tenants, version = await self._kubernetes.list(
            TENANTS_PATH, "Tenants", transform=parse_tenant)
        self._tenants.replace(tenants)
        live = {(t.namespace, t.name) for t in tenants}
        self._warned = {k: v for k, v in self._warned.items() if k in live}
        for tenant in tenants:
            if self._stopping:
                return
            if tenant.secret_name is None:
                self._tenants.set_credentials(tenant, root_credentials(tenant, {}))
                continue
            # One get by name: stsd may not list or watch Secrets.
            try:
                secret = await self._kubernetes.get(
                    tenant.secret_path, f"Secret {tenant.namespace}/{tenant.secret_name}")
            except KubernetesError as e:
                # A hiccup must not lock a tenant out: keep what was read last time.
                kept = ("keeping its last root credentials" if self._tenants.has_credentials(tenant)
                        else "no root credentials for it yet")
                log.warn("Tenant {namespace}/{name}: {reason}; {kept}",
                         namespace=tenant.namespace, name=tenant.name, reason=str(e), kept=kept)
                continue
            # Gone (404): its credentials go with it.
            config_env = secret_config_env(secret) if secret is not None else {}
            credentials = root_credentials(tenant, config_env)
            key = (tenant.namespace, tenant.name)
            problem = None
            if credentials is None:
                problem = "not found" if secret is None else "without root credentials"
            if problem is not None and self._warned.get(key) != problem:
                log.warn("Tenant {namespace}/{name} has no root credentials: "
                         "Secret {secret} {problem}", namespace=tenant.namespace,
                         name=tenant.name, secret=tenant.secret_name, problem=problem)
            if problem is None:
                self._warned.pop(key, None)
            else:
                self._warned[key] = problem
            self._tenants.set_credentials(tenant, credentials)
        log.debug("listed {count} Tenants at resourceVersion {version}",
                  count=len(tenants), version=version)
