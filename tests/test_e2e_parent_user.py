"""
End to end, parent-user mode: the daemon as a real C{twistd} process with
C{tenants.authorization: parent-user}, the fake Kubernetes API server and
the fake MinIO (users, AssumeRole signed by a user, an S3 API authorized
with the parent user's current policies and the session policy), driven
by boto3: credentials work for S3, a binding's removal revokes them, a
change of its policies narrows them, and a caller's Policy narrows them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from stsd.state.parent_users import user_name
from stsd.testing.world import Daemon, World
from tests.test_e2e import ROLE, boto3_sts
from tests._trial import pytest_only

#: The issue's bound: issued credentials stop working within 10 s of the
#: binding's removal.
REVOCATION_BOUND = 10.0


@pytest.fixture(scope="module")
def parent_daemon(world: World) -> Daemon:
    minio = world.tenants["tenant-1"].minio
    minio.make_bucket("photos")
    minio.put_object("photos", "cat.jpg", b"meow")
    return pytest_twisted.blockon(Deferred.fromCoroutine(world.start_daemon(
        "parent", tenants={"authorization": "parent-user"})))


def s3(world: World, credentials: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=world.minio_url + "/tenant-1", region_name="us-east-1",
        verify=str(world.pki.ca_path), aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))


async def exchange(world: World, daemon: Daemon, serviceaccount: str, **extra: Any) -> dict:
    token = world.mint("apps", serviceaccount)
    answer = await deferToThread(
        lambda: boto3_sts(daemon.sts_url("tenant-1"), str(world.pki.ca_path))
        .assume_role_with_web_identity(RoleArn=ROLE, RoleSessionName="session", WebIdentityToken=token,
                                       **extra))
    return answer["Credentials"]  # type: ignore[no-any-return]


async def outcome(call: Any) -> str:
    """C{"ok"} or the S3 error Code of a blocking boto3 call."""
    from botocore.exceptions import ClientError

    def run() -> str:
        try:
            call()
        except ClientError as e:
            return str(e.response["Error"]["Code"])
        return "ok"

    return await deferToThread(run)  # type: ignore[no-any-return]


async def poll_until(check: Any, wanted: str, timeout: float = 30.0) -> tuple[str, float]:
    """Poll C{check} until it answers C{wanted}; (last answer, seconds taken)."""
    started = time.monotonic()
    while True:
        got = await check()
        elapsed = time.monotonic() - started
        if got == wanted or elapsed > timeout:
            return got, elapsed
        await deferLater(reactor, 0.05, lambda: None)


async def bound_client(world: World, daemon: Daemon, serviceaccount: str, binding: str,
                       policies: list[str], **extra: Any) -> tuple[dict, Any]:
    """
    A new ServiceAccount of C{apps} bound to C{policies} in tenant-1: its
    credentials, once the daemon has seen the binding, and an S3 client using them.
    """
    world.kubernetes.create_serviceaccount("apps", serviceaccount)
    world.kubernetes.add_policybinding("tenant-1", binding, app_namespace="apps",
                                       serviceaccount=serviceaccount, policies=policies)
    credentials = await poll_exchange(world, daemon, serviceaccount, **extra)
    return credentials, s3(world, credentials)


async def refused_after(change: Any, call: Any, wanted: str, what: str) -> tuple[str, float]:
    """
    Make C{change}, then poll the blocking S3 C{call} until it is refused
    with C{wanted}: (the last outcome, seconds from the change), printed as C{what}.
    """
    changed_at = time.monotonic()
    change()
    got, _ = await poll_until(lambda: outcome(call), wanted)
    latency = time.monotonic() - changed_at
    print(f"\n{what}: {latency * 1000:.0f} ms")
    return got, latency


@pytest_twisted.ensureDeferred
async def test_removing_the_binding_revokes_issued_credentials(
        world: World, parent_daemon: Daemon) -> None:
    minio = world.tenants["tenant-1"].minio
    credentials, client = await bound_client(world, parent_daemon, "revoke-sa", "revoke-readonly",
                                             ["readonly"])
    assert await outcome(lambda: client.get_object(Bucket="photos", Key="cat.jpg")) == "ok"
    # Minted by the ServiceAccount's parent user, without a session policy.
    [minted] = [m for m in minio.minted if m.access_key == credentials["AccessKeyId"]]
    assert minted.parent == user_name("apps", "revoke-sa") and minted.policy is None
    # The audit event says which mode and which parent user.
    assert (f'"authorization": "parent-user", "parent_user": "{minted.parent}"'
            in parent_daemon.log_text())

    got, latency = await refused_after(
        lambda: world.kubernetes.delete_policybinding("tenant-1", "revoke-readonly"),
        lambda: client.get_object(Bucket="photos", Key="cat.jpg"), "InvalidAccessKeyId",
        "revocation latency (binding deleted -> GetObject refused)")
    assert got == "InvalidAccessKeyId"
    assert latency < REVOCATION_BOUND
    assert user_name("apps", "revoke-sa") not in minio.users
    # New credentials are refused too.
    code = await exchange_code(world, parent_daemon, "revoke-sa")
    assert code == "AccessDenied"


@pytest_twisted.ensureDeferred
async def test_deleting_the_serviceaccount_revokes_issued_credentials(
        world: World, parent_daemon: Daemon) -> None:
    _, client = await bound_client(world, parent_daemon, "doomed-sa", "doomed", ["readonly"])
    assert await outcome(lambda: client.get_object(Bucket="photos", Key="cat.jpg")) == "ok"

    got, latency = await refused_after(
        lambda: world.kubernetes.delete_serviceaccount("apps", "doomed-sa"),
        lambda: client.get_object(Bucket="photos", Key="cat.jpg"), "InvalidAccessKeyId",
        "revocation latency (ServiceAccount deleted -> GetObject refused)")
    assert got == "InvalidAccessKeyId" and latency < REVOCATION_BOUND
    # The binding stays, but no user comes back for a ServiceAccount that is gone.
    assert user_name("apps", "doomed-sa") not in world.tenants["tenant-1"].minio.users


@pytest_twisted.ensureDeferred
async def test_a_binding_change_narrows_live_credentials(
        world: World, parent_daemon: Daemon) -> None:
    _, client = await bound_client(world, parent_daemon, "narrow-sa", "narrow", ["readwrite"])
    assert await outcome(lambda: client.put_object(Bucket="photos", Key="a", Body=b"1")) == "ok"

    got, latency = await refused_after(
        lambda: world.kubernetes.update_policybinding("tenant-1", "narrow", policies=["readonly"]),
        lambda: client.put_object(Bucket="photos", Key="b", Body=b"2"), "AccessDenied",
        "narrowing latency (policies readwrite -> readonly, PutObject refused)")
    assert got == "AccessDenied" and latency < REVOCATION_BOUND
    # Still the same credentials, still allowed to read.
    assert await outcome(lambda: client.get_object(Bucket="photos", Key="cat.jpg")) == "ok"


@pytest_twisted.ensureDeferred
async def test_the_callers_policy_is_intersected_by_minio(
        world: World, parent_daemon: Daemon) -> None:
    only_get = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}
    _, client = await bound_client(world, parent_daemon, "caller-sa", "caller", ["readwrite"],
                                   Policy=json.dumps(only_get))
    assert await outcome(lambda: client.get_object(Bucket="photos", Key="cat.jpg")) == "ok"
    assert await outcome(
        lambda: client.put_object(Bucket="photos", Key="c", Body=b"3")) == "AccessDenied"


@pytest_twisted.ensureDeferred
async def test_fifty_bound_policies(world: World, parent_daemon: Daemon) -> None:
    minio = world.tenants["tenant-1"].minio
    names = []
    for i in range(50):
        name = f"bucket-{i:02d}"
        minio.set_policy(name, {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]}]})
        names.append(name)
    minio.make_bucket("bucket-42")
    _, client = await bound_client(world, parent_daemon, "many-sa", "many", names)
    assert await outcome(lambda: client.put_object(Bucket="bucket-42", Key="k", Body=b"x")) == "ok"
    assert await outcome(
        lambda: client.put_object(Bucket="photos", Key="k", Body=b"x")) == "AccessDenied"
    assert minio.user_policies(user_name("apps", "many-sa")) == tuple(sorted(names))


async def poll_exchange(world: World, daemon: Daemon, serviceaccount: str, **extra: Any) -> dict:
    """Exchange once the daemon has seen the new binding (its watch: about a second)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + 30
    while True:
        try:
            return await exchange(world, daemon, serviceaccount, **extra)
        except ClientError as e:
            if e.response["Error"]["Code"] != "AccessDenied" or time.monotonic() > deadline:
                raise
        await deferLater(reactor, 0.1, lambda: None)


async def exchange_code(world: World, daemon: Daemon, serviceaccount: str) -> str:
    from botocore.exceptions import ClientError

    try:
        await exchange(world, daemon, serviceaccount)
    except ClientError as e:
        return str(e.response["Error"]["Code"])
    return "ok"


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "drives the daemon as a process (pytest fixtures); run under pytest")
