"""
Tests for the in-memory authorization state: L{stsd.bindings},
L{stsd.tenants} and the background L{stsd.refresh.Refresher}.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.bindings import Binding, BindingIndex, parse_binding
from stsd.kube import KubernetesError
from stsd.refresh import BINDINGS_PATH, TENANTS_PATH, Refresher
from stsd.tenants import (
    EndpointRule,
    TenantIndex,
    parse_config_env,
    parse_tenant,
    root_credentials,
)


def binding_obj(ns: str, name: str, app_ns: str, sa: str, policies: list[str]) -> dict:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"application": {"namespace": app_ns, "serviceaccount": sa},
                     "policies": policies}}


def tenant_obj(ns: str, name: str, secret: str | None = "env", **spec: Any) -> dict:
    if secret:
        spec["configuration"] = {"name": secret}
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def secret_obj(text: str) -> dict:
    return {"data": {"config.env": base64.b64encode(text.encode()).decode()}}


class BindingIndexTests(SynchronousTestCase):
    def test_lookup_unions_policies_of_all_bindings(self) -> None:
        index = BindingIndex()
        index.replace([
            Binding("t", "b1", "apps", "sa", ("readonly", "photos")),
            Binding("t", "b2", "apps", "sa", ("readonly",)),
            Binding("t", "b3", "apps", "other", ("admin",)),
            Binding("u", "b4", "apps", "sa", ("admin",)),
        ])
        grant = index.lookup("t", "apps", "sa")
        assert grant is not None
        self.assertEqual(grant.policies, ("photos", "readonly"))
        self.assertEqual(grant.bindings, ("b1", "b2"))
        self.assertIsNone(index.lookup("t", "apps", "nobody"))
        self.assertIsNone(index.lookup("v", "apps", "sa"))

    def test_events(self) -> None:
        index = BindingIndex()
        index.apply("ADDED", Binding("t", "b1", "apps", "sa", ("readonly",)))
        self.assertEqual(index.lookup("t", "apps", "sa").policies, ("readonly",))
        # A MODIFIED binding may move to another ServiceAccount.
        index.apply("MODIFIED", Binding("t", "b1", "apps", "sa2", ("readwrite",)))
        self.assertIsNone(index.lookup("t", "apps", "sa"))
        self.assertEqual(index.lookup("t", "apps", "sa2").policies, ("readwrite",))
        index.apply("DELETED", Binding("t", "b1", "apps", "sa2", ()))
        self.assertIsNone(index.lookup("t", "apps", "sa2"))
        self.assertEqual(len(index), 0)

    def test_parse_rejects_malformed(self) -> None:
        self.assertIsNone(parse_binding({"metadata": {"namespace": "t", "name": "b"}}))
        self.assertIsNone(parse_binding(binding_obj("t", "b", "", "sa", ["p"])))
        b = parse_binding(binding_obj("t", "b", "apps", "sa", ["p", 3, ""]))
        self.assertEqual(b, Binding("t", "b", "apps", "sa", ("p",)))


class TenantTests(SynchronousTestCase):
    def test_config_env(self) -> None:
        env = parse_config_env(
            'export MINIO_ROOT_USER="root"\nexport MINIO_ROOT_PASSWORD="p@ss word"\n'
            "# comment\nMINIO_BROWSER=on\nbroken 'quote\n"
        )
        self.assertEqual(env["MINIO_ROOT_USER"], "root")
        self.assertEqual(env["MINIO_ROOT_PASSWORD"], "p@ss word")
        self.assertEqual(env["MINIO_BROWSER"], "on")

    def test_root_credentials_config_env_overrides_spec_env_and_old_names(self) -> None:
        tenant = parse_tenant(tenant_obj("t", "x", env=[
            {"name": "MINIO_ROOT_USER", "value": "spec-user"},
            {"name": "MINIO_ROOT_PASSWORD", "value": "spec-pass"}]))
        creds = root_credentials(tenant, {"MINIO_ROOT_PASSWORD": "file-pass"})
        self.assertEqual((creds.access_key, creds.secret_key), ("spec-user", "file-pass"))
        old = root_credentials(parse_tenant(tenant_obj("t", "x")),
                               {"MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "s"})
        self.assertEqual((old.access_key, old.secret_key), ("a", "s"))
        self.assertIsNone(root_credentials(parse_tenant(tenant_obj("t", "x")), {}))
        self.assertNotIn("file-pass", repr(creds))

    def test_endpoints(self) -> None:
        rule = EndpointRule(None, "cluster.local")
        tls_default = parse_tenant(tenant_obj("t", "x"))
        plain = parse_tenant(tenant_obj("t", "x", requestAutoCert=False))
        external = parse_tenant(tenant_obj("t", "x", requestAutoCert=False,
                                           externalCertSecret=[{"name": "c"}]))
        self.assertEqual(rule.url(tls_default), "https://minio.t.svc.cluster.local:443")
        self.assertEqual(rule.url(plain), "http://minio.t.svc.cluster.local:80")
        self.assertEqual(rule.url(external), "https://minio.t.svc.cluster.local:443")
        self.assertEqual(EndpointRule("https://h/{namespace}/{tenant}", "x").url(plain),
                         "https://h/t/x")

    def test_plain_http_tenant_warned_once(self) -> None:
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            index = TenantIndex(EndpointRule(None, "cluster.local"))
            plain = parse_tenant(tenant_obj("t", "x", requestAutoCert=False))
            secure = parse_tenant(tenant_obj("u", "y"))
            index.replace([plain, secure])
            index.replace([plain, secure])
            # A tenant arriving by a watch event is warned about too, once.
            later = parse_tenant(tenant_obj("v", "z", requestAutoCert=False))
            index.apply("ADDED", later)
            index.apply("MODIFIED", later)
        finally:
            globalLogPublisher.removeObserver(events.append)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn
                    and "INSECURE" in e.get("log_format", "")]
        self.assertEqual([(e["namespace"], e["url"]) for e in warnings],
                         [("t", "http://minio.t.svc.cluster.local:80"),
                          ("v", "http://minio.v.svc.cluster.local:80")])

    def test_index_errors(self) -> None:
        index = TenantIndex(EndpointRule(None, "cluster.local"))
        one, two = parse_tenant(tenant_obj("t", "one")), parse_tenant(tenant_obj("t", "two"))
        index.replace([one])
        with pytest.raises(errors.STSError) as raised:
            index.endpoint("t")
        self.assertEqual(raised.value.code, "InternalError")
        self.assertNotIn("one", raised.value.message)
        index.set_credentials(one, root_credentials(one, {"MINIO_ROOT_USER": "u",
                                                          "MINIO_ROOT_PASSWORD": "p"}))
        self.assertEqual(index.endpoint("t").name, "t/one")
        with pytest.raises(errors.STSError) as raised:
            index.endpoint("nowhere")
        self.assertEqual(raised.value.code, "InvalidParameterValue")
        index.replace([one, two])
        with pytest.raises(errors.STSError) as raised:
            index.endpoint("t")
        self.assertEqual(raised.value.code, "InvalidParameterValue")
        # The client learns no Tenant's name (the log does).
        self.assertNotIn("two", raised.value.message)


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
        self.kube.failing = {TENANTS_PATH}
        self.refresher.startService()
        self.assertFalse(self.refresher.ready)
        self.kube.failing = set()
        self.clock.advance(30)
        self.assertTrue(self.refresher.ready)

    def test_ticks_do_not_overlap(self) -> None:
        self.kube.pending = Deferred()
        self.refresher.startService()
        self.clock.advance(90)
        self.assertEqual(self.kube.calls, [BINDINGS_PATH])
        pending, self.kube.pending = self.kube.pending, None
        pending.callback(None)
        self.assertTrue(self.refresher.ready)


def test_gradual_replace_swaps_at_once_after_yielding() -> None:
    from twisted.internet.defer import Deferred as D

    index = BindingIndex()
    index.replace([Binding("t", "old", "apps", "sa", ("p",))])
    new = [Binding("t", f"b{i}", "apps", f"sa{i % 7}", ("p",)) for i in range(25)]
    pauses: list[D] = []

    def pause() -> D:
        pauses.append(D())
        return pauses[-1]

    done = D.fromCoroutine(index.replace_gradually(new, pause, chunk=10))
    # Two pauses (after 10 and 20): the old index serves until the swap.
    assert len(pauses) == 1 and not done.called
    assert index.lookup("t", "apps", "sa") is not None and len(index) == 1
    pauses[0].callback(None)
    assert len(pauses) == 2 and len(index) == 1
    pauses[1].callback(None)
    assert done.called and len(index) == 25
    assert index.lookup("t", "apps", "sa") is None
    assert index.lookup("t", "apps", "sa3").bindings == ("b10", "b17", "b24", "b3")
