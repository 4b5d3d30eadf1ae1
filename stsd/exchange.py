# -*- test-case-name: tests.test_exchange -*-
"""
The credential exchange: from a parsed request to credentials, in the
order DESIGN.md fixes (readiness, identity, bindings, tenant, policy,
MinIO). Only identity and AssumeRole may reach the network; bindings and
tenants come from memory, regions and policy documents from caches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd import errors
from stsd.bindings import BindingIndex, Grant
from stsd.cache import TTLCache
from stsd.identity import Identity
from stsd.minio_client import MinIOClient, MinIOError, TenantEndpoint
from stsd.policy import Policy, PolicyError, compact, has_allow, intersect, merge, parse_policy, to_json
from stsd.tenants import TenantIndex
from stsd.wire import MINIO_POLICY_LIMIT, AssumeRoleRequest, IssuedCredentials

log = Logger()

POLICY_TTL = 30.0  # DESIGN: policy edits visible within 30 s
REGION_TTL = 300.0


class Authenticator(Protocol):
    audience: str

    async def authenticate(self, token: str) -> Identity: ...


@dataclass(frozen=True)
class Issued:
    credentials: IssuedCredentials
    identity: Identity
    grant: Grant
    tenant: str
    policies_used: tuple[str, ...]
    policy_bytes: int


class Exchange:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        bindings: BindingIndex,
        tenants: TenantIndex,
        minio: MinIOClient,
        clock: IReactorTime,
        is_ready: Callable[[], bool],
    ) -> None:
        self._authenticator = authenticator
        self._bindings = bindings
        self._tenants = tenants
        self._minio = minio
        self._is_ready = is_ready
        self._regions: TTLCache[str] = TTLCache(clock, REGION_TTL)
        self._policies: TTLCache[str | None] = TTLCache(clock, POLICY_TTL)
        # Policies skipped because MinIO has none by that name or it does not parse.
        self.skipped_policies: Counter[str] = Counter()

    @property
    def audience(self) -> str:
        return self._authenticator.audience

    async def exchange(self, namespace: str, request: AssumeRoleRequest) -> Issued:
        if not self._is_ready():
            raise errors.not_initialized(
                "stsd has not yet loaded PolicyBindings and Tenants; retry shortly"
            )
        identity = await self._authenticator.authenticate(request.token)
        grant = self._bindings.lookup(namespace, identity.namespace, identity.serviceaccount)
        if grant is None or not grant.policies:
            raise errors.access_denied(
                f"no PolicyBinding in namespace {namespace} grants access to "
                f"{identity.username}"
            )
        tenant = self._tenants.endpoint(namespace)
        region = await self._minio_call(self._regions.get(
            (tenant.url, tenant.credentials), lambda: self._minio.region(tenant)))
        bound, used = await self._bound_policy(tenant, region, grant)
        effective = bound if request.policy is None else compact(intersect(bound, request.policy))
        if not has_allow(effective):
            raise errors.access_denied(
                "the requested Policy and the bound policies allow nothing in common"
            )
        document = to_json(effective)
        if len(document) > MINIO_POLICY_LIMIT:
            raise errors.packed_policy_too_large(
                f"the session policy is {len(document)} bytes after compaction; "
                f"MinIO accepts at most {MINIO_POLICY_LIMIT}"
            )
        credentials = await self._minio_call(
            self._minio.assume_role(tenant, region, document, request.duration_seconds)
        )
        return Issued(credentials, identity, grant, tenant.name, used, len(document))

    async def _minio_call(self, awaitable):  # type: ignore[no-untyped-def]
        try:
            return await awaitable
        except MinIOError as e:
            log.warn("MinIO call failed: {reason}", reason=str(e))
            raise errors.internal_error(str(e)) from None

    async def _bound_policy(
        self, tenant: TenantEndpoint, region: str, grant: Grant
    ) -> tuple[Policy, tuple[str, ...]]:
        def fetch(name: str) -> Deferred[str | None]:
            return Deferred.fromCoroutine(self._policies.get(
                (tenant.url, tenant.credentials, name),
                lambda: self._minio.canned_policy(tenant, region, name),
            ))

        texts = await self._minio_call(
            gatherResults([fetch(n) for n in grant.policies], consumeErrors=True)
            .addErrback(lambda f: f.value.subFailure.raiseException())
        )
        usable: list[Policy] = []
        used: list[str] = []
        for name, text in zip(grant.policies, texts):
            if text is None:
                self._skip(tenant, name, "MinIO has no canned policy by that name")
                continue
            try:
                usable.append(parse_policy(text))
            except PolicyError as e:
                self._skip(tenant, name, f"it does not parse: {e}")
                continue
            used.append(name)
        if not usable:
            raise errors.access_denied(
                "none of the policies bound to this ServiceAccount exist in the tenant"
            )
        return compact(merge(usable)), tuple(used)

    def _skip(self, tenant: TenantEndpoint, name: str, why: str) -> None:
        self.skipped_policies[tenant.name] += 1
        log.warn("skipping policy {policy} of tenant {tenant}: {why}",
                 policy=name, tenant=tenant.name, why=why)
