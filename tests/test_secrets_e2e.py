"""
Least privilege, end to end: the daemon runs with C{get} on Secrets and
nothing more (the fake API server answers 403 to a list or watch), reads
each Tenant's Secret by name, picks up a rotated root password at the next
resync, and forgets the credentials of a Secret that is gone — in both sync
modes (list + watch, and re-list only).

Its own module, hence its own simulated cluster: rotating tenant-1's root
password here does not disturb the other modules' daemons.
"""

from __future__ import annotations

import secrets

import pytest
import pytest_twisted

from stsd.testing.world import World
from tests.test_e2e import eventually, params, post
from tests._trial import pytest_only

SECRETS = ("", "secrets")


def secret_verbs(world: World) -> set[str]:
    return {verb for group, resource, verb in world.kubernetes.used_permissions
            if (group, resource) == SECRETS}


@pytest_twisted.ensureDeferred
async def test_get_only_on_secrets_is_enough(world: World, http) -> None:
    granted = world.kubernetes.granted
    assert granted is not None, "the fake enforces RBAC"
    assert {v for g, r, v in granted if (g, r) == SECRETS} == {"get"}
    daemon = await world.start_daemon("get-only")
    try:
        answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint()))
        assert answer.status == 200, answer.body
        answer = await post(http, daemon.sts_url("tenant-2"), params(world.mint()))
        assert answer.status == 200, answer.body
    finally:
        await daemon.stop()
    # Every Secret read was a get by name: never a list or a watch (which
    # the fake would have refused with 403), never a forbidden request.
    assert secret_verbs(world) == {"get"}
    reads = [r.path for r in world.kubernetes.requests if "/secrets" in r.path]
    assert reads and all(p.startswith("/api/v1/namespaces/tenant-") for p in reads)
    assert not [p for p in reads if p.endswith("/secrets")]
    assert "HTTP 403" not in daemon.log_text()


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "relist"])
@pytest_twisted.ensureDeferred
async def test_rotated_root_password_and_deleted_secret(world: World, http, watch: bool) -> None:
    tenant = world.tenants["tenant-1"]
    secret_name = f"{tenant.name}-env-configuration"
    daemon = await world.start_daemon(
        f"rotation-{'watch' if watch else 'relist'}",
        kubernetes={"watch": watch, "resync_seconds": 1})
    old_password = tenant.minio.secret_key
    try:
        assert (await post(http, daemon.sts_url("tenant-1"), params(world.mint()))).status == 200
        # The root password is rotated: MinIO accepts only the new one, the
        # Secret carries it. No event tells stsd (it watches no Secret):
        # the next resync's get does.
        new_password = secrets.token_urlsafe(24)
        tenant.minio.secret_key = new_password
        world.kubernetes.config_env_secret(
            tenant.namespace, secret_name, tenant.minio.access_key, new_password)

        async def issued() -> bool:
            return (await post(http, daemon.sts_url("tenant-1"), params(world.mint()))).status == 200

        assert await eventually(issued, timeout=20, interval=0.2)

        # The Secret deleted: its credentials are forgotten (404), not kept.
        world.kubernetes.delete_secret(tenant.namespace, secret_name)

        async def refused() -> bool:
            answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint()))
            return answer.code == "InternalError" and "not available" in answer.message

        assert await eventually(refused, timeout=20, interval=0.2)
        world.kubernetes.config_env_secret(
            tenant.namespace, secret_name, tenant.minio.access_key, new_password)
        assert await eventually(issued, timeout=20, interval=0.2)
    finally:
        await daemon.stop()
    text = daemon.log_text()
    assert f"Secret {secret_name} not found" in text
    assert old_password not in text and new_password not in text
    assert secret_verbs(world) == {"get"}


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "drives the daemon as a process (pytest fixtures); run under pytest")
