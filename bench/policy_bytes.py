"""
The session-policy bytes stsd sends to MinIO for a ServiceAccount bound to
50 canned policies (one bucket each), in each authorization mode, measured
on the real code paths: the L{stsd.core.exchange.Exchange} of each mode, its
MinIO client, and the fake MinIO (which now serves users) in memory through
StubTreq; every AssumeRole form that leaves the client is recorded and its
C{Policy} parameter measured.

    .venv/bin/python -m bench.policy_bytes [--policies 50]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from stsd import errors
from stsd.core.exchange import Exchange
from stsd.core.exchange import AssumeRoleRequest
from stsd.core.policy import parse_policy
from stsd.model import Binding, Identity, RootCredentials, Tenant
from stsd.state.bindings import BindingIndex
from stsd.state.parent_users import ParentUsers
from stsd.state.tenants import EndpointRule, TenantIndex
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.upstream.http import TreqTransport
from stsd.upstream.minio import MinIOClient, decrypt_json_payload, decrypt_payload, encrypt_payload

ROOT = RootCredentials("root", "root-secret-key-for-the-bench")


def bucket_policy(name: str) -> dict[str, Any]:
    """A realistic canned policy: read, write and list one bucket."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": [f"arn:aws:s3:::{name}"]},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"arn:aws:s3:::{name}/*"]}]}


class _Authenticator:
    audience = "sts.min.io"

    async def authenticate(self, token: str) -> Identity:
        return Identity("apps", "app-sa", "pod-1")


class _InlineCrypto:
    # minio.crypto inline: the daemon runs it in a thread; here nothing else runs.
    def encrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        return succeed(encrypt_payload(payload, password))

    def decrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        return succeed(decrypt_payload(payload, password))

    def decrypt_json(self, payload: bytes, password: str) -> Deferred[Any]:
        return succeed(decrypt_json_payload(payload, password))


class _Recording:
    """A transport that records the AssumeRole forms it sends."""

    def __init__(self, inner: TreqTransport) -> None:
        self._inner = inner
        self.forms: list[dict[str, str]] = []

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        if kw.get("metric") == "assumerole":
            self.forms.append(dict(parse_qsl((kw.get("data") or b"").decode(),
                                             keep_blank_values=True)))
        return await self._inner.request(method, url, **kw)


def measure(mode: str, count: int, caller: str | None) -> str:
    clock = Clock()
    clock.advance(time.time())
    names = [f"bucket-{i:02d}" for i in range(count)]
    minio = FakeMinIO(access_key=ROOT.access_key, secret_key=ROOT.secret_key, clock=clock,
                      policies={n: bucket_policy(n) for n in names})
    stub = StubTreq(FakeMinIORouter({"tenant-1": minio}))
    transport = _Recording(TreqTransport(stub, clock))
    client = MinIOClient(transport, clock, 5, crypto=_InlineCrypto())  # type: ignore[arg-type]
    bindings = BindingIndex()
    tenants = TenantIndex(EndpointRule("https://minio.bench/{namespace}", "cluster.local"))
    tenant = Tenant("tenant-1", "storage", True, "env", {})
    tenants.replace([tenant])
    tenants.set_credentials(tenant, ROOT)
    bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", tuple(names))])
    parent_users = None
    if mode == "parent-user":
        parent_users = ParentUsers(bindings=bindings, tenants=tenants, minio=client, clock=clock,
                                   is_ready=lambda: True)
    exchange = Exchange(authenticator=_Authenticator(), bindings=bindings, tenants=tenants,
                        minio=client, clock=clock, is_ready=lambda: True,
                        parent_users=parent_users)
    request = AssumeRoleRequest("t.o.k", 3600, None if caller is None else parse_policy(caller),
                                policy_text=caller)
    d = Deferred.fromCoroutine(exchange.exchange("tenant-1", request))
    for _ in range(200):
        stub.flush()
        if d.called:
            break
    results: list[Any] = []
    d.addBoth(results.append)
    result = results[0]
    if hasattr(result, "value") and isinstance(result.value, errors.STSError):
        return f"{result.value.code} ({result.value.message})"
    if hasattr(result, "raiseException"):
        result.raiseException()
    [form] = transport.forms
    policy = form.get("Policy")
    signer = minio.minted[-1].parent
    return (f"{len(policy.encode()) if policy else 0} bytes "
            f"({'Policy parameter' if policy else 'no Policy parameter'}; AssumeRole signed by "
            f"{'root' if signer == ROOT.access_key else 'parent user ' + signer}; "
            f"{len(result.policies_used)} policies in force)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", type=int, default=50)
    count = parser.parse_args().policies
    canned = sum(len(json.dumps(bucket_policy(f"bucket-{i:02d}"), separators=(",", ":")))
                 for i in range(count))
    caller = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::bucket-07/*"]}]},
        separators=(",", ":"))
    print(f"{count} bound canned policies, one bucket each ({canned} bytes of policy documents)")
    print(f"caller Policy when given: {len(caller)} bytes (GetObject on one bucket)")
    for mode in ("session-policy", "parent-user"):
        for label, policy in (("no caller Policy", None), ("caller Policy", caller)):
            print(f"  {mode:15} {label:17} -> {measure(mode, count, policy)}")


if __name__ == "__main__":
    main()
