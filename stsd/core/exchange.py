# -*- test-case-name: tests.test_exchange -*-
"""
The credential exchange: from a parsed request to credentials, in the
order readiness, rate limits, identity, tenant, bindings, policy, MinIO
(the tenant before the bindings, so that a namespace without a Tenant
tells no caller whether a binding names it there). Only identity and AssumeRole may reach the network;
bindings and tenants come from memory, regions, policy documents and the
compacted session policies from caches.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stsd import errors
from stsd.core.cache import ByteLRU, TTLCache
from stsd.core.policy import (
    Policy,
    PolicyError,
    compact,
    has_allow,
    intersect,
    merge,
    parse_policy,
    to_json,
)
from stsd.core.ratelimit import RateLimiter, retry_after
from stsd.model import Authenticator, Grant, Identity, IssuedCredentials, TenantEndpoint
from stsd.state.bindings import BindingIndex
from stsd.state.parent_users import ParentUser, ParentUsers
from stsd.state.tenants import TenantIndex
from stsd.upstream.minio import MINIO_POLICY_LIMIT, REGION_TTL, MinIOClient, MinIOError

log = Logger()

POLICY_TTL = 30.0  # policy edits visible within 30 s (docs/design.md, "Freshness bounds")
# Reused credentials must leave the client time to use them.
MIN_REMAINING_SECONDS = 300.0
# Byte bounds of the caches holding policy documents (a caller picks its
# Policy: with a count bound, 15,000 distinct 2 KB ones took 146 MiB).
EFFECTIVE_CACHE_BYTES = 8 << 20
MINTED_CACHE_BYTES = 8 << 20
POLICY_TEXT_CACHE_BYTES = 8 << 20
# A parsed Policy holds about four times the bytes of its JSON.
_PARSED_POLICY_FACTOR = 4
# Refusals that feed the per-client failed-authentication budget.
_AUTH_FAILURES = frozenset({"AccessDenied", "InvalidIdentityToken"})
_MISSING = object()
_T = TypeVar("_T")
# MinIO's answers to AssumeRole signed as a parent user it does not know
# (removed by another replica, or a secret derived from an older root secret).
_UNKNOWN_SIGNER = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                             "AccessDenied"})
SESSION_POLICY = "session-policy"
PARENT_USER = "parent-user"



@dataclass(frozen=True)
class AssumeRoleRequest:
    """
    A well-formed AssumeRoleWithWebIdentity request.
    """

    token: str
    duration_seconds: int
    policy: Policy | None
    #: The caller's Policy exactly as sent (parent-user mode passes it to
    #: MinIO whole, for MinIO to intersect with the parent user's policies).
    policy_text: str | None = None

    def __repr__(self) -> str:
        # The token is a bearer credential: keep it out of every repr.
        return (
            f"AssumeRoleRequest(token=<{len(self.token)} chars>, "
            f"duration_seconds={self.duration_seconds}, policy={self.policy!r})"
        )


@dataclass
class Trail:
    """
    What is known about one request so far, for its audit event: filled in
    as the exchange goes, so a refusal records how far it got.
    """

    client: str
    namespace: str | None = None
    requested_duration: int | None = None
    identity: Identity | None = None
    grant: Grant | None = None
    tenant: str | None = None
    policies_used: tuple[str, ...] = ()
    policy_bytes: int | None = None
    reused: bool = False
    authorization: str = SESSION_POLICY
    parent_user: str | None = None


@dataclass(frozen=True)
class Issued:
    credentials: IssuedCredentials
    identity: Identity
    grant: Grant
    tenant: str
    policies_used: tuple[str, ...]
    policy_bytes: int


@dataclass(frozen=True)
class Limits:
    """
    The abuse limits: failed authentications per client address (checked
    before any upstream call) and credentials per ServiceAccount.
    """

    failed_auth_per_client: RateLimiter | None = None
    per_serviceaccount: RateLimiter | None = None


@dataclass(frozen=True)
class _Effective:
    document: bytes
    used: tuple[str, ...]
    error: errors.STSError | None = None
    # Bound policies that exist but cannot be read, with why: the request
    # fails (their Deny statements must not be dropped).
    unreadable: tuple[tuple[str, str], ...] = ()


def _text_weight(key: Any, text: str | None) -> int:
    return len(key[2]) + (len(text) if text else 0)


def _minted_weight(key: Any, credentials: IssuedCredentials) -> int:
    return (len(key[0]) + len(key[1]) + len(key[3]) + len(credentials.access_key_id)
            + len(credentials.secret_access_key) + len(credentials.session_token))


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
        limits: Limits = Limits(),
        reuse_seconds: float = 0.0,
        metrics: Any = None,
        parent_users: ParentUsers | None = None,
    ) -> None:
        """
        @param parent_users: given, the exchange works in parent-user mode
            (AssumeRole signed as the ServiceAccount's MinIO user); without
            it, in session-policy mode (bound policies as a session policy).
        """
        self._parent_users = parent_users
        self._authenticator = authenticator
        self._bindings = bindings
        self._tenants = tenants
        self._minio = minio
        self._clock = clock
        self._is_ready = is_ready
        self._limits = limits
        self._regions: TTLCache[str] = TTLCache(clock, REGION_TTL)
        self._policies: TTLCache[str | None] = TTLCache(
            clock, POLICY_TTL, max_bytes=POLICY_TEXT_CACHE_BYTES, weigh=_text_weight)
        # Single flight for identical requests, and their reuse for reuse_seconds.
        self._minted: TTLCache[IssuedCredentials] = TTLCache(
            clock, reuse_seconds, max_bytes=MINTED_CACHE_BYTES, weigh=_minted_weight)
        self._effective: ByteLRU[tuple[object, ...], _Effective] = ByteLRU(EFFECTIVE_CACHE_BYTES)
        self._metrics = metrics
        # Bound policies skipped because MinIO has none by that name.
        self.skipped_policies: Counter[str] = Counter()

    @property
    def audience(self) -> str:
        return self._authenticator.audience

    def _throttled(self, limit: str, wait: float, what: str) -> errors.STSError:
        if self._metrics is not None:
            self._metrics.rate_limited.labels(limit).inc()
        seconds = retry_after(wait)
        return errors.STSError(
            "Throttling", f"too many {what}; retry in {seconds} s", 400, retry_after=seconds
        )

    def _cache_metric(self, cache: str, hit: bool) -> None:
        if self._metrics is not None:
            self._metrics.cache_lookup(cache, hit)

    async def exchange(
        self, namespace: str, request: AssumeRoleRequest, trail: Trail | None = None
    ) -> Issued:
        trail = trail if trail is not None else Trail(client="-")
        trail.namespace = namespace
        trail.requested_duration = request.duration_seconds
        if not self._is_ready():
            raise errors.not_initialized(
                "stsd has not yet loaded PolicyBindings and Tenants; retry shortly"
            )
        failed_auth = self._limits.failed_auth_per_client
        if failed_auth is not None:
            wait = failed_auth.peek(trail.client)
            if wait is not None:
                # Refused before TokenReview: random tokens cannot turn stsd
                # into a flood against the API server.
                raise self._throttled("failed_auth_per_client", wait,
                                      "failed authentications from this address")
        try:
            identity = await self._authenticator.authenticate(request.token)
        except errors.STSError as e:
            if failed_auth is not None and e.code in _AUTH_FAILURES:
                failed_auth.try_acquire(trail.client)
            raise
        trail.identity = identity
        per_sa = self._limits.per_serviceaccount
        if per_sa is not None:
            wait = per_sa.try_acquire((identity.namespace, identity.serviceaccount))
            if wait is not None:
                raise self._throttled("per_serviceaccount", wait,
                                      "credential requests for this ServiceAccount")
        # The tenant first: whether a binding exists in a namespace without
        # a (usable) tenant is not the caller's to learn.
        tenant = self._tenants.endpoint(namespace)
        trail.tenant = tenant.name
        grant = self._bindings.lookup(namespace, identity.namespace, identity.serviceaccount)
        if grant is None or not grant.policies:
            raise errors.access_denied(
                f"no PolicyBinding in namespace {namespace} grants access to "
                f"{identity.username}"
            )
        trail.grant = grant
        region_key = (tenant.url, tenant.credentials)
        cached_region = self._regions.fresh(region_key, _MISSING)
        if isinstance(cached_region, str):
            region = cached_region
        else:  # _MISSING
            region = await self._minio_call(self._regions.get(
                region_key, lambda: self._minio.region(tenant)))
        if self._parent_users is not None:
            return await self._as_parent_user(
                self._parent_users, namespace, request, trail, identity, grant, tenant, region)
        texts = await self._policy_texts(tenant, region, grant)
        effective = self._effective_policy(tenant, grant, texts, request.policy)
        trail.policies_used = effective.used
        if effective.error is not None:
            raise effective.error
        trail.policy_bytes = len(effective.document)

        minted_here = False

        async def mint() -> IssuedCredentials:
            nonlocal minted_here
            minted_here = True
            return await self._minio.assume_role(
                tenant, region, effective.document, request.duration_seconds)

        # Identical requests (same token, namespace, duration and effective
        # policy) share one AssumeRole, and reuse its credentials for a while:
        # keyed by the token's digest, never across tokens.
        key = (hashlib.sha256(request.token.encode()).digest(), tenant.url,
               request.duration_seconds, effective.document)
        credentials = await self._minio_call(self._minted.get(key, mint))
        if credentials.expiration.timestamp() - self._clock.seconds() < MIN_REMAINING_SECONDS:
            self._minted.invalidate(key)
            credentials = await self._minio_call(self._minted.get(key, mint))
        trail.reused = not minted_here
        self._cache_metric("credentials", not minted_here)
        return Issued(credentials, identity, grant, tenant.name, effective.used,
                      len(effective.document))

    # -- parent-user mode ---------------------------------------------------

    async def _as_parent_user(
        self,
        parent_users: ParentUsers,
        namespace: str,
        request: AssumeRoleRequest,
        trail: Trail,
        identity: Identity,
        grant: Grant,
        tenant: TenantEndpoint,
        region: str,
    ) -> Issued:
        """
        AssumeRole signed as the ServiceAccount's parent user (brought in
        step with its bindings first), with the caller's Policy, if any,
        as the session policy: MinIO intersects the two, and evaluates the
        parent's policies again on every S3 call.
        """
        trail.authorization = PARENT_USER
        app = (namespace, identity.namespace, identity.serviceaccount)
        document = b""
        if request.policy_text is not None:
            document = request.policy_text.encode("utf-8")
            if len(document) > MINIO_POLICY_LIMIT:
                raise errors.packed_policy_too_large(
                    f"Policy is {len(document)} bytes; MinIO accepts at most {MINIO_POLICY_LIMIT}")
        trail.policy_bytes = len(document)
        for attempt in (1, 2):
            parent = await self._parent_user(parent_users, app)
            trail.parent_user = parent.name
            trail.policies_used = parent.policies
            try:
                credentials, minted = await self._mint_as(
                    parent, request, tenant, region, document)
            except MinIOError as e:
                if attempt == 1 and e.code in _UNKNOWN_SIGNER:
                    # MinIO does not know the user as stsd set it up: set it
                    # up again, then try once more.
                    log.warn("MinIO refused AssumeRole as parent user {user} ({code}); "
                             "reconciling it again", user=parent.name, code=e.code)
                    parent_users.invalidate(*app)
                    continue
                log.warn("MinIO call failed: {reason}", reason=str(e))
                raise errors.internal_error(
                    "the tenant's MinIO failed or did not answer in time; retry later") from None
            trail.reused = not minted
            self._cache_metric("credentials", not minted)
            return Issued(credentials, identity, grant, tenant.name, parent.policies,
                          len(document))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _parent_user(self, parent_users: ParentUsers, app: tuple[str, str, str]) -> ParentUser:
        parent = await self._minio_call(parent_users.ensure(*app))
        if parent is None:
            # The last binding went away while the request waited.
            raise errors.access_denied("no PolicyBinding grants access to this ServiceAccount")
        if not parent.policies:
            raise errors.access_denied(
                "none of the policies bound to this ServiceAccount exist in the tenant")
        return parent

    async def _mint_as(
        self,
        parent: ParentUser,
        request: AssumeRoleRequest,
        tenant: TenantEndpoint,
        region: str,
        document: bytes,
    ) -> tuple[IssuedCredentials, bool]:
        minted_here = False

        async def mint() -> IssuedCredentials:
            nonlocal minted_here
            minted_here = True
            return await self._minio.assume_role(
                tenant, region, document, request.duration_seconds, as_user=parent.credentials)

        # Keyed by the parent user and its epoch too: credentials of a user
        # removed and created again were revoked with it.
        # (The first four as in session-policy mode: the cache weighs them.)
        key = (hashlib.sha256(request.token.encode()).digest(), tenant.url,
               request.duration_seconds, document, parent.name, parent.epoch)
        credentials = await self._minted.get(key, mint)
        if credentials.expiration.timestamp() - self._clock.seconds() < MIN_REMAINING_SECONDS:
            self._minted.invalidate(key)
            credentials = await self._minted.get(key, mint)
        return credentials, minted_here

    # -- session-policy mode ------------------------------------------------

    async def _minio_call(self, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except MinIOError as e:
            # The log names the tenant and what MinIO said; the client learns neither.
            log.warn("MinIO call failed: {reason}", reason=str(e))
            raise errors.internal_error(
                "the tenant's MinIO failed or did not answer in time; retry later") from None

    async def _policy_texts(
        self, tenant: TenantEndpoint, region: str, grant: Grant
    ) -> tuple[str | None, ...]:
        # The common case: every text is cached; no Deferred is needed.
        cached = tuple(self._policies.fresh((tenant.url, tenant.credentials, name), _MISSING)
                       for name in grant.policies)
        if _MISSING not in cached:
            # TTLCache.fresh is typed V | object (for the default): all are texts here.
            return cached  # type: ignore[return-value]

        def fetch(name: str) -> Deferred[str | None]:
            return Deferred.fromCoroutine(self._policies.get(
                (tenant.url, tenant.credentials, name),
                lambda: self._minio.canned_policy(tenant, region, name),
            ))

        texts = await self._minio_call(
            gatherResults([fetch(n) for n in grant.policies], consumeErrors=True)
            .addErrback(_first_error)
        )
        return tuple(texts)

    def _effective_policy(
        self,
        tenant: TenantEndpoint,
        grant: Grant,
        texts: tuple[str | None, ...],
        session: Policy | None,
    ) -> _Effective:
        """
        The session policy for these bound policy texts and caller Policy:
        merged, intersected and compacted once, then remembered (the texts
        come from a 30 s cache, so a policy edit makes a new key).
        """
        key = (tenant.name, grant.policies, texts, session)
        result = self._effective.get(key)
        self._cache_metric("session_policy", result is not None)
        if result is None:
            result = self._compute_effective(tenant, grant, texts, session)
            # Weighed as held: the texts, the caller's parsed Policy, the result.
            weight = (len(tenant.name) + sum(len(n) for n in grant.policies)
                      + sum(len(t) for t in texts if t) + len(result.document))
            if session is not None:
                weight += _PARSED_POLICY_FACTOR * len(to_json(session))
            self._effective.put(key, result, weight)
        for name, why in result.unreadable:
            # Every refused request says why, cached or not.
            log.warn("refusing credentials: policy {policy} bound in tenant {tenant} cannot be "
                     "read ({why}); its Deny statements cannot be honoured", policy=name,
                     tenant=tenant.name, why=why)
        return result

    def _compute_effective(
        self,
        tenant: TenantEndpoint,
        grant: Grant,
        texts: tuple[str | None, ...],
        session: Policy | None,
    ) -> _Effective:
        usable: list[Policy] = []
        used: list[str] = []
        unreadable: list[tuple[str, str]] = []
        for name, text in zip(grant.policies, texts, strict=True):
            if text is None:
                # MinIO has none by that name: it grants nothing and denies nothing.
                self._skip(tenant, name, "MinIO has no canned policy by that name")
                continue
            try:
                usable.append(parse_policy(text))
            except PolicyError as e:
                # It exists, so it may deny: fail closed rather than drop its Denys.
                unreadable.append((name, str(e) if text else "MinIO's answer is unreadable"))
                continue
            used.append(name)
        if unreadable:
            return _Effective(b"", tuple(used), errors.access_denied(
                "a policy bound to this ServiceAccount cannot be read by stsd; "
                "ask the tenant's administrator"), tuple(unreadable))
        if not usable:
            return _Effective(b"", (), errors.access_denied(
                "none of the policies bound to this ServiceAccount exist in the tenant"))
        bound = compact(merge(usable))
        effective = bound if session is None else compact(intersect(bound, session))
        if not has_allow(effective):
            return _Effective(b"", tuple(used), errors.access_denied(
                "the requested Policy and the bound policies allow nothing in common"))
        document = to_json(effective)
        if len(document) > MINIO_POLICY_LIMIT:
            return _Effective(document, tuple(used), errors.packed_policy_too_large(
                f"the session policy is {len(document)} bytes after compaction; "
                f"MinIO accepts at most {MINIO_POLICY_LIMIT}"))
        return _Effective(document, tuple(used))

    def _skip(self, tenant: TenantEndpoint, name: str, why: str) -> None:
        self.skipped_policies[tenant.name] += 1
        if self._metrics is not None:
            self._metrics.skipped_policies.labels(tenant.name.split("/")[0]).inc()
        log.warn("skipping policy {policy} of tenant {tenant}: {why}",
                 policy=name, tenant=tenant.name, why=why)


def _first_error(failure: Failure) -> NoReturn:
    """Raise the error inside a failed gatherResults (its C{FirstError})."""
    error = failure.value
    assert isinstance(error, FirstError)  # gatherResults fails with nothing else
    error.subFailure.raiseException()
