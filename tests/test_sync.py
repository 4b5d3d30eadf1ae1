"""
Tests for L{stsd.state.sync} (list + watch of PolicyBindings, Tenants and their
Secrets).

Most run in memory: the strict fake API server behind C{StubTreq} (which
streams a watch response chunk by chunk as the fake writes it: each
C{flush} delivers what was written) and a C{Clock}. A few run over real
loopback TLS to measure how soon a change reaches the index.
"""

from __future__ import annotations

import base64
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from stsd import errors
from stsd.model import Binding
from stsd.ops.rbac import PERMISSIONS
from stsd.state.bindings import BINDINGS_PATH, BindingIndex
from stsd.state.listwatch import WATCH_SECONDS
from stsd.state.refresh import Refresher
from stsd.state.sync import WatchSync
from stsd.state.tenants import TENANTS_PATH, EndpointRule, TenantIndex
from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from stsd.upstream import tls
from stsd.upstream.http import close_connections, make_client
from stsd.upstream.kube import KubeAccess, KubernetesClient

from tests._trial import pytest_twisted_functions, temporary_directory
from tests.test_listwatch import Jitter

ROLE = [(p.group, p.resource, verb) for p in PERMISSIONS for verb in p.verbs]

T0 = 1_800_000_000.0
CLIENT = "client-token-for-watch-tests"
TIMEOUT = 5.0
RESYNC = 30.0
KUBE = "https://kube.test"
PASSWORD_1 = "first-root-password-Qx81"
PASSWORD_2 = "rotated-root-password-Zk27"


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@implementer(ILogObserver)
class Captured:
    """
    Every log event emitted while installed, formatted and raw.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)

    def __enter__(self) -> Captured:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


def kube_client(host: str, http: Any, clock: Any, timeout: float = TIMEOUT) -> KubernetesClient:
    access = KubeAccess(host=host, https=None, configuration=None,  # type: ignore[arg-type]
                        authorization=f"Bearer {CLIENT}")
    return KubernetesClient(access, http, clock, timeout)


class InMemory(SynchronousTestCase):
    """
    The fake API server behind StubTreq, on a Clock, and a WatchSync.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.fake = FakeKubernetes(TokenIssuer(key=_rsa_key(), clock=self.clock),
                                   client_token=CLIENT, clock=self.clock)
        self.stub = StubTreq(self.fake.resource())
        self.client = kube_client(KUBE, self.stub, self.clock)
        self.bindings = BindingIndex()
        self.tenants = TenantIndex(EndpointRule(None, "cluster.local"))
        self.jitter = Jitter(0.5)
        self.sync = WatchSync(self.client, self.bindings, self.tenants, self.clock, RESYNC,
                              random=self.jitter)
        # RBAC as in production: Secrets may only be read by name.
        self.fake.grant_only(ROLE)
        self.addCleanup(self.fake.shutdown)

    def pump(self) -> None:
        # One flush moves the bytes of the connections open when it starts;
        # a request made in reaction (the watch after a list) needs another.
        for _ in range(12):
            self.stub.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()

    def start(self) -> None:
        self.sync.startService()
        self.pump()
        self.assertTrue(self.sync.ready)

    def stop(self) -> None:
        stopped = self.sync.stopService()
        self.pump()
        self.successResultOf(stopped)
        self.assertEqual(self.fake.open_watches, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def lists(self, path: str) -> list[dict[str, str]]:
        return [r.query for r in self.fake.requests
                if r.path == path.split("?")[0] and r.query.get("watch") != "1"]

    def watches(self, path: str) -> list[dict[str, str]]:
        return [r.query for r in self.fake.requests
                if r.path == path.split("?")[0] and r.query.get("watch") == "1"]

    def gets(self, ns: str = "tenant-1", name: str = "storage-env") -> int:
        return sum(1 for r in self.fake.requests
                   if r.path == f"/api/v1/namespaces/{ns}/secrets/{name}")

    def assert_secrets_only_got(self) -> None:
        used = {verb for group, resource, verb in self.fake.used_permissions
                if (group, resource) == ("", "secrets")}
        self.assertEqual(used, {"get"})
        self.assertFalse([r for r in self.fake.requests if r.path.endswith("/secrets")])

    def granted(self, ns: str = "tenant-1", sa: str = "photo-sa") -> tuple[str, ...] | None:
        grant = self.bindings.lookup(ns, "apps", sa)
        return None if grant is None else grant.policies

    def populate(self) -> None:
        self.fake.add_policybinding("tenant-1", "keep", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["readonly"])
        self.fake.add_policybinding("tenant-1", "doomed", app_namespace="apps",
                                    serviceaccount="other-sa", policies=["readwrite"])
        self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_1)
        self.fake.add_tenant("tenant-1", "storage", configuration_secret="storage-env")

    def secret_key(self, ns: str = "tenant-1") -> str:
        return self.tenants.endpoint(ns).credentials.secret_key


# -- list, then watch ---------------------------------------------------------------------


class ListThenWatchTests(InMemory):
    def test_lists_then_watches_from_the_list_version_and_becomes_ready(self) -> None:
        self.populate()
        self.assertFalse(self.sync.ready)
        self.sync.startService()
        self.pump()
        self.assertTrue(self.sync.ready)
        self.assertEqual(self.granted(), ("readonly",))
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.assertEqual(self.sync.synced_at, {"bindings": T0, "tenants": T0})
        [watch] = self.watches(BINDINGS_PATH)
        self.assertEqual(watch, {"watch": "1", "allowWatchBookmarks": "true",
                                 "timeoutSeconds": str(WATCH_SECONDS),
                                 "resourceVersion": str(self.fake.resource_version)})
        # One watch each for bindings and tenants; the tenant's Secret is
        # read once, by name.
        self.assertEqual(self.fake.open_watches, 2)
        self.assertEqual(self.gets(), 1)
        self.assertEqual(self.sync.secrets(), {("tenant-1", "storage"): "storage-env"})
        self.assert_secrets_only_got()
        self.stop()

    def test_added_modified_deleted_reach_the_index_without_a_list(self) -> None:
        self.populate()
        self.start()
        lists = len(self.lists(BINDINGS_PATH))

        self.fake.add_policybinding("tenant-1", "new", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.pump()
        self.assertEqual(self.granted(), ("photos", "readonly"))

        # MODIFIED: the binding moves to another ServiceAccount.
        self.fake.update_policybinding("tenant-1", "new", serviceaccount="moved-sa")
        self.pump()
        self.assertEqual(self.granted(), ("readonly",))
        self.assertEqual(self.granted(sa="moved-sa"), ("photos",))

        self.fake.delete_policybinding("tenant-1", "doomed")
        self.pump()
        self.assertIsNone(self.granted(sa="other-sa"))

        # All of it from the stream: no time passed, no list was made.
        self.assertEqual(self.clock.seconds(), T0)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), lists)
        self.assertEqual(self.sync.binding_watch.resource_version,
                         str(self.fake.resource_version))
        self.stop()

    def test_bookmark_advances_the_version_the_next_watch_starts_from(self) -> None:
        self.populate()
        self.start()
        before = self.sync.binding_watch.resource_version
        # A change elsewhere moves the server's version; the bindings stream
        # hears of it only through the bookmark.
        self.fake.add_tenant("tenant-2", "archive", configuration_secret="archive-env")
        self.fake.send_bookmark()
        self.pump()
        latest = str(self.fake.resource_version)
        self.assertNotEqual(before, latest)
        self.assertEqual(self.sync.binding_watch.resource_version, latest)
        self.clock.advance(10)
        self.fake.end_watches()  # as at timeoutSeconds
        self.pump()
        self.assertEqual(self.watches(BINDINGS_PATH)[-1]["resourceVersion"], latest)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1, "a clean end is resumed, not re-listed")
        self.stop()

    def test_clean_end_is_resumed_from_the_last_version(self) -> None:
        self.populate()
        self.start()
        self.fake.add_policybinding("tenant-1", "b2", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.pump()
        seen = self.sync.binding_watch.resource_version
        self.fake.end_watches()
        self.pump()
        self.assertEqual(self.watches(BINDINGS_PATH)[-1]["resourceVersion"], seen)
        self.fake.delete_policybinding("tenant-1", "b2")
        self.pump()
        self.assertEqual(self.granted(), ("readonly",))
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1)
        self.stop()

    def test_watch_ended_at_once_with_nothing_backs_off(self) -> None:
        self.start()
        watches = len(self.watches(BINDINGS_PATH))
        self.fake.end_watches()  # at once, nothing delivered
        self.pump()
        self.assertEqual(len(self.watches(BINDINGS_PATH)), watches, "not asked again at once")
        self.advance(0.25)  # 0.5 (jitter) * 0.5 s
        self.assertEqual(len(self.watches(BINDINGS_PATH)), watches + 1)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1, "its version is still good")
        self.stop()


# -- starting over --------------------------------------------------------------------------


class RelistTests(InMemory):
    def test_410_after_compaction_relists_at_once(self) -> None:
        self.populate()
        self.start()
        old = self.sync.binding_watch.resource_version
        self.clock.advance(10)
        self.fake.end_watches()
        # While no watch is open: changes, then the history is compacted.
        self.fake.add_policybinding("tenant-1", "while-away", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.fake.delete_policybinding("tenant-1", "doomed")
        self.fake.compact_history()
        self.pump()
        # Resumed from the old version, got 410, listed again at once.
        self.assertEqual([w["resourceVersion"] for w in self.watches(BINDINGS_PATH)[-2:]],
                         [old, str(self.fake.resource_version)])
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 2)
        self.assertEqual(self.granted(), ("photos", "readonly"))
        self.assertIsNone(self.granted(sa="other-sa"))
        self.assertEqual(self.clock.seconds(), T0 + 10)
        # And the new watch works.
        self.fake.delete_policybinding("tenant-1", "while-away")
        self.pump()
        self.assertEqual(self.granted(), ("readonly",))
        self.stop()

    def test_cut_backs_off_with_jitter_then_relists(self) -> None:
        self.populate()
        self.start()
        calls = self.jitter.calls
        self.fake.cut_watches()
        # Changes made while disconnected.
        self.fake.add_policybinding("tenant-1", "while-cut", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.fake.delete_policybinding("tenant-1", "doomed")
        self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
        self.pump()
        self.assertGreater(self.jitter.calls, calls, "the backoff drew from the injected random")
        # Backing off: the last good state is kept, nothing asked yet.
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1)
        self.assertEqual(self.granted(), ("readonly",))
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.advance(0.25 - 0.001)  # full jitter: 0.5 * min(30, 0.5 * 2**0)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1)
        self.advance(0.001)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 2)
        self.assertEqual(self.granted(), ("photos", "readonly"))
        self.assertIsNone(self.granted(sa="other-sa"))
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.assertEqual(self.fake.open_watches, 2)
        self.assertEqual(self.watches(BINDINGS_PATH)[-1]["resourceVersion"],
                         str(self.fake.resource_version))
        self.stop()

    def test_failing_list_keeps_the_last_good_state_and_retries(self) -> None:
        self.populate()
        self.start()
        self.fake.fail("/apis/sts.min.io/", "500", times=2)
        self.fake.cut_watches()
        self.fake.delete_policybinding("tenant-1", "keep")
        with Captured() as log:
            self.pump()
            for delay in (0.25, 0.5):  # 0.5 * 0.5 * 2**n: the cut, then one failed list
                self.advance(delay)
                self.assertEqual(self.granted(), ("readonly",), "last good state kept")
                self.assertEqual(self.sync.synced_at["bindings"], T0)
                self.assertTrue(self.sync.ready)
            self.assertEqual(len(self.lists(BINDINGS_PATH)), 3)
            self.advance(1.0 - 0.001)
            self.assertEqual(len(self.lists(BINDINGS_PATH)), 3)
            self.advance(0.001)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 4)
        self.assertIsNone(self.granted())
        self.assertEqual(self.sync.synced_at["bindings"], T0 + 1.75)
        self.assertEqual(self.fake.open_watches, 2)
        self.assertIn("list PolicyBindings: HTTP 500", log.text())
        self.assertIn("keeping the last good state", log.text())
        self.stop()

    def test_not_ready_until_both_listed(self) -> None:
        self.populate()
        self.fake.fail(TENANTS_PATH, "500", times=1)
        with Captured() as log:
            self.sync.startService()
            self.pump()
        self.assertFalse(self.sync.ready)
        # Nothing was listed: no "last good state" to keep, and the log says so.
        [failed] = [formatEvent(e) for e in log.events if "list Tenants" in formatEvent(e)]
        self.assertIn("nothing listed yet (not ready)", failed)
        self.assertNotIn("last good state", failed)
        self.assertTrue(self.sync.binding_watch.listed)
        self.advance(0.25)
        self.assertTrue(self.sync.ready)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.stop()

    def test_safety_net_relists_every_resync_seconds(self) -> None:
        self.populate()
        self.start()
        # The watch stalls silently: the server stops sending on it.
        for w in list(self.fake._watches):
            w.send = lambda *args: None  # type: ignore[method-assign]
        self.fake.add_policybinding("tenant-1", "unseen", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.advance(RESYNC - 0.001)
        self.assertEqual(self.granted(), ("readonly",))
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 1)
        self.advance(0.001)
        self.assertEqual(self.granted(), ("photos", "readonly"))
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 2)
        # The watch was restarted from the new list's version, the old one closed.
        self.assertEqual(self.watches(BINDINGS_PATH)[-1]["resourceVersion"],
                         str(self.fake.resource_version))
        self.assertEqual(self.fake.open_watches, 2)
        self.fake.delete_policybinding("tenant-1", "unseen")
        self.pump()
        self.assertEqual(self.granted(), ("readonly",))
        self.advance(RESYNC)
        self.assertEqual(len(self.lists(BINDINGS_PATH)), 3)
        self.assertEqual(len(self.lists(TENANTS_PATH)), 3)
        self.assertEqual(self.sync.synced_at, {"bindings": T0 + 2 * RESYNC,
                                               "tenants": T0 + 2 * RESYNC})
        self.stop()

    def test_binding_turned_malformed_is_dropped(self) -> None:
        self.populate()
        self.start()
        # Through the fake's own object store, so the stream carries it.
        self.fake._put("policybindings", "tenant-1", "keep", {"spec": {"application": "bad"}},
                       create=False)
        self.pump()
        self.assertIsNone(self.granted())
        self.assertEqual(len(self.bindings), 1)
        self.stop()

    def test_exception_in_a_handler_is_logged_and_the_loop_goes_on(self) -> None:
        class Flaky(BindingIndex):
            fail = True

            def apply(self, event: str, binding: Binding) -> None:
                if self.fail:
                    self.fail = False
                    raise ZeroDivisionError("boom")
                super().apply(event, binding)

        self.bindings = Flaky()
        self.sync = WatchSync(self.client, self.bindings, self.tenants, self.clock, RESYNC,
                              random=self.jitter)
        self.populate()
        self.start()
        self.fake.add_policybinding("tenant-1", "new", app_namespace="apps",
                                    serviceaccount="photo-sa", policies=["photos"])
        self.pump()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.granted(), ("readonly",))
        self.advance(0.25)  # backoff, then a list brings it in
        self.assertEqual(self.granted(), ("photos", "readonly"))
        self.stop()


# -- tenants and their Secrets ------------------------------------------------------------


class TenantSecretTests(InMemory):
    def test_tenant_added_and_removed_starts_and_stops_reading_its_secret(self) -> None:
        self.start()
        self.assertEqual(self.sync.secrets(), {})
        self.fake.config_env_secret("tenant-2", "archive-env", "root2", PASSWORD_1)
        self.fake.add_tenant("tenant-2", "archive", configuration_secret="archive-env")
        self.pump()
        self.assertEqual(self.sync.secrets(), {("tenant-2", "archive"): "archive-env"})
        self.assertEqual(self.gets("tenant-2", "archive-env"), 1)
        endpoint = self.tenants.endpoint("tenant-2")
        self.assertEqual((endpoint.credentials.access_key, endpoint.credentials.secret_key),
                         ("root2", PASSWORD_1))
        self.fake.delete_tenant("tenant-2", "archive")
        self.pump()
        self.assertEqual(self.sync.secrets(), {})
        with pytest.raises(errors.STSError) as raised:
            self.tenants.endpoint("tenant-2")
        self.assertEqual(raised.value.code, "InvalidParameterValue")
        self.assertEqual(self.clock.seconds(), T0)
        # Not read again once the tenant is gone.
        self.advance(RESYNC)
        self.assertEqual(self.gets("tenant-2", "archive-env"), 1)
        self.assertEqual(self.fake.open_watches, 2)
        self.assert_secrets_only_got()
        self.stop()

    def test_rotated_secret_is_read_again_at_the_resync(self) -> None:
        self.populate()
        self.start()
        self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
        self.pump()
        self.assertEqual(self.secret_key(), PASSWORD_1, "no watch on Secrets: not seen yet")
        self.advance(RESYNC - 0.001)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.assertEqual(self.gets(), 1)
        self.advance(0.001)  # the safety net's re-list of the Tenants
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.assertEqual(self.gets(), 2)
        self.advance(RESYNC)
        self.assertEqual(self.gets(), 3, "every resync")
        self.assert_secrets_only_got()
        self.stop()

    def test_tenant_modified_reads_its_secret_again_at_once(self) -> None:
        self.populate()
        self.start()
        self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
        self.fake.update_tenant("tenant-1", "storage", {
            "configuration": {"name": "storage-env"}, "features": {"bucketDNS": False}})
        self.pump()
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.assertEqual(self.gets(), 2)
        self.assertEqual(self.clock.seconds(), T0)
        self.stop()

    def test_deleted_secret_forgets_the_credentials(self) -> None:
        self.populate()
        with Captured() as log:
            self.start()
            self.fake.delete_secret("tenant-1", "storage-env")
            self.advance(RESYNC)
            # 404: gone, and its credentials with it (spec.env has none).
            with pytest.raises(errors.STSError) as raised:
                self.tenants.endpoint("tenant-1")
            self.assertEqual(raised.value.code, "InternalError")
            self.advance(RESYNC)  # said once, not at every read
            self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
            self.advance(RESYNC)
            self.assertEqual(self.secret_key(), PASSWORD_2)
            self.stop()
        text = log.text()
        self.assertEqual(text.count(
            "Tenant tenant-1/storage has no root credentials: Secret storage-env not found"), 1)
        for secret in (PASSWORD_1, PASSWORD_2, base64.b64encode(PASSWORD_1.encode()).decode(),
                       CLIENT):
            self.assertNotIn(secret, text)

    def test_secret_without_credentials_is_said_so(self) -> None:
        self.fake.add_secret("tenant-1", "storage-env", {"config.env": b"export OTHER=1\n"})
        self.fake.add_tenant("tenant-1", "storage", configuration_secret="storage-env")
        with Captured() as log:
            self.start()
        self.assertIn("Tenant tenant-1/storage has no root credentials: "
                      "Secret storage-env without root credentials", log.text())
        self.stop()

    def test_tenant_switching_secret_reads_the_new_one(self) -> None:
        self.populate()
        self.start()
        self.fake.config_env_secret("tenant-1", "other-env", "root", PASSWORD_2)
        self.fake.update_tenant("tenant-1", "storage", {"configuration": {"name": "other-env"}})
        self.pump()
        self.assertEqual(self.sync.secrets(), {("tenant-1", "storage"): "other-env"})
        self.assertEqual(self.secret_key(), PASSWORD_2)
        # The old Secret no longer matters, nor is it read.
        self.fake.config_env_secret("tenant-1", "storage-env", "root", "ignored-password")
        self.advance(RESYNC)
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.assertEqual(self.gets(), 1)
        self.assertEqual(self.gets(name="other-env"), 2)
        self.stop()

    def test_spec_env_change_recomputes_credentials(self) -> None:
        self.fake.add_secret("tenant-1", "storage-env",
                             {"config.env": b'export MINIO_ROOT_USER="root"\n'})
        self.fake.add_tenant("tenant-1", "storage", configuration_secret="storage-env")
        self.start()
        with pytest.raises(errors.STSError):
            self.tenants.endpoint("tenant-1")
        self.fake.update_tenant("tenant-1", "storage", {
            "configuration": {"name": "storage-env"},
            "env": [{"name": "MINIO_ROOT_PASSWORD", "value": PASSWORD_2}]})
        self.pump()
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.stop()

    def test_failed_read_keeps_the_last_credentials_and_retries(self) -> None:
        self.populate()
        self.start()
        self.fake.fail("/api/v1/", "500")
        with Captured() as log:
            self.advance(RESYNC)  # the re-read fails
            self.assertEqual(self.gets(), 2)
            self.assertEqual(self.secret_key(), PASSWORD_1)
            # Retried with a backoff (full jitter: 0.5 * 0.5 * 2**n), the
            # credentials kept all along.
            for n, delay in enumerate((0.25, 0.5, 1.0)):
                self.advance(delay - 0.001)
                self.assertEqual(self.gets(), 2 + n)
                self.advance(0.001)
                self.assertEqual(self.gets(), 3 + n)
                self.assertEqual(self.secret_key(), PASSWORD_1)
        text = log.text()
        self.assertIn("Tenant tenant-1/storage: get Secret tenant-1/storage-env: HTTP 500", text)
        self.assertIn("keeping its last root credentials, reading again in 0.25 s", text)
        self.assertNotIn("for it yet", text)
        self.fake.fail("/api/v1/", None)
        self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
        self.advance(2.0)
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.stop()

    def test_first_read_failing_says_none_are_known_and_is_retried(self) -> None:
        self.populate()
        self.fake.fail("/api/v1/", "500", times=1)
        with Captured() as log:
            self.start()  # ready: the first read has finished, if badly
        with pytest.raises(errors.STSError) as raised:
            self.tenants.endpoint("tenant-1")
        self.assertEqual(raised.value.code, "InternalError")
        text = log.text()
        self.assertIn("no root credentials for it yet, reading again in 0.25 s", text)
        self.assertNotIn("keeping", text)
        self.advance(0.25)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.stop()

    def test_a_forbidden_secret_is_kept_too(self) -> None:
        # RBAC revoked under a running daemon: a 403 is not a 404.
        self.populate()
        self.start()
        self.fake.revoke("", "secrets", "get")
        self.advance(RESYNC)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.stop()

    def test_tenant_relist_drops_vanished_tenants(self) -> None:
        self.populate()
        self.start()
        self.clock.advance(10)
        self.fake.end_watches()
        self.fake.delete_tenant("tenant-1", "storage")
        self.fake.compact_history()
        self.pump()  # resumed from a compacted version: 410, list
        self.assertEqual(self.sync.secrets(), {})
        self.assertEqual(len(self.tenants), 0)
        self.assertEqual(self.fake.open_watches, 2)
        self.stop()

    def test_stop_cancels_a_read_in_flight(self) -> None:
        self.populate()
        self.fake.fail("/api/v1/", "hang")
        self.sync.startService()
        self.pump()
        self.assertEqual(self.fake.hung, 1)
        self.assertFalse(self.sync.ready, "the first read has not finished")
        self.stop()
        self.assertEqual(self.fake.hung, 0)


class ScriptedGets:
    """
    Lists and watches through the fake; each Secret get waits for the test.
    """

    def __init__(self, client: KubernetesClient) -> None:
        self._client = client
        self.gets: list[Deferred[dict[str, Any] | None]] = []

    def list(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.list(*args, **kwargs)

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.watch(*args, **kwargs)

    async def get(self, path: str, what: str) -> dict[str, Any] | None:
        d: Deferred[dict[str, Any] | None] = Deferred()
        self.gets.append(d)
        return await d


class SecretReadOrderTests(InMemory):
    def setUp(self) -> None:
        super().setUp()
        self.scripted = ScriptedGets(self.client)
        self.sync = WatchSync(self.scripted, self.bindings, self.tenants,  # type: ignore[arg-type]
                              self.clock, RESYNC, random=self.jitter)

    def secret(self, password: str) -> dict[str, Any]:
        text = f'export MINIO_ROOT_USER="root"\nexport MINIO_ROOT_PASSWORD="{password}"\n'
        return {"metadata": {"name": "storage-env"},
                "data": {"config.env": base64.b64encode(text.encode()).decode()}}

    def test_changes_during_a_read_lead_to_one_more_read(self) -> None:
        self.populate()
        self.sync.startService()
        self.pump()
        self.assertEqual(len(self.scripted.gets), 1)
        self.assertFalse(self.sync.ready)
        # Two changes while the first read is in flight: one more read,
        # after it (its answer may predate them).
        for value in ("a", "b"):
            self.fake.update_tenant("tenant-1", "storage", {
                "configuration": {"name": "storage-env"}, "features": {"x": value}})
            self.pump()
        self.assertEqual(len(self.scripted.gets), 1)
        self.scripted.gets[0].callback(self.secret(PASSWORD_1))
        self.assertTrue(self.sync.ready)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.assertEqual(len(self.scripted.gets), 2)
        self.scripted.gets[1].callback(self.secret(PASSWORD_2))
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.assertEqual(len(self.scripted.gets), 2)
        self.stop()

    def test_answer_for_a_replaced_secret_is_ignored(self) -> None:
        self.populate()
        self.sync.startService()
        self.pump()
        old = self.scripted.gets[0]
        self.fake.update_tenant("tenant-1", "storage", {"configuration": {"name": "other-env"}})
        self.pump()
        self.assertTrue(old.called, "the old read was cancelled")
        self.assertEqual(len(self.scripted.gets), 2)
        self.scripted.gets[1].callback(self.secret(PASSWORD_2))
        self.assertEqual(self.secret_key(), PASSWORD_2)
        self.stop()


class RefresherSecretTests(InMemory):
    """
    The re-list mode (C{kubernetes.watch: false}) reads Secrets the same way.
    """

    def setUp(self) -> None:
        super().setUp()
        self.sync = Refresher(self.client, self.bindings, self.tenants,  # type: ignore[assignment]
                              self.clock, RESYNC)

    def test_get_only_rotation_404_and_failures(self) -> None:
        self.populate()
        with Captured() as log:
            self.start()
            self.assertEqual(self.secret_key(), PASSWORD_1)
            self.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_2)
            self.advance(RESYNC)
            self.assertEqual(self.secret_key(), PASSWORD_2, "rotation within resync_seconds")
            self.fake.fail("/api/v1/", "500", times=1)
            self.advance(RESYNC)
            self.assertEqual(self.secret_key(), PASSWORD_2, "kept over a failed read")
            self.fake.delete_secret("tenant-1", "storage-env")
            self.advance(RESYNC)
            with pytest.raises(errors.STSError) as raised:
                self.tenants.endpoint("tenant-1")
            self.assertEqual(raised.value.code, "InternalError")
            self.advance(RESYNC)
            self.assertEqual(self.gets(), 5)
            self.assert_secrets_only_got()
            self.stop()
        text = log.text()
        self.assertIn("Tenant tenant-1/storage: get Secret tenant-1/storage-env: HTTP 500: "
                      "fake Kubernetes: injected failure; keeping its last root credentials",
                      text)
        self.assertEqual(text.count(
            "Tenant tenant-1/storage has no root credentials: Secret storage-env not found"), 1)
        for secret in (PASSWORD_1, PASSWORD_2, CLIENT):
            self.assertNotIn(secret, text)

    def test_first_read_failing_says_none_are_known(self) -> None:
        self.populate()
        self.fake.fail("/api/v1/", "500", times=1)
        with Captured() as log:
            self.start()
        self.assertIn("no root credentials for it yet", log.text())
        self.advance(RESYNC)
        self.assertEqual(self.secret_key(), PASSWORD_1)
        self.stop()


# -- stopping -----------------------------------------------------------------------------


class StopTests(InMemory):
    def test_stop_while_watching(self) -> None:
        self.populate()
        self.start()
        self.stop()
        self.assertEqual(self.stub._agent._pumps, set(), "every connection closed")
        # Nothing runs afterwards.
        requests = len(self.fake.requests)
        self.advance(10 * RESYNC)
        self.assertEqual(len(self.fake.requests), requests)

    def test_stop_while_backing_off(self) -> None:
        self.populate()
        self.start()
        self.fake.cut_watches()
        self.pump()
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.stop()

    def test_stop_while_a_list_hangs(self) -> None:
        self.fake.fail("/apis/", "hang")
        self.sync.startService()
        self.pump()
        self.assertEqual(self.fake.hung, 2)
        self.stop()
        self.assertEqual(self.fake.hung, 0)
        self.assertFalse(self.sync.ready)

    def test_stop_over_a_real_client_that_never_connects(self) -> None:
        # As makeService wires it: the treq client of make_client on a
        # reactor whose connections never complete.
        reactor = MemoryReactorClock()
        client = kube_client("https://127.0.0.1:6443",
                             make_client(reactor, tls.VerifiedHTTPS(tls.CertificateTrust(()))),
                             reactor)
        sync = WatchSync(client, BindingIndex(), TenantIndex(EndpointRule(None, "c")),
                         reactor, RESYNC)
        sync.startService()
        self.assertEqual([c[:2] for c in reactor.tcpClients], [("127.0.0.1", 6443)] * 2)
        self.assertFalse(sync.ready)
        self.successResultOf(sync.stopService())
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])
        reactor.advance(10 * RESYNC)
        self.assertEqual(len(reactor.tcpClients), 2)


# -- over real loopback TLS ---------------------------------------------------------------


class Counting(Site):
    """
    A Site that knows how many connections are open.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open = 0

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.open += 1
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            self.open -= 1
            lost(reason)

        protocol.connectionLost = connectionLost
        return protocol


class Loopback:
    def __init__(self, directory: Path, random: Callable[[], float]) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        pki = TestPKI.create(directory)
        self.fake = FakeKubernetes(TokenIssuer(key=_rsa_key(), clock=reactor), client_token=CLIENT)
        self.site = Counting(self.fake.resource())
        self.port = reactor.listenSSL(0, self.site, pki.server_options(), interface="127.0.0.1")
        self.http = make_client(reactor, tls.VerifiedHTTPS(
            tls.trust_from_files([str(pki.ca_path)], system=False)))
        client = kube_client(f"https://127.0.0.1:{self.port.getHost().port}", self.http, reactor)
        self.bindings = BindingIndex()
        self.applied: Deferred[None] | None = None
        loopback = self

        class Notifying(BindingIndex):
            def apply(self, event: str, binding: Binding) -> None:
                super().apply(event, binding)
                if loopback.applied is not None and not loopback.applied.called:
                    loopback.applied.callback(None)

        self.bindings = Notifying()
        self.tenants = TenantIndex(EndpointRule(None, "cluster.local"))
        self.sync = WatchSync(client, self.bindings, self.tenants, reactor, RESYNC, random=random)

    async def until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await deferLater(self.reactor, 0.005, lambda: None)

    async def close(self) -> None:
        await self.sync.stopService()
        self.fake.shutdown()
        await close_connections(self.http)
        await self.until(lambda: self.site.open == 0)
        await self.port.stopListening()


class LoopbackTLSTests(TestCase):
    """L{WatchSync} against the fake Kubernetes API over real loopback TLS (the global reactor)."""

    async def test_binding_change_latency_over_loopback_tls(self) -> None:
        world = Loopback(temporary_directory(self), random=lambda: 0.1)
        try:
            world.fake.config_env_secret("tenant-1", "storage-env", "root", PASSWORD_1)
            world.fake.add_tenant("tenant-1", "storage", configuration_secret="storage-env")
            world.sync.startService()
            await world.until(lambda: world.sync.ready)
            assert world.tenants.endpoint("tenant-1").credentials.secret_key == PASSWORD_1

            async def timed(change: Callable[[], object], seen: Callable[[], bool]) -> float:
                world.applied = Deferred()
                start = time.perf_counter()
                change()
                await world.applied
                elapsed = time.perf_counter() - start
                assert seen()
                return elapsed

            added = []
            for i in range(20):
                added.append(await timed(
                    lambda i=i: world.fake.add_policybinding(
                        "tenant-1", f"b{i}", app_namespace="apps", serviceaccount=f"sa-{i}",
                        policies=["readonly"]),
                    lambda i=i: world.bindings.lookup("tenant-1", "apps", f"sa-{i}") is not None))
            moved = await timed(
                lambda: world.fake.update_policybinding("tenant-1", "b0", serviceaccount="sa-moved"),
                lambda: world.bindings.lookup("tenant-1", "apps", "sa-0") is None)
            deleted = await timed(
                lambda: world.fake.delete_policybinding("tenant-1", "b1"),
                lambda: world.bindings.lookup("tenant-1", "apps", "sa-1") is None)
            median = statistics.median(added)
            print(f"\nadd_policybinding -> BindingIndex.lookup over loopback TLS: "
                  f"median {median * 1000:.2f} ms, max {max(added) * 1000:.2f} ms (n=20); "
                  f"moved {moved * 1000:.2f} ms, deleted {deleted * 1000:.2f} ms")
            # How quick is measured (printed), not asserted: that would time the machine's
            # load. What is asserted: every change arrived as a watch event, not a re-list.
            assert world.fake.count(BINDINGS_PATH) == 2, "one list, one watch: events, not lists"
        finally:
            await world.close()
        assert world.fake.open_watches == 0

    async def test_cut_over_loopback_tls_relists_with_changes_made_meanwhile(self) -> None:
        world = Loopback(temporary_directory(self), random=lambda: 0.1)
        try:
            world.fake.add_policybinding("tenant-1", "keep", app_namespace="apps",
                                         serviceaccount="photo-sa", policies=["readonly"])
            world.sync.startService()
            await world.until(lambda: world.sync.ready and world.fake.open_watches == 2)
            world.fake.cut_watches()
            world.fake.delete_policybinding("tenant-1", "keep")
            world.fake.add_policybinding("tenant-1", "new", app_namespace="apps",
                                         serviceaccount="photo-sa", policies=["photos"])
            await world.until(lambda: world.fake.open_watches == 2
                              and world.fake.count(BINDINGS_PATH) == 4)
            grant = world.bindings.lookup("tenant-1", "apps", "photo-sa")
            assert grant is not None and grant.policies == ("photos",)
        finally:
            await world.close()


globals().update(pytest_twisted_functions(LoopbackTLSTests))
