# -*- test-case-name: tests.test_model -*-
"""
The things stsd reasons about, shared by every layer: who is asking
(L{Identity}), what the PolicyBindings grant (L{Binding}, L{Grant}), which
tenant answers (L{Tenant}, L{TenantEndpoint}, L{RootCredentials}), what
is handed out (L{IssuedCredentials}), and the one L{Authenticator} protocol.

Plain frozen records with no behaviour beyond naming themselves: the
packages that parse them (L{stsd.state}, L{stsd.auth}), call upstream with
them (L{stsd.upstream}) and answer with them (L{stsd.http}) all import this
module and none of them imports another's wire format. Secrets never appear
in a C{repr}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import quote

#: The XML namespace of AWS STS answers: stsd's own, and MinIO's to AssumeRole.
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"

_SA_PREFIX = "system:serviceaccount:"
# A DNS-1123 label: what Kubernetes accepts as a namespace name.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")

#: (tenant namespace, application namespace, ServiceAccount): whom bindings grant to.
AppKey = tuple[str, str, str]


def is_dns_label(name: str) -> bool:
    """Whether C{name} is a DNS-1123 label, as Kubernetes names namespaces."""
    return bool(_DNS_LABEL.match(name))


def _is_dns_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and all(is_dns_label(p) for p in name.split("."))


def parse_serviceaccount(username: object) -> tuple[str, str] | None:
    """
    Split C{system:serviceaccount:<namespace>:<name>}; anything else (an
    OIDC user, a node, a malformed name) is C{None}. The upstream operator
    strips the prefix wherever it occurs and would read C{oidc:alice} as
    ServiceAccount C{alice} in namespace C{oidc}.
    """
    if not isinstance(username, str) or not username.startswith(_SA_PREFIX):
        return None
    parts = username[len(_SA_PREFIX):].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    # ServiceAccount names are DNS subdomains; the namespace a DNS label.
    if not is_dns_label(namespace) or not _is_dns_subdomain(name):
        return None
    return namespace, name


@dataclass(frozen=True)
class Identity:
    """
    A ServiceAccount whose token was verified, and the pod it was issued to
    when the token names one.
    """

    namespace: str
    serviceaccount: str
    pod: str | None = None
    # The token's verified exp, when the authenticator read it (JWKS):
    # spares the token cache decoding the token again. Not part of who it is.
    expires: float | None = field(default=None, compare=False, repr=False)

    @property
    def username(self) -> str:
        return f"{_SA_PREFIX}{self.namespace}:{self.serviceaccount}"


class Authenticator(Protocol):
    """
    Turns a ServiceAccount token into an L{Identity}, or refuses it with an
    L{stsd.errors.STSError}.
    """

    @property
    def audience(self) -> str: ...

    async def authenticate(self, token: str) -> Identity: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """One PolicyBinding: a ServiceAccount of an application namespace, granted policies in a tenant namespace."""

    namespace: str
    name: str
    app_namespace: str
    serviceaccount: str
    policies: tuple[str, ...]

    @property
    def app_key(self) -> AppKey:
        return (self.namespace, self.app_namespace, self.serviceaccount)


@dataclass(frozen=True, slots=True)
class Grant:
    """
    What the bindings of one ServiceAccount in one tenant namespace give.
    """

    bindings: tuple[str, ...]  # binding names, for the audit trail
    policies: tuple[str, ...]  # sorted, distinct policy names


@dataclass(frozen=True)
class Tenant:
    """A MinIO Tenant resource, as far as stsd reads it."""

    namespace: str
    name: str
    tls: bool
    secret_name: str | None
    env: Mapping[str, str]  # spec.env literal values (config.env overrides them)

    @property
    def secret_path(self) -> str:
        """The API path of the Secret holding the root credentials."""
        # The name comes from the Tenant's spec: quoted, it stays one path segment.
        return (f"/api/v1/namespaces/{quote(self.namespace, safe='')}"
                f"/secrets/{quote(str(self.secret_name), safe='')}")

    def __repr__(self) -> str:
        # spec.env may carry credentials too.
        return f"Tenant({self.namespace}/{self.name}, tls={self.tls}, secret={self.secret_name})"


@dataclass(frozen=True)
class RootCredentials:
    """A tenant's root access key and secret, from the Secret its Tenant names."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return "RootCredentials(<hidden>)"


@dataclass(frozen=True)
class TenantEndpoint:
    """
    Where a tenant's MinIO answers and with which root credentials.

    @ivar name: C{namespace/tenant}, for messages.
    @ivar url: base URL; a path prefix is kept (reverse proxies, tests).
    """

    name: str
    url: str
    credentials: RootCredentials


@dataclass(frozen=True)
class IssuedCredentials:
    """Temporary credentials as MinIO issued them."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    def __repr__(self) -> str:
        return f"IssuedCredentials(access_key_id={self.access_key_id!r}, <secret hidden>)"
