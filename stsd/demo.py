# -*- test-case-name: tests.test_demo -*-
"""
The demo: a credential exchange end to end on a simulated cluster, run as
C{python -m stsd.demo [LOG]}.

Brings up a fake Kubernetes API server and two fake MinIO tenants on
loopback TLS (throwaway CA and token-signing key), starts the real
C{twistd stsd} daemon against them, and exchanges a ServiceAccount token
for MinIO credentials with boto3 (in the default parent-user mode), uses
them against the fake MinIO's S3 API, narrows them with a Policy, and
revokes them by deleting the PolicyBinding. Nothing here talks to a real
cluster.
Exits 0 if every step did what it shows; the daemon's log is kept at LOG
(default C{stsd-demo.log} in the system's temporary directory).
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

from stsd.testing.world import World


def _sts_client(url: str, ca: Path, region: str = "us-east-1") -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sts", endpoint_url=url, region_name=region, verify=str(ca),
        aws_access_key_id="unused", aws_secret_access_key="unused",
        config=Config(retries={"max_attempts": 1}),
    )


def _exchange(url: str, ca: Path, token: str, **kw: Any) -> dict[str, Any]:
    return _sts_client(url, ca).assume_role_with_web_identity(
        RoleArn="arn:aws:iam::000000000000:role/stsd-demo",
        RoleSessionName="demo", WebIdentityToken=token, **kw,
    )


def _time_exchanges(url: str, ca: Path, tokens: list[str]) -> list[float]:
    client = _sts_client(url, ca)
    times = []
    for token in tokens:
        started = time.perf_counter()
        client.assume_role_with_web_identity(
            RoleArn="arn:aws:iam::000000000000:role/stsd-demo",
            RoleSessionName="demo", WebIdentityToken=token,
        )
        times.append(time.perf_counter() - started)
    return times


class DemoFailed(Exception):
    """A step did not do what the demo shows."""


def stopped(code: int | None) -> str:
    """
    How the daemon ended, truthfully: twistd ends a process it stopped on
    SIGTERM by re-raising that signal once it has shut down cleanly.
    """
    if code == 0:
        return "stsd stopped cleanly (exit status 0)"
    if code == -signal.SIGTERM:
        return "stsd stopped cleanly on SIGTERM (twistd exits by re-raising the signal)"
    raise DemoFailed(f"stsd ended with exit status {code}")


def _s3_client(world: World, namespace: str, creds: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=f"{world.minio_url}/{namespace}", region_name="us-east-1",
        verify=str(world.pki.ca_path), aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def _s3_outcome(call: Any) -> str:
    """C{"allowed"}, or the S3 error Code of a blocking boto3 call."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as e:
        return f"refused ({e.response['Error']['Code']})"
    return "allowed"


async def _poll_until_refused(reactor: Any, call: Any, timeout: float = 30.0) -> float | None:
    """Seconds until C{call} is refused, or C{None} if it never was within C{timeout}."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await deferToThread(_s3_outcome, call)) != "allowed":
            return time.monotonic() - started
        await deferLater(reactor, 0.05, lambda: None)
    return None


async def main(reactor: Any, directory: str, log: Path) -> None:
    world = World.start(Path(directory), reactor)
    print(f"simulated cluster: Kubernetes API at {world.kube_url}, MinIO tenants at {world.minio_url}/<namespace>")
    minio = world.tenants["tenant-1"].minio
    minio.make_bucket("photos")
    minio.put_object("photos", "cat.jpg", b"meow")
    # tenants.authorization: parent-user is stsd's default; the test world
    # names session-policy explicitly, so the demo asks for the default back.
    daemon = await world.start_daemon(tenants={"authorization": "parent-user"})
    print(f"stsd (twistd process, tenants.authorization: parent-user) ready at {daemon.url}; "
          f"its log will be kept at {log}")
    ca = world.pki.ca_path
    try:
        token = world.mint("apps", "photo-sa")
        url = daemon.sts_url("tenant-1")
        print(f"\n1. boto3 assume_role_with_web_identity at {url} as system:serviceaccount:apps:photo-sa"
              " (PolicyBinding photo-readwrite: policy readwrite)")
        answer = await deferToThread(_exchange, url, ca, token)
        creds = answer["Credentials"]
        print(f"   AccessKeyId={creds['AccessKeyId']} SecretAccessKey=<{len(creds['SecretAccessKey'])} chars> "
              f"Expiration={creds['Expiration'].isoformat()}")
        print(f"   SubjectFromWebIdentityToken={answer['SubjectFromWebIdentityToken']}")
        minted = minio.minted[-1]
        print(f"   MinIO minted it for parent user {minted.parent} (policies "
              f"{', '.join(minio.users[minted.parent].policies)}), session policy: {minted.policy}")
        s3 = _s3_client(world, "tenant-1", creds)
        put = await deferToThread(_s3_outcome, lambda: s3.put_object(
            Bucket="photos", Key="dog.jpg", Body=b"woof"))
        get = await deferToThread(_s3_outcome, lambda: s3.get_object(Bucket="photos", Key="cat.jpg"))
        print(f"   with them, S3 PutObject photos/dog.jpg: {put}; GetObject photos/cat.jpg: {get}")
        if (put, get) != ("allowed", "allowed"):
            raise DemoFailed("the readwrite credentials could not read and write")

        narrow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                  "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}
        print("\n2. the same, asking for s3:GetObject on photos/* only (Policy narrows)")
        narrowed = (await deferToThread(_exchange, url, ca, token, Policy=json.dumps(narrow)))[
            "Credentials"]
        print(f"   MinIO minted it with session policy {json.dumps(minio.minted[-1].policy)}")
        s3_narrow = _s3_client(world, "tenant-1", narrowed)
        put = await deferToThread(_s3_outcome, lambda: s3_narrow.put_object(
            Bucket="photos", Key="bird.jpg", Body=b"tweet"))
        get = await deferToThread(_s3_outcome, lambda: s3_narrow.get_object(
            Bucket="photos", Key="cat.jpg"))
        print(f"   with them, S3 PutObject photos/bird.jpg: {put}; GetObject photos/cat.jpg: {get}")
        if put == "allowed" or get != "allowed":
            raise DemoFailed("the narrowed credentials did not do exactly what the Policy asks")

        print("\n3. a ServiceAccount with no PolicyBinding (apps/unbound-sa)")
        try:
            await deferToThread(_exchange, url, ca, world.mint("apps", "unbound-sa"))
        except Exception as e:
            print(f"   refused: {e}")
        else:
            raise DemoFailed("credentials issued to a ServiceAccount with no PolicyBinding")

        fresh = [world.mint("apps", "photo-sa") for _ in range(20)]
        times = await deferToThread(_time_exchanges, url, ca, fresh)
        print(f"\n4. 20 exchanges, each with a fresh token (TokenReview + AssumeRole), one boto3 "
              f"client: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
        times = await deferToThread(_time_exchanges, url, ca, [token] * 20)
        print(f"5. 20 identical requests (same token): median {statistics.median(times) * 1000:.1f} ms "
              f"(sts.reuse_seconds: the credentials of step 1 are reused, no MinIO call)")

        print("\n6. kubectl delete policybinding photo-readwrite -n tenant-1 (revocation)")
        world.kubernetes.delete_policybinding("tenant-1", "photo-readwrite")
        took = await _poll_until_refused(
            reactor, lambda: s3.get_object(Bucket="photos", Key="cat.jpg"))
        if took is None:
            raise DemoFailed("the credentials of step 1 still work 30 s after the binding's removal")
        print(f"   the credentials of step 1 stopped working {took * 1000:.0f} ms later "
              f"(parent user {minted.parent} removed from MinIO)")
    finally:
        code = await daemon.stop()
        await world.stop()
        shutil.copyfile(daemon.log_path, log)
    print(f"\n{stopped(code)}; its log: {log}")


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    log = Path(args[0] if args else Path(tempfile.gettempdir()) / "stsd-demo.log").absolute()
    with tempfile.TemporaryDirectory(prefix="stsd-demo-") as directory:
        # react() exits: 0, or 1 with the failure (a DemoFailed says which step) logged.
        react(lambda reactor: Deferred.fromCoroutine(main(reactor, directory, log)))


if __name__ == "__main__":
    run()
