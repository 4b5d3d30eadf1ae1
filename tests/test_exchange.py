"""
Tests for L{stsd.core.exchange}: the order of checks, the caches, policy
selection, and — with hypothesis — that the policy MinIO actually
receives never allows more than both the bindings and the caller's
Policy. In memory: the fake MinIO behind StubTreq, a Clock.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors
from stsd.core.exchange import POLICY_TTL, Exchange
from stsd.core.exchange import AssumeRoleRequest
from stsd.core.policy import allows, parse_policy
from stsd.model import Binding, Identity, RootCredentials, Tenant
from stsd.state.bindings import BindingIndex
from stsd.state.tenants import EndpointRule, TenantIndex
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.upstream.http import TreqTransport
from stsd.upstream.minio import MinIOClient
from tests.test_policy import PROBES, policies

READONLY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": ["arn:aws:s3:::*"]}]}
PHOTOS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}


class StandInAuthenticator:
    audience = "sts.min.io"

    def __init__(self) -> None:
        self.identity: Identity | Exception = Identity("apps", "app-sa", "pod-1")
        self.calls = 0

    async def authenticate(self, token: str) -> Identity:
        self.calls += 1
        if isinstance(self.identity, Exception):
            raise self.identity
        return self.identity


class Harness:
    def __init__(self, policies: dict | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.minio = FakeMinIO(access_key="root", secret_key="root-secret-key", region="eu-west-1",
                               clock=self.clock,
                               policies=policies if policies is not None else
                               {"readonly": READONLY, "photos": PHOTOS})
        self.stub = StubTreq(FakeMinIORouter({"tenant-1": self.minio}))
        self.bindings = BindingIndex()
        self.bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", ("readonly", "photos"))])
        self.tenants = TenantIndex(EndpointRule("https://minio.test/{namespace}", "cluster.local"))
        tenant = Tenant("tenant-1", "storage", True, "env", {})
        self.tenants.replace([tenant])
        self.tenants.set_credentials(tenant, RootCredentials("root", "root-secret-key"))
        self.authenticator = StandInAuthenticator()
        self.ready = True
        self.exchange = Exchange(
            authenticator=self.authenticator, bindings=self.bindings, tenants=self.tenants,
            minio=MinIOClient(TreqTransport(self.stub, self.clock), self.clock, 5), clock=self.clock,
            is_ready=lambda: self.ready,
        )

    def run(self, namespace: str = "tenant-1", policy: object = None, duration: int = 3600):
        request = AssumeRoleRequest("t.o.k", duration,
                                    None if policy is None else parse_policy(policy))
        d = Deferred.fromCoroutine(self.exchange.exchange(namespace, request))
        self.stub.flush()
        results: list = []
        d.addBoth(results.append)
        assert results, "the exchange did not finish"
        if isinstance(results[0], Exception) or hasattr(results[0], "value"):
            results[0].raiseException()
        return results[0]

    def error(self, **kw) -> errors.STSError:
        with pytest.raises(errors.STSError) as raised:
            self.run(**kw)
        return raised.value


def _captured_warnings():
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_level") == LogLevel.warn:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    return events, lambda: globalLogPublisher.removeObserver(observer)


# A guardrail MinIO accepts (a top-level ID, a float Condition value, an
# admin statement without Resource) that stsd's parser refused when issue 9
# was filed: it was skipped, and its Deny s3:DeleteObject with it.
GUARDRAIL = """{"Version": "2012-10-17", "ID": "guardrail", "Statement": [
  {"Effect": "Deny", "Action": ["admin:*"]},
  {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": ["arn:aws:s3:::*"]},
  {"Effect": "Deny", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::*"],
   "Condition": {"NumericGreaterThan": {"s3:max-keys": 10.5}}}]}"""
READWRITE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}


BOUND_NAMES = ("p0", "p1", "p2")


# -- abuse limits and single flight -------------------------------------------------


def limited_harness(failed: tuple[float, int] = (1, 2), per_sa: tuple[float, int] = (1, 3)):
    from stsd.core.exchange import Limits
    from stsd.core.ratelimit import Rate, RateLimiter

    h = Harness()
    h.exchange._limits = Limits(
        failed_auth_per_client=RateLimiter(Rate(*failed), h.clock),
        per_serviceaccount=RateLimiter(Rate(*per_sa), h.clock),
    )
    return h


def run_as(h: Harness, client: str, token: str = "t.o.k"):
    from stsd.core.exchange import Trail

    request = AssumeRoleRequest(token, 3600, None)
    d = Deferred.fromCoroutine(h.exchange.exchange("tenant-1", request, Trail(client=client)))
    h.stub.flush()
    results: list = []
    d.addBoth(results.append)
    return results[0]


class ExchangeTests(SynchronousTestCase):
    def test_issues_merged_bound_policies(self) -> None:
        h = Harness()
        issued = h.run(duration=1800)
        minted = h.minio.minted[-1]
        assert issued.credentials.access_key_id == minted.access_key
        assert minted.duration == 1800
        assert issued.policies_used == ("photos", "readonly")
        assert issued.grant.bindings == ("b",)
        issued_policy = parse_policy(minted.policy)
        assert allows(issued_policy, "s3:GetObject", "arn:aws:s3:::any/x")
        assert allows(issued_policy, "s3:PutObject", "arn:aws:s3:::photos/x")
        assert not allows(issued_policy, "s3:PutObject", "arn:aws:s3:::other/x")
        assert issued.policy_bytes == len(json.dumps(minted.policy, separators=(",", ":")).encode())

    def test_not_ready_comes_first(self) -> None:
        h = Harness()
        h.ready = False
        assert h.error().code == "STSNotInitialized"
        assert h.authenticator.calls == 0
        assert h.minio.minted == []

    def test_identity_before_bindings(self) -> None:
        h = Harness()
        h.authenticator.identity = errors.idp_communication_error("down")
        assert h.error(namespace="nowhere").code == "IDPCommunicationError"

    def test_tenant_checked_before_bindings(self) -> None:
        h = Harness()
        h.authenticator.identity = Identity("apps", "stranger")
        assert h.error().code == "AccessDenied"
        # A namespace without a Tenant answers the same with or without a binding
        # there: the caller learns nothing about bindings (issue 9, finding 6).
        without = h.error(namespace="empty-ns")
        h.bindings.apply("ADDED", Binding("empty-ns", "b", "apps", "stranger", ("readonly",)))
        with_binding = h.error(namespace="empty-ns")
        assert (without.code, without.message) == (with_binding.code, with_binding.message)
        assert without.code == "InvalidParameterValue"
        assert h.minio.minted == []

    def test_region_and_policies_cached_and_refreshed(self) -> None:
        h = Harness()
        h.run()
        h.run()
        assert h.minio.count("info") == 1
        assert h.minio.count("policy") == 2  # two names, fetched once each
        assert h.minio.count("assumerole") == 2
        # A policy edit in MinIO is visible after the TTL.
        h.minio.set_policy("photos", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": ["arn:aws:s3:::photos/*"]}]})
        h.run()
        assert not allows(parse_policy(h.minio.minted[-1].policy), "s3:DeleteObject",
                          "arn:aws:s3:::photos/x")
        h.clock.advance(POLICY_TTL + 1)
        h.run()
        assert allows(parse_policy(h.minio.minted[-1].policy), "s3:DeleteObject",
                      "arn:aws:s3:::photos/x")

    def test_missing_policies_skipped(self) -> None:
        h = Harness({"readonly": READONLY})
        h.bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", ("readonly", "gone"))])
        issued = h.run()
        assert issued.policies_used == ("readonly",)
        assert h.exchange.skipped_policies["tenant-1/storage"] == 1
        h.minio.delete_policy("readonly")
        h.clock.advance(POLICY_TTL + 1)
        assert h.error().code == "AccessDenied"

    def test_unreadable_bound_policy_fails_the_request(self) -> None:
        # Issue 9, finding 2: a bound policy that exists but cannot be read may
        # hold Deny statements; dropping it would widen access.
        h = Harness({"readonly": READONLY, "photos": "{this is not json"})
        events, stop = _captured_warnings()
        try:
            for _ in range(2):  # computed, then from the cache: refused and logged both times
                error = h.error()
                assert error.code == "AccessDenied"
                assert "photos" not in error.message and "tenant-1" not in error.message
        finally:
            stop()
        refusals = [e for e in events if e.get("policy") == "photos"]
        assert len(refusals) == 2 and refusals[0]["tenant"] == "tenant-1/storage"
        assert h.minio.count("assumerole") == 0 and h.exchange.skipped_policies["tenant-1/storage"] == 0

    def test_guardrail_denies_survive_or_the_request_fails(self) -> None:
        from stsd.testing import minio_policy

        h = Harness({"readwrite": READWRITE, "guardrail": GUARDRAIL})
        h.bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", ("readwrite", "guardrail"))])
        try:
            h.run()
        except errors.STSError as e:
            assert e.code == "AccessDenied"
            assert h.minio.minted == []
            return
        # If stsd's parser accepts the guardrail, what MinIO received keeps its Denys.
        (minted,) = h.minio.minted
        assert minio_policy.allowed([minted.policy], "s3:GetObject", "arn:aws:s3:::b/k")
        assert not minio_policy.allowed([minted.policy], "s3:DeleteObject", "arn:aws:s3:::b/k")
        assert not minio_policy.allowed([minted.policy], "admin:CreateUser", "")

    def test_unreadable_minio_answer_fails_the_request(self) -> None:
        h = Harness()
        # What MinIOClient.canned_policy gives for an answer it cannot read.
        h.exchange._policies = type(h.exchange._policies)(h.clock, POLICY_TTL)
        original = h.exchange._minio.canned_policy

        async def unreadable(tenant, region, name):
            text = await original(tenant, region, name)
            return "" if name == "photos" else text

        h.exchange._minio.canned_policy = unreadable
        assert h.error().code == "AccessDenied"
        assert h.minio.count("assumerole") == 0

    def test_session_policy_narrows(self) -> None:
        h = Harness()
        h.run(policy={"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::photos/*"]}]})
        issued = parse_policy(h.minio.minted[-1].policy)
        assert allows(issued, "s3:GetObject", "arn:aws:s3:::photos/a")
        assert not allows(issued, "s3:GetObject", "arn:aws:s3:::other/a")
        assert not allows(issued, "s3:DeleteObject", "arn:aws:s3:::photos/a")

    def test_disjoint_session_policy_denied_without_minting(self) -> None:
        h = Harness()
        error = h.error(policy={"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["admin:*"], "Resource": ["arn:aws:s3:::*"]}]})
        assert error.code == "AccessDenied"
        assert h.minio.count("assumerole") == 0

    def test_packed_policy_too_large(self) -> None:
        huge = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::b{i}/*"]}
            for i in range(150)]}
        h = Harness({"huge": huge})
        h.bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", ("huge",))])
        assert h.error().code == "PackedPolicyTooLarge"
        assert h.minio.count("assumerole") == 0

    def test_minio_failures_are_internal_errors_without_secrets(self) -> None:
        h = Harness()
        for mode in ["500", "error"]:
            h.minio.fail("assumerole", mode)
            error = h.error()
            assert (error.code, error.status) == ("InternalError", 500)
            assert "root-secret-key" not in error.message
            # Neither the Tenant nor MinIO's text reaches the client (issue 9, finding 6).
            assert "storage" not in error.message and "internal error" not in error.message
        h.minio.clear_faults()
        h.run()

    def test_minio_hang_times_out(self) -> None:
        h = Harness()
        h.run()  # warm the caches
        h.minio.fail("assumerole", "hang")
        request = AssumeRoleRequest("t.o.k", 3600, None)
        d = Deferred.fromCoroutine(h.exchange.exchange("tenant-1", request))
        h.stub.flush()
        h.clock.advance(4.9)
        assert not d.called
        h.clock.advance(0.2)
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].value.code == "InternalError"
        h.minio.clear_faults()

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(policies(), min_size=1, max_size=3), policies(), PROBES)
    def test_issued_policy_within_bindings_and_session(self, bound, session, probes) -> None:
        """
        For random bound policies (stored in the fake MinIO as canned policies)
        and a random caller Policy, whatever the policy MinIO received allows
        is allowed by the bindings and by the caller's Policy.
        """
        from stsd.core.policy import merge, to_json

        h = Harness({name: json.loads(to_json(p)) for name, p in zip(BOUND_NAMES, bound)})
        h.bindings.replace([Binding("tenant-1", "b", "apps", "app-sa", BOUND_NAMES[:len(bound)])])
        try:
            h.run(policy=json.loads(to_json(session)))
        except errors.STSError as e:
            assert e.code in ("AccessDenied", "PackedPolicyTooLarge")
            assert h.minio.count("assumerole") == 0
            return
        issued = parse_policy(h.minio.minted[-1].policy)
        bindings = merge(bound)
        for action, resource in probes:
            if allows(issued, action, resource):
                assert allows(bindings, action, resource), (action, resource)
                assert allows(session, action, resource), (action, resource)

    def test_failed_auth_limited_per_client_before_any_upstream_call(self) -> None:
        h = limited_harness(failed=(0.5, 2))
        h.authenticator.identity = errors.access_denied("bad token")
        for _ in range(2):
            assert run_as(h, "10.0.0.1").value.code == "AccessDenied"
        calls = h.authenticator.calls
        throttled = run_as(h, "10.0.0.1").value
        assert (throttled.code, throttled.status, throttled.retry_after) == ("Throttling", 400, 2)
        assert h.authenticator.calls == calls, "the authenticator was not asked"
        # Another address is not affected; the budget refills with time.
        assert run_as(h, "10.0.0.2").value.code == "AccessDenied"
        h.clock.advance(2)
        assert run_as(h, "10.0.0.1").value.code == "AccessDenied"

    def test_successful_authentications_do_not_spend_the_failure_budget(self) -> None:
        h = limited_harness(failed=(0.001, 1), per_sa=(1000, 1000))
        for i in range(5):
            assert run_as(h, "10.0.0.1", f"t.o.{i}").credentials is not None

    def test_credentials_limited_per_serviceaccount(self) -> None:
        h = limited_harness(per_sa=(1, 3))
        for i in range(3):
            assert run_as(h, f"10.0.0.{i}", f"t.o.{i}").credentials is not None
        throttled = run_as(h, "10.0.0.9", "t.o.9").value
        assert (throttled.code, throttled.retry_after) == ("Throttling", 1)
        h.authenticator.identity = Identity("apps", "other-sa")
        h.bindings.apply("ADDED", Binding("tenant-1", "o", "apps", "other-sa", ("readonly",)))
        assert run_as(h, "10.0.0.9", "t.o.10").credentials is not None

    def test_concurrent_identical_requests_share_one_assume_role(self) -> None:
        h = Harness()
        h.run()  # warm the region and policy caches
        real = h.exchange._minio.assume_role
        pending: list[Deferred] = []

        def held_assume_role(*args):
            # Hold the AssumeRole in flight until the test releases it.
            d = Deferred.fromCoroutine(real(*args))
            gate: Deferred = Deferred()
            pending.append(gate)
            return gate.addCallback(lambda _: d)

        h.exchange._minio.assume_role = held_assume_role
        before = h.minio.count("assumerole")
        request = AssumeRoleRequest("same.to.ken", 3600, None)
        first = Deferred.fromCoroutine(h.exchange.exchange("tenant-1", request))
        second = Deferred.fromCoroutine(h.exchange.exchange("tenant-1", request))
        assert len(pending) == 1, "the second request joined the first one's AssumeRole"
        assert not first.called and not second.called
        pending[0].callback(None)
        h.stub.flush()
        a, b = [], []
        first.addCallback(a.append)
        second.addCallback(b.append)
        assert a and b and a[0].credentials == b[0].credentials
        assert h.minio.count("assumerole") == before + 1
        # A different token never shares them.
        third = Deferred.fromCoroutine(h.exchange.exchange(
            "tenant-1", AssumeRoleRequest("other.to.ken", 3600, None)))
        assert len(pending) == 2
        pending[1].callback(None)
        h.stub.flush()
        c: list = []
        third.addCallback(c.append)
        assert c and c[0].credentials != a[0].credentials
