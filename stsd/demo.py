"""
The demo: a credential exchange end to end on a simulated cluster.

    python -m stsd.demo

Brings up a fake Kubernetes API server and two fake MinIO tenants on
loopback TLS (throwaway CA and token-signing key), starts the real
C{twistd stsd} daemon against them, and exchanges a ServiceAccount token
for MinIO credentials with boto3. Nothing here talks to a real cluster.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
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


async def main(reactor: Any, directory: str) -> None:
    world = World.start(Path(directory), reactor)
    print(f"simulated cluster: Kubernetes API at {world.kube_url}, MinIO tenants at {world.minio_url}/<namespace>")
    daemon = await world.start_daemon()
    print(f"stsd (twistd process) ready at {daemon.url}; log: {daemon.log_path}")
    ca = world.pki.ca_path
    try:
        token = world.mint("apps", "photo-sa")
        url = daemon.sts_url("tenant-1")
        print(f"\n1. boto3 assume_role_with_web_identity at {url} as system:serviceaccount:apps:photo-sa")
        answer = await deferToThread(_exchange, url, ca, token)
        creds = answer["Credentials"]
        print(f"   AccessKeyId={creds['AccessKeyId']} SecretAccessKey=<{len(creds['SecretAccessKey'])} chars> "
              f"Expiration={creds['Expiration'].isoformat()}")
        print(f"   SubjectFromWebIdentityToken={answer['SubjectFromWebIdentityToken']}")
        minted = world.tenants["tenant-1"].minio.minted[-1]
        print(f"   MinIO minted it with session policy {json.dumps(minted.policy)}")

        narrow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                  "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}
        print("\n2. the same, asking for s3:GetObject on photos/* only (Policy narrows)")
        await deferToThread(_exchange, url, ca, token, Policy=json.dumps(narrow))
        minted = world.tenants["tenant-1"].minio.minted[-1]
        print(f"   MinIO minted it with session policy {json.dumps(minted.policy)}")

        print("\n3. a ServiceAccount with no PolicyBinding (apps/unbound-sa)")
        try:
            await deferToThread(_exchange, url, ca, world.mint("apps", "unbound-sa"))
            print("   UNEXPECTED: credentials issued")
        except Exception as e:
            print(f"   refused: {e}")

        fresh = [world.mint("apps", "photo-sa") for _ in range(20)]
        times = await deferToThread(_time_exchanges, url, ca, fresh)
        print(f"\n4. 20 exchanges, each with a fresh token (TokenReview + AssumeRole), one boto3 "
              f"client: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
        times = await deferToThread(_time_exchanges, url, ca, [token] * 20)
        print(f"5. 20 identical requests (same token): median {statistics.median(times) * 1000:.1f} ms "
              f"(sts.reuse_seconds: the credentials of step 1 are reused, no MinIO call)")
    finally:
        code = await daemon.stop()
        await world.stop()
        print(f"\nstsd stopped (exit code {code}).")


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="stsd-demo-") as directory:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor, directory)))


if __name__ == "__main__":
    sys.exit(run())
