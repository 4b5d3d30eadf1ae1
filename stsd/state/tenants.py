# -*- test-case-name: tests.test_tenants -*-
"""
Tenants held in memory: for each namespace, its MinIO endpoint and root
credentials (from the Secret the Tenant names, key C{config.env}).

Root credentials live only in this process's memory; they are never
logged, written or put into an error message.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from stsd import errors
from stsd.model import RootCredentials, Tenant, TenantEndpoint

log = Logger()

#: Where the API server serves Tenants (listed and watched).
TENANTS_PATH = "/apis/minio.min.io/v2/tenants"

_USER_KEYS = ("MINIO_ROOT_USER", "MINIO_ACCESS_KEY")
_PASSWORD_KEYS = ("MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY")



def parse_tenant(obj: Mapping[str, Any]) -> Tenant | None:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not isinstance(spec, dict):
        log.warn("ignoring malformed Tenant {namespace}/{name}", namespace=namespace, name=name)
        return None
    auto_cert = spec.get("requestAutoCert")
    tls = auto_cert is None or auto_cert is True or bool(spec.get("externalCertSecret"))
    configuration = spec.get("configuration") or {}
    secret = configuration.get("name") if isinstance(configuration, dict) else None
    env = {}
    for item in spec.get("env") or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(
            item.get("value"), str
        ):
            env[item["name"]] = item["value"]
    return Tenant(namespace, name, tls, secret if isinstance(secret, str) else None, env)


def parse_config_env(text: str) -> dict[str, str]:
    """
    Parse the operator's C{config.env}: shell lines like
    C{export MINIO_ROOT_USER="x"}. Unparsable lines are skipped.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key:
                values[key] = value
    return values


def secret_config_env(secret: Mapping[str, Any]) -> dict[str, str]:
    data = secret.get("data") or {}
    encoded = data.get("config.env") if isinstance(data, dict) else None
    if not isinstance(encoded, str):
        return {}
    try:
        return parse_config_env(base64.b64decode(encoded, validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError):
        return {}


def root_credentials(tenant: Tenant, config_env: Mapping[str, str]) -> RootCredentials | None:
    merged = {**tenant.env, **config_env}
    user = next((merged[k] for k in _USER_KEYS if merged.get(k)), None)
    password = next((merged[k] for k in _PASSWORD_KEYS if merged.get(k)), None)
    if user is None or password is None:
        return None
    return RootCredentials(user, password)


@dataclass(frozen=True)
class EndpointRule:
    """
    How to reach a tenant: a URL template, or the operator's Service name.
    """

    template: str | None
    cluster_domain: str

    def url(self, tenant: Tenant) -> str:
        if self.template is not None:
            return self.template.format(namespace=tenant.namespace, tenant=tenant.name)
        if tenant.tls:
            return f"https://minio.{tenant.namespace}.svc.{self.cluster_domain}:443"
        return f"http://minio.{tenant.namespace}.svc.{self.cluster_domain}:80"


class TenantIndex:
    """
    Tenants by namespace, with the root credentials of each.
    """

    def __init__(self, rule: EndpointRule) -> None:
        self._rule = rule
        self._tenants: dict[str, list[Tenant]] = {}
        self._credentials: dict[tuple[str, str], RootCredentials] = {}
        self._warned: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return sum(len(v) for v in self._tenants.values())

    def has_namespace(self, namespace: str) -> bool:
        return namespace in self._tenants

    def tenants(self) -> list[Tenant]:
        return [t for group in self._tenants.values() for t in group]

    def replace(self, tenants: Iterable[Tenant]) -> None:
        by_namespace: dict[str, list[Tenant]] = {}
        for t in tenants:
            by_namespace.setdefault(t.namespace, []).append(t)
        self._tenants = by_namespace
        for t in self.tenants():
            self._warn_if_plain(t)
        live = {(t.namespace, t.name) for t in self.tenants()}
        self._credentials = {k: v for k, v in self._credentials.items() if k in live}

    def apply(self, event: str, tenant: Tenant) -> None:
        """
        Apply one watch event (C{ADDED}, C{MODIFIED} or C{DELETED}). A
        deleted tenant's credentials are forgotten; a changed one keeps
        them until they are set again (its Secret is watched separately).
        """
        group = [t for t in self._tenants.get(tenant.namespace, ()) if t.name != tenant.name]
        if event != "DELETED":
            group.append(tenant)
            self._warn_if_plain(tenant)
        # A new list, swapped in: a lookup never sees one half-changed.
        if group:
            self._tenants[tenant.namespace] = group
        else:
            self._tenants.pop(tenant.namespace, None)
        if event == "DELETED":
            self._credentials.pop((tenant.namespace, tenant.name), None)

    def _warn_if_plain(self, tenant: Tenant) -> None:
        url = self._rule.url(tenant)
        if url.startswith("http://") and (tenant.namespace, tenant.name) not in self._warned:
            # AssumeRole answers carry fresh secret keys: over plain HTTP
            # anyone on the path reads them.
            self._warned.add((tenant.namespace, tenant.name))
            log.warn(
                "INSECURE: Tenant {namespace}/{name} is reached over plain HTTP ({url}); "
                "issued credentials cross the network unencrypted. Enable TLS on the Tenant.",
                namespace=tenant.namespace, name=tenant.name, url=url)

    def set_credentials(self, tenant: Tenant, credentials: RootCredentials | None) -> None:
        key = (tenant.namespace, tenant.name)
        if credentials is None:
            self._credentials.pop(key, None)
        else:
            self._credentials[key] = credentials

    def has_credentials(self, tenant: Tenant) -> bool:
        return (tenant.namespace, tenant.name) in self._credentials

    def endpoint(self, namespace: str) -> TenantEndpoint:
        """
        The tenant of C{namespace}, ready to call.

        @raise STSError: no tenant, several, or no root credentials known.
        """
        group = self._tenants.get(namespace)
        if not group:
            raise errors.invalid_parameter(f"no MinIO Tenant in namespace {namespace}")
        if len(group) > 1:
            # Never guess whose root credentials to use. The client's message
            # names no Tenant; the log does.
            log.warn("namespace {namespace} has more than one Tenant ({names}); stsd serves one",
                     namespace=namespace, names=", ".join(sorted(t.name for t in group)))
            raise errors.invalid_parameter(
                f"namespace {namespace} has more than one Tenant; stsd serves one"
            )
        tenant = group[0]
        credentials = self._credentials.get((tenant.namespace, tenant.name))
        if credentials is None:
            log.warn("the root credentials of Tenant {namespace}/{name} are not available "
                     "(Secret {secret} missing or without config.env)",
                     namespace=namespace, name=tenant.name, secret=str(tenant.secret_name))
            raise errors.internal_error(
                "the tenant's root credentials are not available to stsd; see stsd's log"
            )
        return TenantEndpoint(f"{namespace}/{tenant.name}", self._rule.url(tenant), credentials)
