"""
RSS growth of the exchange's caches under N distinct ~2 KB caller Policies
(issue 9, finding 4), in process, with MinIO's answers stubbed:

    .venv/bin/python bench/cache_memory.py 15000

Prints RSS before and after (and after clearing stsd.core.policy's
pattern_contains memo, where it has one) and the bytes the exchange's
effective-policy and reuse caches account for.
"""
from __future__ import annotations

import datetime, gc, json, sys, time
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from stsd.core.exchange import Exchange
from stsd.core.exchange import AssumeRoleRequest
from stsd.core.policy import parse_policy
from stsd.model import Binding, Identity, IssuedCredentials, RootCredentials, Tenant
from stsd.state.bindings import BindingIndex
from stsd.state.tenants import EndpointRule, TenantIndex

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

class Auth:
    audience = "sts.min.io"
    async def authenticate(self, token): return Identity("apps", "app-sa", "pod-1")

READWRITE = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]})
class Minio:
    async def region(self, tenant): return "us-east-1"
    async def canned_policy(self, tenant, region, name): return READWRITE
    async def assume_role(self, tenant, region, policy, duration):
        return IssuedCredentials("A" * 20, "s" * 40, "t" * 1100, datetime.datetime.fromtimestamp(clock.seconds() + 3600, datetime.timezone.utc))

clock = Clock(); clock.advance(time.time())
bindings = BindingIndex(); bindings.replace([Binding("t1", "b", "apps", "app-sa", ("readwrite",))])
tenants = TenantIndex(EndpointRule("https://minio.test/{namespace}", "cluster.local"))
t = Tenant("t1", "storage", True, "env", {}); tenants.replace([t]); tenants.set_credentials(t, RootCredentials("r", "rootsecret"))
ex = Exchange(authenticator=Auth(), bindings=bindings, tenants=tenants, minio=Minio(), clock=clock, is_ready=lambda: True, reuse_seconds=60)
n = int(sys.argv[1])
def run(i):
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"],
           "Resource": [f"arn:aws:s3:::bucket-{i}-{j:02}/{'p' * 20}/*" for j in range(34)]}]}
    text = json.dumps(doc); assert len(text) <= 2048
    r = []
    Deferred.fromCoroutine(ex.exchange("t1", AssumeRoleRequest("t.o.k", 3600, parse_policy(text)))).addBoth(r.append)
    assert r and not hasattr(r[0], "value"), r
run(-1); gc.collect(); before = rss()
for i in range(n): run(i)
gc.collect()
print(f"{n} distinct Policies: RSS {before:.0f} -> {rss():.0f} MiB (+{rss()-before:.0f})")
import stsd.core.policy
memo = getattr(stsd.core.policy.pattern_contains, "cache_info", None)
if memo is not None:
    stsd.core.policy.pattern_contains.cache_clear(); gc.collect()
    print(f"after clearing policy.pattern_contains ({memo().currsize} entries): {rss():.0f} MiB")
print(f"effective-policy cache {ex._effective.bytes} B, reuse cache {ex._minted.bytes} B as weighed")
