# -*- test-case-name: tests.test_manifests -*-
"""
The Kubernetes permissions stsd needs, in one place: the ClusterRole in
C{etc/kubernetes/} is checked against this list, this list against the
requests the daemon really makes (end-to-end tests), and C{stsd check}
asks the API server about each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from stsd.auth.keyset import DISCOVERY_PATH, JWKS_PATH


@dataclass(frozen=True)
class Permission:
    group: str  # "" is the core API group
    resource: str
    verbs: tuple[str, ...]
    why: str


PERMISSIONS: tuple[Permission, ...] = (
    Permission("authentication.k8s.io", "tokenreviews", ("create",),
               "authenticate ServiceAccount tokens"),
    Permission("sts.min.io", "policybindings", ("list", "watch"),
               "know which ServiceAccount may use which policies"),
    Permission("minio.min.io", "tenants", ("list", "watch"),
               "find each namespace's tenant"),
    # get only, by name: list or watch would hand stsd every Secret of the
    # cluster. Not narrowed by resourceNames: the names come from the
    # Tenants (spec.configuration.name) and are not known in advance.
    Permission("", "secrets", ("get",),
               "read the root credentials of the tenants (config.env)"),
    Permission("", "serviceaccounts", ("list", "watch"),
               "revoke the credentials of deleted ServiceAccounts (parent-user mode)"),
)

# The service-account issuer discovery documents: the cluster's token
# signing keys, for refusing forged tokens locally (and for jwks mode).
DISCOVERY_URLS: tuple[str, ...] = (DISCOVERY_PATH, JWKS_PATH)
