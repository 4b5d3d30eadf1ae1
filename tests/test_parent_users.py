"""
Tests for the parent-user mode, in memory (StubTreq, Clock): the MinIO
user admin calls with real C{minio.crypto} payloads, the user name and
secret derivation, the reconciler of L{stsd.state.parent_users}, and the
exchange signing AssumeRole as the parent user.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors

from stsd.core.exchange import Exchange
from stsd.core.exchange import AssumeRoleRequest
from stsd.core.policy import parse_policy
from stsd.model import Binding, RootCredentials, Tenant, TenantEndpoint
from stsd.state.bindings import BindingIndex
from stsd.state.parent_users import ParentUsers, is_owned, user_name, user_secret
from stsd.state.tenants import EndpointRule, TenantIndex
from stsd.testing.fake_minio import FakeMinIO
from stsd.upstream import minio as minio_client
from stsd.upstream.http import TreqTransport
from stsd.upstream.minio import MinIOClient, MinIOError, NoSuchPolicy, ThreadedPayloadCrypto, UserInfo, decrypt_json_payload, decrypt_payload, encrypt_payload
from tests.minio_users_shim import User, UsersShim
from tests.test_exchange import PHOTOS, READONLY, StandInAuthenticator

ROOT = RootCredentials("root", "root-secret-key")
DNS_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


class InlineCrypto:
    """The real minio.crypto, run inline (the daemon runs it in a thread)."""

    def __init__(self) -> None:
        self.calls = 0

    def encrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        self.calls += 1
        return succeed(encrypt_payload(payload, password))

    def decrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        self.calls += 1
        return succeed(decrypt_payload(payload, password))

    def decrypt_json(self, payload: bytes, password: str) -> Deferred[Any]:
        self.calls += 1
        return succeed(decrypt_json_payload(payload, password))


class World:
    def __init__(self, policies: dict | None = None, shim: UsersShim | None = None,
                 clock: Clock | None = None) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(time.time())
        self.clock = clock
        if shim is None:
            shim = UsersShim(FakeMinIO(
                access_key=ROOT.access_key, secret_key=ROOT.secret_key, region="eu-west-1",
                clock=self.clock, policies=policies if policies is not None else
                {"readonly": READONLY, "photos": PHOTOS}))
        self.shim = shim
        self.stub = StubTreq(self.shim.resource())
        self.crypto = InlineCrypto()
        self.client = MinIOClient(TreqTransport(self.stub, self.clock), self.clock, 5,
                                  crypto=self.crypto)
        self.endpoint = TenantEndpoint("tenant-1/storage", "https://minio.test/tenant-1", ROOT)
        self.bindings = BindingIndex()
        self.tenants = TenantIndex(EndpointRule("https://minio.test/{namespace}", "cluster.local"))
        tenant = Tenant("tenant-1", "storage", True, "env", {})
        self.tenants.replace([tenant])
        self.tenants.set_credentials(tenant, ROOT)
        self.ready = True
        self.users = ParentUsers(bindings=self.bindings, tenants=self.tenants, minio=self.client,
                                 clock=self.clock, is_ready=lambda: self.ready, resync_seconds=60)

    def settle(self, d: Any = None) -> Any:
        if not isinstance(d, Deferred) and d is not None:
            d = Deferred.fromCoroutine(d)
        for _ in range(100):
            self.stub.flush()
            if d is not None and d.called:
                break
        if d is None:
            return None
        results: list = []
        d.addBoth(results.append)
        assert results, "did not finish"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def listed(self) -> None:
        """Start the service and let its first full reconcile run."""
        self.users.startService()
        self.settle()
        assert "tenant-1" in self.users._listed

    def bind(self, name: str, sa: str, *policies: str) -> None:
        self.bindings.apply("ADDED", Binding("tenant-1", name, "apps", sa, policies))
        self.settle()

    def unbind(self, name: str) -> None:
        self.bindings.apply("DELETED", Binding("tenant-1", name, "", "", ()))
        self.settle()


# -- names and secrets --------------------------------------------------------


# -- the client calls ---------------------------------------------------------


class ThreadReactor:
    """Receives what the pool's threads hand back; run on the test's thread."""

    def __init__(self) -> None:
        self.handed: queue.Queue = queue.Queue()

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        self.handed.put((f, args, kw))


# -- the reconciler -----------------------------------------------------------


# -- the exchange in parent-user mode -----------------------------------------


def exchange_for(w: World, reuse_seconds: float = 0.0) -> tuple[Exchange, StandInAuthenticator]:
    authenticator = StandInAuthenticator()
    return Exchange(authenticator=authenticator, bindings=w.bindings, tenants=w.tenants,
                    minio=w.client, clock=w.clock, is_ready=lambda: True,
                    reuse_seconds=reuse_seconds, parent_users=w.users), authenticator


def request(policy: object = None, token: str = "t.o.k") -> AssumeRoleRequest:
    text = None if policy is None else json.dumps(policy)
    return AssumeRoleRequest(token, 3600, None if text is None else parse_policy(text),
                             policy_text=text)


# -- deleted ServiceAccounts --------------------------------------------------


def sa_object(namespace: str, name: str) -> dict:
    return {"metadata": {"namespace": namespace, "name": name}}


# -- convergence, whatever the order of events and failures -------------------

SAS = ("sa-a", "sa-b", "sa-c")
POLICY_SETS = st.sets(st.sampled_from(("readonly", "photos", "nope")), max_size=3)
STEPS = st.lists(st.one_of(
    st.tuples(st.just("bind"), st.sampled_from(SAS), POLICY_SETS),
    st.tuples(st.just("unbind"), st.sampled_from(SAS)),
    st.tuples(st.just("fail"), st.sampled_from(("add-user", "set-policy", "remove-user",
                                                "list-users"))),
    st.tuples(st.just("advance"), st.floats(0, 40)),
    st.tuples(st.just("flush")),
), max_size=12)


def converge(steps: list, two: bool) -> None:
    a = World()
    replicas = [a] + ([World(shim=a.shim, clock=a.clock)] if two else [])
    for w in replicas:
        w.users.startService()
    for step in steps:
        if step[0] == "bind":
            for w in replicas:
                w.bindings.apply("ADDED", Binding("tenant-1", step[1], "apps", step[1],
                                                  tuple(sorted(step[2]))))
        elif step[0] == "unbind":
            for w in replicas:
                w.bindings.apply("DELETED", Binding("tenant-1", step[1], "", "", ()))
        elif step[0] == "fail":
            a.shim.fail(step[1])
        elif step[0] == "advance":
            a.clock.advance(step[1])
        a.settle()
    # However it went, within a full-reconcile period (plus backoff) MinIO
    # holds exactly what the bindings say.
    for _ in range(4):
        a.clock.advance(30)
        a.settle()
    wanted = {}
    for sa in SAS:
        grant = a.bindings.lookup("tenant-1", "apps", sa)
        if grant is not None and grant.policies:
            wanted[user_name("apps", sa)] = tuple(p for p in grant.policies if p != "nope")
    assert {name: u.policies for name, u in a.shim.users.items()} == wanted
    for name in wanted:
        assert a.shim.users[name].secret == user_secret(ROOT, name)


class ParentUserTests(SynchronousTestCase):
    @given(DNS_LABEL, DNS_LABEL)
    def test_user_name_is_a_valid_stable_minio_access_key(self, namespace: str, name: str) -> None:
        user = user_name(namespace, name)
        assert len(user) == 20 and user.startswith("stsd-")
        assert "=" not in user and "," not in user and user.isascii()
        assert is_owned(user)
        assert user == user_name(namespace, name)

    def test_user_names_differ_per_serviceaccount(self) -> None:
        names = {user_name(ns, sa) for ns in ("a", "b", "a-b") for sa in ("x", "y", "b-x")}
        assert len(names) == 9
        assert not is_owned("alice") and not is_owned("stsd-short")

    @given(DNS_LABEL)
    def test_user_secret_is_a_valid_minio_secret_derived_from_root(self, name: str) -> None:
        user = user_name("apps", name)
        secret = user_secret(ROOT, user)
        assert len(secret) == 40 and all(c in "0123456789abcdef" for c in secret)
        assert secret == user_secret(RootCredentials("other-root-name", ROOT.secret_key), user)
        assert secret != user_secret(RootCredentials("root", "rotated-secret"), user)
        assert secret != user_secret(ROOT, user_name("other", name))

    def test_add_user_sends_a_madmin_encrypted_body(self) -> None:
        w = World()
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-aaaaaaaaaaaaaaa", "s" * 40))
        assert w.shim.users["stsd-aaaaaaaaaaaaaaa"].secret == "s" * 40
        assert w.shim.users["stsd-aaaaaaaaaaaaaaa"].status == "enabled"
        assert w.crypto.calls == 1
        # add-user is an upsert: the same call again converges, keeping the policies.
        w.settle(w.client.set_user_policies(w.endpoint, "eu-west-1", "stsd-aaaaaaaaaaaaaaa",
                                            ["photos"]))
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-aaaaaaaaaaaaaaa", "s" * 40))
        assert w.shim.users["stsd-aaaaaaaaaaaaaaa"].policies == ("photos",)

    def test_add_user_refused_names_the_call_not_the_secret(self) -> None:
        w = World()
        with pytest.raises(MinIOError) as raised:
            w.settle(w.client.add_user(w.endpoint, "eu-west-1", "x" * 21, "secret-value-123"))
        assert "add user" in str(raised.value) and "secret-value-123" not in str(raised.value)
        assert raised.value.code == "XMinioAdminInvalidArgument"

    def test_set_user_policies_is_an_exact_set(self) -> None:
        w = World()
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-bbbbbbbbbbbbbbb", "s" * 40))
        for policies in (["photos", "readonly"], ["readonly"], ["readonly"], []):
            w.settle(w.client.set_user_policies(w.endpoint, "eu-west-1", "stsd-bbbbbbbbbbbbbbb",
                                                policies))
            assert w.shim.users["stsd-bbbbbbbbbbbbbbb"].policies == tuple(policies)

    def test_set_user_policies_unknown_policy(self) -> None:
        w = World()
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-bbbbbbbbbbbbbbb", "s" * 40))
        with pytest.raises(NoSuchPolicy):
            w.settle(w.client.set_user_policies(w.endpoint, "eu-west-1", "stsd-bbbbbbbbbbbbbbb",
                                                ["photos", "nope"]))
        assert w.shim.users["stsd-bbbbbbbbbbbbbbb"].policies == ()

    def test_list_users_decrypts_the_answer(self) -> None:
        w = World()
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-ccccccccccccccc", "s" * 40))
        w.settle(w.client.set_user_policies(w.endpoint, "eu-west-1", "stsd-ccccccccccccccc",
                                            ["readonly", "photos"]))
        users = w.settle(w.client.list_users(w.endpoint, "eu-west-1"))
        assert users == {"stsd-ccccccccccccccc": UserInfo(("photos", "readonly"), "enabled")}

    def test_list_users_with_the_wrong_key_fails_cleanly(self) -> None:
        w = World()
        assert w.settle(w.client.list_users(w.endpoint, "eu-west-1")) == {}
        other = TenantEndpoint(w.endpoint.name, w.endpoint.url, RootCredentials("root", "wrong-key"))
        with pytest.raises(MinIOError) as raised:
            w.settle(w.client.list_users(other, "eu-west-1"))
        assert "wrong-key" not in str(raised.value)
        with pytest.raises(ValueError):
            decrypt_payload(encrypt_payload(b"{}", "one-password"), "another-password")

    def test_remove_user_reports_whether_it_existed(self) -> None:
        w = World()
        w.settle(w.client.add_user(w.endpoint, "eu-west-1", "stsd-ddddddddddddddd", "s" * 40))
        assert w.settle(w.client.remove_user(w.endpoint, "eu-west-1", "stsd-ddddddddddddddd")) is True
        assert w.settle(w.client.remove_user(w.endpoint, "eu-west-1", "stsd-ddddddddddddddd")) is False

    def test_user_calls_without_crypto_are_refused(self) -> None:
        w = World()
        bare = MinIOClient(TreqTransport(w.stub, w.clock), w.clock, 5)
        with pytest.raises(RuntimeError):
            w.settle(bare.add_user(w.endpoint, "eu-west-1", "stsd-eeeeeeeeeeeeeee", "s" * 40))

    def test_payload_crypto_runs_off_the_reactor_thread(self) -> None:
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        threads: list[int] = []
        real = minio_client.encrypt_payload

        def recording(payload: bytes, password: str) -> bytes:
            threads.append(threading.get_ident())
            return real(payload, password)

        monkeypatch.setattr(minio_client, "encrypt_payload", recording)
        reactor = ThreadReactor()
        pool = ThreadPool(minthreads=0, maxthreads=1, name="test-crypto")
        pool.start()
        real_json = minio_client.decrypt_json_payload

        def recording_json(payload: bytes, password: str) -> Any:
            threads.append(threading.get_ident())
            return real_json(payload, password)

        monkeypatch.setattr(minio_client, "decrypt_json_payload", recording_json)
        crypto = ThreadedPayloadCrypto(reactor, pool)
        try:
            d = crypto.encrypt(b'{"secretKey":"x"}', "pw")
            assert not d.called  # nothing ran on this thread
            f, args, kw = reactor.handed.get(timeout=60)
            f(*args, **kw)
            parsed = crypto.decrypt_json(d.result, "pw")
            assert not parsed.called
            f, args, kw = reactor.handed.get(timeout=60)
            f(*args, **kw)
        finally:
            pool.stop()
        assert len(threads) == 2 and threading.get_ident() not in threads
        assert parsed.result == {"secretKey": "x"}

    def test_binding_events_create_update_and_remove_the_user(self) -> None:
        w = World()
        w.listed()
        name = user_name("apps", "app-sa")
        w.bind("b1", "app-sa", "readonly")
        assert w.shim.users[name].policies == ("readonly",)
        assert w.shim.users[name].secret == user_secret(ROOT, name)
        w.bind("b2", "app-sa", "photos")
        assert w.shim.users[name].policies == ("photos", "readonly")
        assert w.shim.routes().count("add-user") == 1  # a change re-attaches only
        w.unbind("b1")
        assert w.shim.users[name].policies == ("photos",)
        w.unbind("b2")
        assert name not in w.shim.users
        assert w.shim.calls[-1] == ("remove-user", name)

    def test_removing_the_user_removes_its_derived_credentials(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        name = user_name("apps", "app-sa")
        parent = w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        w.settle(w.client.assume_role(w.endpoint, "eu-west-1", b"", 3600, as_user=parent.credentials))
        assert [d.parent for d in w.shim.derived.values()] == [name]
        w.unbind("b1")
        assert w.shim.derived == {}

    def test_failure_is_retried_with_backoff(self) -> None:
        w = World()
        w.listed()
        w.shim.fail("set-policy", times=2)
        w.bind("b1", "app-sa", "readonly")
        name = user_name("apps", "app-sa")
        assert w.shim.users[name].policies == ()
        w.clock.advance(0.5)
        w.settle()
        assert w.shim.users[name].policies == ()  # second failure
        w.clock.advance(0.5)
        w.settle()
        assert w.shim.users[name].policies == ()  # backoff doubled: 1 s now
        w.clock.advance(0.5)
        w.settle()
        assert w.shim.users[name].policies == ("readonly",)
        assert w.shim.routes().count("set-policy") == 3

    def test_ensure_fails_with_minio_and_succeeds_once_it_recovers(self) -> None:
        w = World()
        w.listed()
        w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
        w.shim.fail("add-user")
        w.users._users.clear()  # as if the event had not been seen
        with pytest.raises(MinIOError):
            w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        parent = w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        assert parent.policies == ("readonly",)

    def test_concurrent_ensures_share_one_reconcile(self) -> None:
        w = World()
        w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
        ds = [Deferred.fromCoroutine(w.users.ensure("tenant-1", "apps", "app-sa")) for _ in range(5)]
        for d in ds:
            parent = w.settle(d)
            assert parent.name == user_name("apps", "app-sa")
        assert w.shim.routes().count("add-user") == 1
        assert w.shim.routes().count("set-policy") == 1
        # In step: answered from memory, no call.
        before = len(w.shim.calls)
        w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        assert len(w.shim.calls) == before

    def test_a_newer_state_during_a_run_supersedes(self) -> None:
        w = World()
        w.listed()
        w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
        # The run is in flight (nothing flushed): the policies change twice more.
        w.bindings.apply("MODIFIED", Binding("tenant-1", "b1", "apps", "app-sa", ("photos",)))
        w.bindings.apply("MODIFIED", Binding("tenant-1", "b1", "apps", "app-sa",
                                             ("photos", "readonly")))
        w.settle()
        assert w.shim.users[user_name("apps", "app-sa")].policies == ("photos", "readonly")
        assert w.shim.routes().count("add-user") == 1

    def test_missing_policies_are_left_out(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly", "nope")
        name = user_name("apps", "app-sa")
        assert w.shim.users[name].policies == ("readonly",)
        parent = w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        assert parent.policies == ("readonly",)

    def test_full_reconcile_removes_orphans_and_repairs_drift(self) -> None:
        w = World()
        orphan = user_name("gone", "old-sa")
        w.shim.users[orphan] = User("s" * 40, "enabled", ("readonly",))
        w.shim.users["alice"] = User("a" * 40, "enabled", ("readonly",))
        w.listed()
        assert orphan not in w.shim.users
        assert "alice" in w.shim.users  # not stsd's
        w.bind("b1", "app-sa", "readonly")
        name = user_name("apps", "app-sa")
        # Someone changes the user behind stsd's back; the next full reconcile repairs it.
        w.shim.users[name].policies = ("photos", "readonly")
        w.clock.advance(60)
        w.settle()
        assert w.shim.users[name].policies == ("readonly",)
        # ...and a user deleted behind its back is created again.
        del w.shim.users[name]
        w.clock.advance(60)
        w.settle()
        assert w.shim.users[name].policies == ("readonly",)

    def test_full_reconcile_waits_for_the_binding_index(self) -> None:
        w = World()
        orphan = user_name("gone", "old-sa")
        w.shim.users[orphan] = User("s" * 40, "enabled", ("readonly",))
        w.ready = False
        w.users.startService()
        w.clock.advance(5)
        w.settle()
        assert orphan in w.shim.users and w.shim.calls == []
        w.ready = True
        w.clock.advance(1)
        w.settle()
        assert orphan not in w.shim.users

    def test_initial_list_costs_no_call_per_user_in_step(self) -> None:
        w = World()
        name = user_name("apps", "app-sa")
        w.shim.users[name] = User(user_secret(ROOT, name), "enabled", ("readonly",))
        w.bindings.replace([Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)),
                            Binding("tenant-1", "b2", "apps", "new-sa", ("photos",))])
        w.settle()
        assert w.shim.calls == []  # the tenant is not listed yet: no call per binding
        w.listed()
        assert w.shim.routes() == ["list-users", "add-user", "set-policy"]  # only new-sa
        parent = w.settle(w.users.ensure("tenant-1", "apps", "app-sa"))
        assert parent.policies == ("readonly",) and len(w.shim.calls) == 3

    def test_full_reconcile_failure_is_logged_and_retried(self) -> None:
        w = World()
        w.shim.fail("list-users")
        w.users.startService()
        w.settle()
        assert "tenant-1" not in w.users._listed
        w.clock.advance(5)
        w.settle()
        assert "tenant-1" in w.users._listed
        assert w.users._timer.running

    def test_two_reconcilers_converge(self) -> None:
        a = World()
        b = World(shim=a.shim, clock=a.clock)
        a.listed()
        b.listed()
        for w in (a, b):
            w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
            w.bindings.apply("ADDED", Binding("tenant-1", "b2", "apps", "two-sa", ("photos",)))
        a.settle()
        name, two = user_name("apps", "app-sa"), user_name("apps", "two-sa")
        assert a.shim.users[name].policies == ("readonly",) and a.shim.users[two].policies == ("photos",)
        # b sees a change first (watch lag), then a: both end in the same state.
        b.bindings.apply("MODIFIED", Binding("tenant-1", "b1", "apps", "app-sa", ("photos", "readonly")))
        b.bindings.apply("DELETED", Binding("tenant-1", "b2", "", "", ()))
        b.settle()
        a.bindings.apply("MODIFIED", Binding("tenant-1", "b1", "apps", "app-sa", ("photos", "readonly")))
        a.bindings.apply("DELETED", Binding("tenant-1", "b2", "", "", ()))
        a.settle()
        a.clock.advance(60)
        a.settle()
        assert set(a.shim.users) == {name}
        assert a.shim.users[name].policies == ("photos", "readonly")
        assert a.shim.users[name].secret == user_secret(ROOT, name)
        # Both still mint as the same user.
        pa = a.settle(a.users.ensure("tenant-1", "apps", "app-sa"))
        pb = b.settle(b.users.ensure("tenant-1", "apps", "app-sa"))
        assert pa.credentials == pb.credentials

    def test_a_failing_listener_does_not_break_the_index(self) -> None:
        index = BindingIndex()
        index.add_listener(lambda keys: 1 / 0)
        seen: list = []
        index.add_listener(seen.append)
        index.apply("ADDED", Binding("t", "b", "apps", "sa", ("p",)))
        assert index.lookup("t", "apps", "sa") is not None
        assert seen == [{("t", "apps", "sa")}]
        # The failing listener is logged, not raised (trial fails a test on an unflushed one).
        assert len(self.flushLoggedErrors(ZeroDivisionError)) == 1

    def test_replace_reports_only_changed_grants(self) -> None:
        index = BindingIndex()
        seen: list = []
        index.add_listener(seen.append)
        index.replace([Binding("t", "b1", "apps", "a", ("p",)), Binding("t", "b2", "apps", "b", ("q",))])
        assert seen == [{("t", "apps", "a"), ("t", "apps", "b")}]
        index.replace([Binding("t", "b1", "apps", "a", ("p",)), Binding("t", "b3", "apps", "b", ("q",)),
                       Binding("t", "b4", "apps", "c", ("r",))])
        assert seen[1] == {("t", "apps", "c")}  # b moved to another binding with the same policies
        index.replace([])
        assert seen[2] == {("t", "apps", "a"), ("t", "apps", "b"), ("t", "apps", "c")}

    def test_exchange_signs_as_the_parent_user_without_a_session_policy(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly", "photos")
        exchange, _ = exchange_for(w)
        issued = w.settle(exchange.exchange("tenant-1", request()))
        route, signer, policy = w.shim.calls[-1]
        assert (route, signer, policy) == ("assume-role", user_name("apps", "app-sa"), "")
        assert issued.policies_used == ("photos", "readonly")
        assert issued.policy_bytes == 0
        assert w.shim.derived[issued.credentials.access_key_id].parent == signer

    def test_exchange_passes_the_callers_policy_whole(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        exchange, _ = exchange_for(w)
        caller = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}
        issued = w.settle(exchange.exchange("tenant-1", request(caller)))
        assert w.shim.calls[-1][2] == json.dumps(caller)
        assert issued.policy_bytes == len(json.dumps(caller))

    def test_fifty_bindings_do_not_hit_the_session_policy_limit(self) -> None:
        policies = {f"bucket-{i:02d}": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::bucket-{i:02d}", f"arn:aws:s3:::bucket-{i:02d}/*"]}]}
            for i in range(50)}
        w = World(policies=policies)
        w.listed()
        w.bind("b1", "app-sa", *policies)
        exchange, _ = exchange_for(w)
        issued = w.settle(exchange.exchange("tenant-1", request()))
        assert len(issued.policies_used) == 50
        assert w.shim.users[user_name("apps", "app-sa")].policies == tuple(sorted(policies))

    def test_exchange_refuses_when_no_bound_policy_exists(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "nope")
        exchange, _ = exchange_for(w)
        with pytest.raises(errors.STSError) as raised:
            w.settle(exchange.exchange("tenant-1", request()))
        assert raised.value.code == "AccessDenied"
        assert not any(c[0] == "assume-role" for c in w.shim.calls)

    def test_exchange_reuse_is_keyed_by_user_and_dies_with_it(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        exchange, _ = exchange_for(w, reuse_seconds=60)
        first = w.settle(exchange.exchange("tenant-1", request()))
        again = w.settle(exchange.exchange("tenant-1", request()))
        assert again.credentials == first.credentials
        # Revoked and granted again: the old credentials died with the user.
        w.unbind("b1")
        w.bind("b1", "app-sa", "readonly")
        fresh = w.settle(exchange.exchange("tenant-1", request()))
        assert fresh.credentials != first.credentials
        assert fresh.credentials.access_key_id in w.shim.derived

    def test_exchange_sets_the_user_up_again_when_minio_refuses_its_signature(self) -> None:
        w = World()
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        exchange, _ = exchange_for(w)
        name = user_name("apps", "app-sa")
        w.shim.users[name].secret = "changed-by-someone-else"
        # Just set up: a refusal is an error, not a reason to set it up again
        # (else every refused request would cost an add-user).
        with pytest.raises(errors.STSError) as raised:
            w.settle(exchange.exchange("tenant-1", request()))
        assert raised.value.code == "InternalError"
        assert w.shim.routes().count("add-user") == 1
        w.clock.advance(10)
        issued = w.settle(exchange.exchange("tenant-1", request()))
        assert w.shim.derived[issued.credentials.access_key_id].parent == name
        assert w.shim.users[name].secret == user_secret(ROOT, name)
        assert w.shim.routes().count("add-user") == 2

    def test_exchange_waits_for_a_pending_reconcile(self) -> None:
        w = World()
        w.listed()
        w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
        exchange, _ = exchange_for(w)
        # The event's reconcile has not reached MinIO; the request waits for it.
        issued = w.settle(exchange.exchange("tenant-1", request()))
        assert w.shim.routes()[-3:] == ["add-user", "set-policy", "assume-role"]
        assert issued.policies_used == ("readonly",)

    def test_policy_bytes_bench_measures_both_modes(self) -> None:
        from bench.policy_bytes import measure

        assert measure("session-policy", 50, None).startswith("PackedPolicyTooLarge")
        assert measure("parent-user", 50, None).startswith("0 bytes (no Policy parameter; "
                                                       "AssumeRole signed by parent user stsd-")
        caller = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::bucket-07/*"]}]})
        assert measure("parent-user", 50, caller).startswith(f"{len(caller)} bytes (Policy parameter")

    def test_exchange_failure_names_no_tenant_nor_minio_text(self) -> None:
        w = World()
        w.listed()
        w.bindings.apply("ADDED", Binding("tenant-1", "b1", "apps", "app-sa", ("readonly",)))
        w.users._users.clear()
        w.shim.fail("add-user")
        exchange, _ = exchange_for(w)
        with pytest.raises(errors.STSError) as raised:
            w.settle(exchange.exchange("tenant-1", request()))
        assert raised.value.code == "InternalError"
        assert "storage" not in raised.value.message and "injected" not in raised.value.message

    def test_deleting_the_serviceaccount_removes_its_user(self) -> None:
        from stsd.state.serviceaccounts import ServiceAccountIndex

        w = World()
        index = ServiceAccountIndex(None, w.clock, 60)  # type: ignore[arg-type]  # fed by hand
        users = ParentUsers(bindings=w.bindings, tenants=w.tenants, minio=w.client, clock=w.clock,
                            is_ready=lambda: True, resync_seconds=60, serviceaccounts=index)
        w.users = users
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        name = user_name("apps", "app-sa")
        # Nothing known yet: every ServiceAccount counts as existing.
        assert index.exists("apps", "app-sa") and name in w.shim.users
        index._replace([("apps", "app-sa"), ("apps", "other")], "1")
        w.settle()
        assert name in w.shim.users
        index._event("DELETED", sa_object("apps", "app-sa"))
        w.settle()
        assert name not in w.shim.users and w.shim.calls[-1] == ("remove-user", name)
        exchange, _ = exchange_for(w)
        with pytest.raises(errors.STSError) as raised:
            w.settle(exchange.exchange("tenant-1", request()))
        assert raised.value.code == "AccessDenied"
        # The full reconcile does not bring it back while the ServiceAccount is gone...
        w.clock.advance(60)
        w.settle()
        assert name not in w.shim.users
        # ...and a ServiceAccount of that name created again gets a user again.
        index._event("ADDED", sa_object("apps", "app-sa"))
        parent = w.settle(exchange.exchange("tenant-1", request()))
        assert parent.policies_used == ("readonly",) and name in w.shim.users

    def test_the_first_serviceaccount_list_removes_users_of_deleted_ones(self) -> None:
        from stsd.state.serviceaccounts import ServiceAccountIndex

        w = World()
        index = ServiceAccountIndex(None, w.clock, 60)  # type: ignore[arg-type]
        w.users = ParentUsers(bindings=w.bindings, tenants=w.tenants, minio=w.client, clock=w.clock,
                              is_ready=lambda: True, resync_seconds=60, serviceaccounts=index)
        w.listed()
        w.bind("b1", "app-sa", "readonly")
        w.bind("b2", "gone-sa", "readonly")
        index._replace([("apps", "app-sa"), None], "1")
        w.clock.advance(1)
        w.settle()
        assert user_name("apps", "app-sa") in w.shim.users
        assert user_name("apps", "gone-sa") not in w.shim.users

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(STEPS, st.booleans())
    def test_reconcilers_converge_to_the_bindings(self, steps: list, two: bool) -> None:
        import hashlib
        from unittest import mock

        # The payloads keep minio.crypto's format, with a cheap key derivation
        # instead of argon2id (64 MiB, tens of ms): the property is about order.
        def cheap(secret: bytes, salt: bytes) -> bytes:
            return hashlib.sha256(secret + salt).digest()

        with mock.patch("minio.crypto._generate_key", cheap):
            converge(steps, two)

    def test_with_the_fake_minio_and_its_own_madmin_decryptor(self) -> None:
        """
        The same cycle against L{stsd.testing.fake_minio}, whose admin payload
        crypto is an implementation independent of the minio package's.
        """
        from stsd.testing.fake_minio import FakeMinIORouter

        w = World()
        minio = FakeMinIO(access_key=ROOT.access_key, secret_key=ROOT.secret_key, region="eu-west-1",
                          clock=w.clock, policies={"readonly": READONLY, "photos": PHOTOS})
        w.stub = StubTreq(FakeMinIORouter({"tenant-1": minio}))
        w.client = MinIOClient(TreqTransport(w.stub, w.clock), w.clock, 5, crypto=w.crypto)
        w.users = ParentUsers(bindings=w.bindings, tenants=w.tenants, minio=w.client, clock=w.clock,
                              is_ready=lambda: True, resync_seconds=60)
        minio.add_user(user_name("gone", "old-sa"), "s" * 40, ["readonly"])
        w.listed()
        assert minio.users == {}  # the orphan is gone
        w.bind("b1", "app-sa", "readonly", "photos")
        name = user_name("apps", "app-sa")
        assert minio.user_policies(name) == ("photos", "readonly")
        assert w.settle(w.client.list_users(w.endpoint, "eu-west-1")) == {
            name: UserInfo(("photos", "readonly"), "enabled")}
        exchange, _ = exchange_for(w)
        issued = w.settle(exchange.exchange("tenant-1", request()))
        [live] = minio.live_credentials(name)
        assert live.access_key == issued.credentials.access_key_id and live.policy is None
        w.unbind("b1")
        assert name not in minio.users and minio.live_credentials(name) == []
