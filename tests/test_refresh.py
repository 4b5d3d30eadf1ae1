"""
Tests for the background L{stsd.state.refresh.Refresher} that keeps the
PolicyBinding and Tenant indexes in step with the cluster.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.state.bindings import BindingIndex
from stsd.state.refresh import BINDINGS_PATH, TENANTS_PATH, Refresher
from stsd.state.tenants import EndpointRule, TenantIndex
from stsd.upstream.kube import KubernetesError
from tests.test_bindings import binding_obj
from tests.test_tenants import secret_obj, tenant_obj


class ScriptedKubernetes:
    """
    A lister whose answers the test sets, or leaves pending.
    """

    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = {BINDINGS_PATH: [], TENANTS_PATH: []}
        self.secrets: dict[str, dict | None] = {}
        self.failing: set[str] = set()
        self.pending: Deferred | None = None
        self.calls: list[str] = []

    async def list(self, path: str, what: str, *, transform=None):
        self.calls.append(path)
        if self.pending is not None:
            await self.pending
        if path in self.failing:
            raise KubernetesError(f"list {what}: HTTP 500")
        items = self.items[path]
        if transform is not None:
            items = [v for v in map(transform, items) if v is not None]
        return items, "7"

    async def get(self, path: str, what: str):
        self.calls.append(path)
        if path in self.failing:
            raise KubernetesError(f"get {what}: HTTP 500")
        return self.secrets.get(path)


class RefresherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.kube = ScriptedKubernetes()
        self.bindings = BindingIndex()
        self.tenants = TenantIndex(EndpointRule(None, "cluster.local"))
        self.refresher = Refresher(self.kube, self.bindings, self.tenants, self.clock, 30)
        self.kube.items[BINDINGS_PATH] = [binding_obj("t", "b", "apps", "sa", ["p"])]
        self.kube.items[TENANTS_PATH] = [tenant_obj("t", "x")]
        self.secret_path = "/api/v1/namespaces/t/secrets/env"
        self.kube.secrets[self.secret_path] = secret_obj(
            "export MINIO_ROOT_USER=u\nexport MINIO_ROOT_PASSWORD=p\n")

    def test_initial_sync_makes_ready(self) -> None:
        self.assertFalse(self.refresher.ready)
        self.refresher.startService()
        self.assertTrue(self.refresher.ready)
        self.assertEqual(len(self.bindings), 1)
        self.assertEqual(self.tenants.endpoint("t").credentials.access_key, "u")
        self.successResultOf(self.refresher.stopService())

    def test_failure_keeps_last_good_state_and_loop_goes_on(self) -> None:
        self.refresher.startService()
        self.kube.failing = {BINDINGS_PATH, self.secret_path}
        self.kube.items[TENANTS_PATH].append(tenant_obj("u", "y", secret=None))
        self.clock.advance(30)
        self.assertEqual(len(self.bindings), 1, "bindings kept after a failed list")
        self.assertEqual(self.tenants.endpoint("t").credentials.access_key, "u",
                         "credentials kept after a failed get")
        self.assertEqual(len(self.tenants), 2, "tenants still refreshed")
        self.assertEqual(self.refresher.synced_at["bindings"], 0)
        self.assertEqual(self.refresher.synced_at["tenants"], 30)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # Recovery: the next tick applies the new state.
        self.kube.failing = set()
        self.kube.items[BINDINGS_PATH] = []
        self.clock.advance(30)
        self.assertEqual(len(self.bindings), 0)
        self.assertEqual(self.refresher.synced_at["bindings"], 60)
        self.successResultOf(self.refresher.stopService())

    def test_unexpected_exception_is_logged_and_loop_goes_on(self) -> None:
        self.refresher.startService()
        self.kube.items[BINDINGS_PATH] = None  # type: ignore[assignment]  # makes parsing blow up
        self.clock.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.kube.items[BINDINGS_PATH] = []
        self.clock.advance(30)
        self.assertEqual(len(self.bindings), 0)

    def test_not_ready_until_both_listed(self) -> None:
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.kube.failing = {TENANTS_PATH}
            self.refresher.startService()
            self.assertFalse(self.refresher.ready)
            self.kube.failing = set()
            self.clock.advance(30)
            self.assertTrue(self.refresher.ready)
            self.kube.failing = {TENANTS_PATH}
            self.clock.advance(30)
        finally:
            globalLogPublisher.removeObserver(events.append)
        failed = [formatEvent(e) for e in events if "refreshing tenants failed" in formatEvent(e)]
        # Nothing listed at the first failure, a last good state at the second.
        self.assertEqual(len(failed), 2, failed)
        self.assertIn("nothing listed yet (not ready)", failed[0])
        self.assertNotIn("last good state", failed[0])
        self.assertIn("keeping the last good state", failed[1])

    def test_ticks_do_not_overlap(self) -> None:
        self.kube.pending = Deferred()
        self.refresher.startService()
        self.clock.advance(90)
        self.assertEqual(self.kube.calls, [BINDINGS_PATH])
        pending, self.kube.pending = self.kube.pending, None
        pending.callback(None)
        self.assertTrue(self.refresher.ready)
