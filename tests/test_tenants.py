"""
Tests for L{stsd.state.tenants}: parsing Tenants and their configuration
Secrets, root credentials, endpoints and the tenant index.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.state.tenants import (
    EndpointRule,
    TenantIndex,
    parse_config_env,
    parse_tenant,
    root_credentials,
)


def tenant_obj(ns: str, name: str, secret: str | None = "env", **spec: Any) -> dict:
    if secret:
        spec["configuration"] = {"name": secret}
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def secret_obj(text: str) -> dict:
    return {"data": {"config.env": base64.b64encode(text.encode()).decode()}}

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
