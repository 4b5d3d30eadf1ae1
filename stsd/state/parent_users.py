# -*- test-case-name: tests.test_parent_users -*-
"""
Parent users (C{tenants.authorization: parent-user}): for every
ServiceAccount bound in a tenant, one MinIO user whose attached policies
are exactly the bound canned policies. The exchange signs AssumeRole as
that user, so MinIO itself evaluates what the credentials may do, and
MinIO re-evaluates the parent's policies on every S3 call: detaching a
policy narrows live credentials, removing the user revokes them.

The user's name is derived from the application's namespace and
ServiceAccount, its secret from the tenant's root secret (HMAC), so every
replica computes the same pair and their calls converge: C{add-user} is an
upsert, C{set-user-or-group-policy} replaces the whole policy set,
C{remove-user} of a missing user is a no-op.

L{ParentUsers} keeps MinIO in step with the binding index: each change of
a ServiceAccount's bound policies reconciles its user (one run at a time
per user; a change during a run makes the run go round again with the
newest state; a failure is retried with backoff), and a periodic full
reconcile per tenant (one C{list-users}) repairs what events missed:
users stsd owns that no binding wants are removed, policy sets that differ
are set again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from stsd import errors
from stsd.core.cache import TTLCache
from stsd.core.periodic import PeriodicService, timer_service
from stsd.model import AppKey, RootCredentials, TenantEndpoint
from stsd.state.bindings import BindingIndex
from stsd.state.serviceaccounts import SAKey, ServiceAccountIndex
from stsd.state.tenants import TenantIndex
from stsd.upstream.minio import MinIOClient, MinIOError, REGION_TTL, NoSuchPolicy

log = Logger()

PREFIX = "stsd-"
#: MinIO's access keys are 3 to 20 characters, without C{=} or C{,}.
NAME_LENGTH = 20
_OWNED = re.compile(r"stsd-[a-z2-7]{15}\Z")
#: MinIO's secret keys are 8 to 40 characters.
SECRET_LENGTH = 40
_SECRET_CONTEXT = b"stsd parent-user secret v1\x00"

TICK_SECONDS = 1.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
#: Admin calls in flight at once, all users together.
CONCURRENT_RUNS = 8
#: A user set up this recently is not set up again because AssumeRole was
#: refused: a refusal for another reason must not make every request cost
#: an add-user (and its argon2 derivation).
INVALIDATE_AFTER_SECONDS = 10.0


@functools.lru_cache(maxsize=65536)
def user_name(app_namespace: str, serviceaccount: str) -> str:
    """
    The MinIO user of a ServiceAccount: C{stsd-} and 15 base32 characters
    (75 bits) of the SHA-256 of C{namespace/name} (neither may contain
    C{/}), 20 characters in all, MinIO's limit for access keys.
    """
    digest = hashlib.sha256(f"{app_namespace}/{serviceaccount}".encode()).digest()
    return PREFIX + base64.b32encode(digest).decode("ascii").lower()[:NAME_LENGTH - len(PREFIX)]


def is_owned(name: str) -> bool:
    """Whether a MinIO user name is one stsd derives (and so may remove)."""
    return _OWNED.match(name) is not None


def user_secret(root: RootCredentials, name: str) -> str:
    """
    The secret key of parent user C{name}: an HMAC keyed with the tenant's
    root secret, 40 hex digits (160 bits; MinIO accepts 8 to 40 characters).
    A rotated root secret gives new secrets, which the reconcile then sets.
    """
    mac = hmac.new(root.secret_key.encode(), _SECRET_CONTEXT + name.encode(), hashlib.sha256)
    return mac.hexdigest()[:SECRET_LENGTH]


@dataclass(frozen=True)
class ParentUser:
    """
    A parent user in step with its bindings: what AssumeRole is signed with.

    @ivar policies: the bound policies attached (those that exist in MinIO).
    """

    name: str
    credentials: RootCredentials
    policies: tuple[str, ...]
    #: Changes whenever stsd (re)creates the user or starts trusting it:
    #: credentials minted under an older epoch may have been revoked.
    epoch: int = 0

    def __repr__(self) -> str:
        return f"ParentUser({self.name}, policies={self.policies})"


@dataclass(frozen=True)
class _Applied:
    """What stsd last made MinIO hold for one user."""

    where: tuple[str, RootCredentials]  # tenant URL and the root credentials then
    policies: tuple[str, ...]  # the bound policies
    attached: tuple[str, ...]  # of those, the ones that exist and are attached
    epoch: int


_ABSENT = "absent"


@dataclass(frozen=True)
class _Desired:
    tenant: TenantEndpoint
    policies: tuple[str, ...]  # empty: the user must not exist

    def satisfied_by(self, applied: _Applied | str | None) -> bool:
        if not self.policies:
            return applied == _ABSENT
        return (isinstance(applied, _Applied)
                and applied.where == (self.tenant.url, self.tenant.credentials)
                and applied.policies == self.policies)


@dataclass(eq=False)
class _User:
    tenant_namespace: str
    name: str
    app: AppKey | None
    applied: _Applied | str | None = None  # None: unknown
    running: bool = False
    again: bool = False
    stale: bool = False
    failures: int = 0
    retry: IDelayedCall | None = None
    waiters: list[Deferred[ParentUser | None]] = field(default_factory=list)
    secret: tuple[RootCredentials, str] | None = None
    applied_at: float = float("-inf")


class ParentUsers(PeriodicService):
    """
    Keeps one MinIO user per bound ServiceAccount in step with the binding
    index. Call L{ensure} from a request; the rest runs by itself once
    started.

    @param is_ready: whether the binding index is complete (before that, a
        full reconcile would take missing bindings for removed ones).
    @param serviceaccounts: given, a deleted ServiceAccount's users are
        removed as if its bindings were gone.
    """

    def __init__(
        self,
        *,
        bindings: BindingIndex,
        tenants: TenantIndex,
        minio: MinIOClient,
        clock: IReactorTime,
        is_ready: Callable[[], bool],
        resync_seconds: float = 60.0,
        serviceaccounts: ServiceAccountIndex | None = None,
    ) -> None:
        self._serviceaccounts = serviceaccounts
        # ServiceAccount -> its users (one per tenant it is bound in).
        self._by_sa: dict[SAKey, set[tuple[str, str]]] = {}
        self._bindings = bindings
        self._tenants = tenants
        self._minio = minio
        self._clock = clock
        self._is_ready = is_ready
        self._resync = resync_seconds
        self._users: dict[tuple[str, str], _User] = {}
        self._epoch = 0
        self._regions: TTLCache[str] = TTLCache(clock, REGION_TTL)
        self._slots = DeferredSemaphore(CONCURRENT_RUNS)
        # Per tenant namespace: when the next full reconcile is due, whether
        # one ran to the end, and which are running.
        self._due: dict[str, float] = {}
        self._listed: set[str] = set()
        self._reconciling: set[str] = set()
        self._failed_lists: dict[str, int] = {}
        self._timer = timer_service(TICK_SECONDS, clock, self._tick,
                                    "scheduling the full reconcile of parent users")
        bindings.add_listener(self._changed)
        if serviceaccounts is not None:
            serviceaccounts.add_listener(self._serviceaccounts_changed)

    # -- the service --------------------------------------------------------

    def _give_up(self) -> None:
        for user in self._users.values():
            if user.retry is not None and user.retry.active():
                user.retry.cancel()
            user.retry = None

    # -- the request path ---------------------------------------------------

    async def ensure(
        self, tenant_namespace: str, app_namespace: str, serviceaccount: str
    ) -> ParentUser | None:
        """
        The ServiceAccount's parent user, in step with its bindings: at once
        when it is, else once its reconcile (started now if none is
        pending) has run. C{None} when no binding wants the user.

        @raise MinIOError: MinIO refused or failed the reconcile (it is
            retried in the background).
        @raise STSError: the tenant is not usable.
        """
        app = (tenant_namespace, app_namespace, serviceaccount)
        user = self._user(tenant_namespace, user_name(app_namespace, serviceaccount), app)
        if not user.running and not user.stale:
            desired = self._desired(user)
            if desired.satisfied_by(user.applied):
                return self._parent(user)
        waiter: Deferred[ParentUser | None] = Deferred()
        user.waiters.append(waiter)
        self._kick(user)
        return await waiter

    def invalidate(self, tenant_namespace: str, app_namespace: str, serviceaccount: str) -> None:
        """
        Forget what MinIO is believed to hold for this user (MinIO refused
        its signature: another replica or an operator changed it), so that
        the next L{ensure} sets it again.
        """
        user = self._users.get((tenant_namespace, user_name(app_namespace, serviceaccount)))
        if user is not None and (
                self._clock.seconds() - user.applied_at >= INVALIDATE_AFTER_SECONDS):
            user.stale = True

    # -- events -------------------------------------------------------------

    def _changed(self, keys: set[AppKey]) -> None:
        for app in keys:
            tenant_namespace = app[0]
            key = (tenant_namespace, user_name(app[1], app[2]))
            if key in self._users or tenant_namespace in self._listed:
                # A tenant not listed yet gets its full reconcile soon: no
                # call per user for the initial list of every binding.
                self._kick(self._user(*key, app))

    def _serviceaccounts_changed(self, keys: set[SAKey] | None) -> None:
        if keys is None:
            # The first list: what was assumed to exist may not.
            self.reconcile_now()
            for user in list(self._users.values()):
                self._kick(user)
            return
        for key in keys:
            for user_key in list(self._by_sa.get(key, ())):
                affected = self._users.get(user_key)
                if affected is not None:
                    self._kick(affected)

    def _user(self, tenant_namespace: str, name: str, app: AppKey | None) -> _User:
        key = (tenant_namespace, name)
        user = self._users.get(key)
        if user is None:
            user = self._users[key] = _User(tenant_namespace, name, app)
        elif app is not None and user.app is None:
            user.app = app
        else:
            return user
        if app is not None:
            self._by_sa.setdefault((app[1], app[2]), set()).add(key)
        return user

    def _forget(self, user: _User) -> None:
        key = (user.tenant_namespace, user.name)
        self._users.pop(key, None)
        if user.app is not None:
            group = self._by_sa.get((user.app[1], user.app[2]))
            if group is not None:
                group.discard(key)
                if not group:
                    del self._by_sa[(user.app[1], user.app[2])]

    def _wants(self, app: AppKey) -> tuple[str, ...]:
        """The policies a ServiceAccount's user should have (none: no user)."""
        grant = self._bindings.lookup(*app)
        if grant is None or (self._serviceaccounts is not None
                             and not self._serviceaccounts.exists(app[1], app[2])):
            return ()
        return grant.policies

    def _desired(self, user: _User) -> _Desired:
        tenant = self._tenants.endpoint(user.tenant_namespace)
        return _Desired(tenant, self._wants(user.app) if user.app is not None else ())

    def _parent(self, user: _User) -> ParentUser | None:
        applied = user.applied
        if not isinstance(applied, _Applied):
            return None
        root = applied.where[1]
        if user.secret is None or user.secret[0] != root:
            user.secret = (root, user_secret(root, user.name))
        return ParentUser(user.name, RootCredentials(user.name, user.secret[1]), applied.attached,
                          applied.epoch)

    # -- one user -----------------------------------------------------------

    def _kick(self, user: _User) -> None:
        if user.running:
            user.again = True
            return
        if user.retry is not None and user.retry.active():
            user.retry.cancel()
        user.retry = None
        user.running = True
        Deferred.fromCoroutine(self._run(user))

    async def _run(self, user: _User) -> None:
        try:
            while True:
                user.again = False
                if user.stale:
                    user.stale, user.applied = False, None
                desired = self._desired(user)
                if not desired.satisfied_by(user.applied):
                    user.applied = await self._slots.run(self._apply, user, desired)
                    user.applied_at = self._clock.seconds()
                if not user.again:
                    break
        except Exception as e:  # every failure: logged, retried, told to the waiters
            user.running = False
            self._failed(user, e)
            return
        user.running = False
        user.failures = 0
        waiters, user.waiters = user.waiters, []
        parent = self._parent(user)
        for waiter in waiters:
            if not waiter.called:  # a cancelled request's waiter has fired
                waiter.callback(parent)
        if user.applied == _ABSENT and not user.waiters:
            self._forget(user)

    def _failed(self, user: _User, error: Exception) -> None:
        user.failures += 1
        delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (user.failures - 1))
        if isinstance(error, (MinIOError, errors.STSError)):
            log.warn("reconciling parent user {user} of tenant namespace {namespace} failed "
                     "({failures} in a row), retrying in {delay} s: {reason}",
                     user=user.name, namespace=user.tenant_namespace, failures=user.failures,
                     delay=delay, reason=str(error))
        else:
            log.failure("reconciling parent user {user} failed", user=user.name)
        if isinstance(error, errors.STSError) and error.code == "InvalidParameterValue":
            # The tenant is gone: nothing to retry against; the next event or
            # full reconcile brings the user back.
            self._forget(user)
        else:
            user.retry = self._clock.callLater(delay, self._kick, user)
        waiters, user.waiters = user.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(error)

    async def _apply(self, user: _User, desired: _Desired) -> _Applied | str:
        tenant = desired.tenant
        region = await self._region(tenant)
        if not desired.policies:
            existed = await self._minio.remove_user(tenant, region, user.name)
            if existed:
                log.info("removed parent user {user} from tenant {tenant}: no PolicyBinding "
                         "wants it (its credentials stop working)",
                         user=user.name, tenant=tenant.name)
            return _ABSENT
        where = (tenant.url, tenant.credentials)
        applied = user.applied if isinstance(user.applied, _Applied) else None
        epoch = applied.epoch if applied is not None else 0
        if applied is None or applied.where != where:
            await self._minio.add_user(
                tenant, region, user.name, user_secret(tenant.credentials, user.name))
            epoch = self._next_epoch()
        if applied is not None and applied.where == where and applied.policies == desired.policies:
            return applied
        attached = await self._attach(tenant, region, user.name, desired.policies)
        log.info("parent user {user} of {app} in tenant {tenant}: policies {policies}",
                 user=user.name, app="/".join(user.app[1:]) if user.app else "?",
                 tenant=tenant.name, policies=",".join(attached) or "(none)")
        return _Applied(where, desired.policies, attached, epoch)

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    async def _attach(
        self, tenant: TenantEndpoint, region: str, name: str, policies: tuple[str, ...]
    ) -> tuple[str, ...]:
        try:
            await self._minio.set_user_policies(tenant, region, name, policies)
            return policies
        except NoSuchPolicy:
            pass
        # MinIO attaches all or nothing: attach the bound policies that exist.
        existing = []
        for policy in policies:
            if await self._minio.canned_policy(tenant, region, policy) is None:
                log.warn("policy {policy} bound to parent user {user} does not exist in tenant "
                         "{tenant}; not attached", policy=policy, user=name, tenant=tenant.name)
            else:
                existing.append(policy)
        await self._minio.set_user_policies(tenant, region, name, existing)
        return tuple(existing)

    async def _region(self, tenant: TenantEndpoint) -> str:
        return await self._regions.get((tenant.url, tenant.credentials),
                                       lambda: self._minio.region(tenant))

    # -- the full reconcile -------------------------------------------------

    def _tick(self) -> None:
        if not self._is_ready():
            return
        now = self._clock.seconds()
        due = [t.namespace for t in self._tenants.tenants()
               if t.namespace not in self._reconciling
               and self._due.get(t.namespace, 0.0) <= now]
        if not due:
            return
        wanted = self._wanted(set(due))
        for namespace in due:
            self._reconciling.add(namespace)
            Deferred.fromCoroutine(self._reconcile(namespace, wanted.get(namespace, {})))

    def _wanted(self, namespaces: set[str]) -> dict[str, dict[str, tuple[AppKey, tuple[str, ...]]]]:
        # One pass over the index for every tenant due.
        wanted: dict[str, dict[str, tuple[AppKey, tuple[str, ...]]]] = {}
        for app in self._bindings.app_keys():
            if app[0] in namespaces:
                policies = self._wants(app)
                if policies:
                    wanted.setdefault(app[0], {})[user_name(app[1], app[2])] = (app, policies)
        return wanted

    async def _reconcile(
        self, namespace: str, wanted: dict[str, tuple[AppKey, tuple[str, ...]]]
    ) -> None:
        try:
            tenant = self._tenants.endpoint(namespace)
            listed = await self._minio.list_users(tenant, await self._region(tenant))
            self._compare(tenant, namespace, wanted, listed)
        except Exception as e:
            failures = self._failed_lists[namespace] = self._failed_lists.get(namespace, 0) + 1
            delay = min(self._resync, FIRST_RETRY_SECONDS * 2 ** failures)
            self._due[namespace] = self._clock.seconds() + delay
            if isinstance(e, (MinIOError, errors.STSError)):
                log.warn("full reconcile of the parent users of tenant namespace {namespace} "
                         "failed, retrying in {delay} s: {reason}",
                         namespace=namespace, delay=delay, reason=str(e))
            else:
                log.failure("full reconcile of the parent users of {namespace} failed",
                            namespace=namespace)
        else:
            self._failed_lists.pop(namespace, None)
            self._listed.add(namespace)
            self._due[namespace] = self._clock.seconds() + self._resync
        finally:
            self._reconciling.discard(namespace)

    def _compare(
        self,
        tenant: TenantEndpoint,
        namespace: str,
        wanted: dict[str, tuple[AppKey, tuple[str, ...]]],
        listed: dict[str, Any],
    ) -> None:
        where = (tenant.url, tenant.credentials)
        for name, (app, policies) in wanted.items():
            user = self._user(namespace, name, app)
            if user.running:
                user.stale = user.again = True  # re-read once the run is done
                continue
            info = listed.get(name)
            applied = user.applied if isinstance(user.applied, _Applied) else None
            expected = (applied.attached if applied is not None and applied.where == where
                        and applied.policies == policies else policies)
            if info is not None and info.status == "enabled" and info.policies == tuple(
                    sorted(expected)):
                if user.applied is None:
                    # Set up by an earlier run or another replica: its secret
                    # is derived from this root secret (or AssumeRole says
                    # otherwise and the exchange invalidates it).
                    user.applied = _Applied(where, policies, expected, self._next_epoch())
                continue
            user.stale = True
            self._kick(user)
        for name in listed:
            if is_owned(name) and name not in wanted:
                self._kick(self._user(namespace, name, None))

    def reconcile_now(self, namespaces: Iterable[str] | None = None) -> None:
        """Make the full reconcile of these tenants (all: None) due at once."""
        for namespace in (namespaces if namespaces is not None else list(self._due)):
            self._due[namespace] = 0.0
