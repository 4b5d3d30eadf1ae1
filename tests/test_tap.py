"""
Tests for L{stsd.tap}: option parsing and the wiring of the service, on a
L{MemoryReactorClock} (no socket is opened, nothing is connected), and the
twistd plugin that points at it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from stsd import tap
from stsd.state.refresh import Refresher
from stsd.state.sync import WatchSync
from stsd.testing.pki import TestPKI
from tests._trial import cases, expand, temporary_directory

KUBE_TOKEN = "kube-client-token-for-tests"


@functools.cache
def shared_pki() -> TestPKI:
    """One CA for the module's tests (they only read it), removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="stsd-tap-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    return TestPKI.create(directory)


def write_kubeconfig(path: Path, pki: TestPKI, **cluster: Any) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": "https://127.0.0.1:6443",
            "certificate-authority": str(pki.ca_path),
            **cluster,
        }}],
        "users": [{"name": "stsd", "user": {"token": KUBE_TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "stsd"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(document))
    return path


def config_document(pki: TestPKI, kubeconfig: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "server": {"interface": "127.0.0.1", "port": 14223,
                   "tls_cert": str(pki.cert_path), "tls_key": str(pki.key_path)},
        "kubernetes": {"kubeconfig": str(kubeconfig), "timeout_seconds": 3,
                       "resync_seconds": 30},
        "tenants": {"endpoint": "https://minio.test/{namespace}", "ca_file": str(pki.ca_path)},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return document


def write_config(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "stsd.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def parse(config: Path) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["--config", str(config)])
    return options


def usage_error(config: Path) -> str:
    with pytest.raises(usage.UsageError) as raised:
        parse(config)
    message = str(raised.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


@expand
class TapTests(SynchronousTestCase):
    def test_options_valid(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        options = parse(write_config(tmp_path, config_document(pki, kubeconfig)))
        assert options.config.server.port == 14223
        assert options.config.kubernetes.timeout_seconds == 3.0
        assert options.kube_access.host == "https://127.0.0.1:6443"
        assert options.kube_access.authorization == f"Bearer {KUBE_TOKEN}"

    @cases("watch, sync_type, calls", [
        # bindings, tenants and (parent-user mode, the default) ServiceAccounts
        # listed at once, plus the signing keys' discovery
        (True, WatchSync, 4),
        # the refresher lists bindings first, then tenants; plus discovery
        (False, Refresher, 2),
    ])
    def test_make_service_start_and_stop(self,
                                         watch: bool, sync_type: type, calls: int) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        options = parse(write_config(tmp_path, config_document(
            pki, kubeconfig, kubernetes={"watch": watch})))
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        assert isinstance(service, MultiService)
        assert reactor.sslServers == [] and reactor.tcpClients == []

        service.startService()
        try:
            assert service.running
            # One TLS listener, on the configured port and interface.
            [(port, _factory, context_factory, _backlog, interface)] = reactor.sslServers
            assert (port, interface) == (14223, "127.0.0.1")
            assert context_factory.getContext() is not None
            # The refresher issued its first list at once: a connection attempt
            # to the API server from the kubeconfig.
            [sync] = [s for s in service if isinstance(s, sync_type)]
            assert sync.ready is False
            assert [(host, port) for host, port, *_ in reactor.tcpClients] == (
                [("127.0.0.1", 6443)] * calls)
            assert reactor.sslClients == []  # TLS is layered on the TCP connection
            listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
            assert listeners and all(s.running for s in listeners)
        finally:
            stopped = service.stopService()
        assert not service.running
        # Stopping does not wait out the refresh in flight (its connection never
        # completes here; kubernetes.timeout_seconds per call would be the bound):
        # it is given up, and no further call is started.
        results: list[object] = []
        stopped.addBoth(results.append)
        # The STS port is drained first (tests/test_drain.py): it keeps listening
        # for shutdown_delay_seconds; with nothing in flight, that is all.
        assert results == []
        reactor.advance(options.config.server.shutdown_delay_seconds)
        assert len(results) == 1 and not isinstance(results[0], Failure), results
        # (the sync goes on while the port drains: it may have called again)
        made = len(reactor.tcpClients)
        assert made >= calls
        assert [c for c in reactor.getDelayedCalls() if c.active()] == []
        reactor.advance(60)
        assert len(reactor.tcpClients) == made

    def test_missing_config_file(self) -> None:
        tmp_path = temporary_directory(self)
        missing = tmp_path / "nope.yaml"
        message = usage_error(missing)
        assert message.startswith(f"{missing}: cannot read config file")

    def test_unknown_key(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        document = config_document(pki, kubeconfig, kubernetes={"timeout": 3})
        message = usage_error(write_config(tmp_path, document))
        assert message.startswith("kubernetes.timeout: unknown key")

    @cases("port", [0, 65536, -1, "4223", True, None])
    def test_bad_port(self, port: object) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        document = config_document(pki, kubeconfig, server={"port": port})
        message = usage_error(write_config(tmp_path, document))
        assert message.startswith("server.port: expected an integer between 1 and 65535")

    def test_bad_timeout(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        document = config_document(pki, kubeconfig, kubernetes={"timeout_seconds": -1})
        message = usage_error(write_config(tmp_path, document))
        assert message.startswith("kubernetes.timeout_seconds: must be a positive number")

    def test_unreadable_certificate(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        document = config_document(pki, kubeconfig, server={"tls_cert": str(tmp_path / "none.crt")})
        message = usage_error(write_config(tmp_path, document))
        assert message.startswith("server.tls_cert: cannot read")

    def test_kubeconfig_skipping_tls_verification(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        insecure = write_kubeconfig(tmp_path / "insecure", pki, **{"insecure-skip-tls-verify": True})
        message = usage_error(write_config(tmp_path, config_document(pki, insecure)))
        assert message.startswith("kubernetes.kubeconfig: ")
        assert "insecure-skip-tls-verify" in message
        assert KUBE_TOKEN not in message

    def test_kubeconfig_unusable(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        broken = tmp_path / "broken"
        broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
        message = usage_error(write_config(tmp_path, config_document(pki, broken)))
        assert message.startswith("kubernetes.kubeconfig: cannot load Kubernetes credentials")

    def test_plugin_is_found(self) -> None:
        from twisted.plugin import getPlugins

        import twisted.plugins

        here = str(Path(__file__).resolve().parents[1] / "twisted" / "plugins")
        assert here in [os.path.realpath(p) for p in twisted.plugins.__path__], (
            "the checkout's twisted/plugins is not on twisted.plugins.__path__; "
        "is the repository root on sys.path?"
        )
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "stsd"]
        assert len(makers) == 1
        [maker] = makers
        assert maker.options is tap.Options
        assert maker.makeService is tap.makeService

    def test_readiness_reasons(self) -> None:
        from types import SimpleNamespace

        from twisted.internet.task import Clock

        clock = Clock()
        sync = SimpleNamespace(ready=False, synced_at={})
        keys = SimpleNamespace(known=False)
        readiness = tap._readiness(sync, 10, clock, keys)  # type: ignore[arg-type]
        assert readiness() == "PolicyBindings and Tenants not listed yet"
        sync.ready, sync.synced_at = True, {"bindings": 0.0, "tenants": 0.0}
        assert readiness() == "the cluster's ServiceAccount signing keys not fetched yet"
        keys.known = True
        assert readiness() is None
        clock.advance(31)
        assert readiness() == "bindings not synced for more than 30 s"
        assert tap._readiness(sync, 100, clock)() is None  # tokenreview mode: keys optional

    def test_token_cache_only_in_tokenreview_mode(self) -> None:
        from twisted.internet.task import Clock

        from stsd.config import KubernetesConfig
        from stsd.ops.metrics import Metrics
        from stsd.tap import _remembering
        from stsd.auth.tokencache import CachingAuthenticator

        inner = object()
        cached = _remembering(inner, KubernetesConfig(token_verification="tokenreview",
                                                      token_cache_seconds=7), Clock(), Metrics())
        assert isinstance(cached, CachingAuthenticator) and cached._ttl == 7
        assert _remembering(inner, KubernetesConfig(token_verification="jwks"), Clock(),
                            Metrics()) is inner

    def test_make_service_wires_the_drain_and_the_bounds(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        from stsd.ops.drain import GracefulStop
        from stsd.http.channel import MetricsSite, STSSite

        made: list[dict[str, Any]] = []
        real = tap.KeepAliveClient

        def keepalive(*args: Any, **kwargs: Any) -> Any:
            made.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(tap, "KeepAliveClient", keepalive)
        options = parse(write_config(tmp_path, config_document(
            pki, kubeconfig,
            server={"request_timeout_seconds": 7, "shutdown_delay_seconds": 3,
                    "shutdown_grace_seconds": 11},
            tenants={"max_connections": 9}, metrics={"max_connections": 5, "port": 19090})))
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        assert isinstance(service, GracefulStop)
        assert (service.delay, service.grace) == (3, 11)
        assert [kwargs["max_connections"] for kwargs in made] == [9]
        service.startService()
        try:
            [metrics_site] = [f for port, f, *_ in reactor.tcpServers if port == 19090]
            assert isinstance(metrics_site, MetricsSite)
            assert (metrics_site.request_timeout, metrics_site.max_connections) == (7, 5)
            [(_, sts_site, *_)] = reactor.sslServers
            assert isinstance(sts_site, STSSite) and sts_site.max_connections is None
            assert not sts_site.draining
        finally:
            service.stopService()
        assert sts_site.draining, "the STS site drains from the stop on"
        reactor.advance(3)

    @cases("authorization, parent_mode", [
        (None, True),  # the default
        ("parent-user", True),
        ("session-policy", False),
    ])
    def test_authorization_mode_wiring(self,
                                       authorization: str | None, parent_mode: bool) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", shared_pki())
        from stsd.state.parent_users import ParentUsers

        tenants = {} if authorization is None else {"authorization": authorization}
        options = parse(write_config(tmp_path, config_document(pki, kubeconfig, tenants=tenants)))
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        reconcilers = [s for s in service if isinstance(s, ParentUsers)]
        assert len(reconcilers) == (1 if parent_mode else 0)
        service.startService()
        service.stopService()
        reactor.advance(60)  # past the drain's delay and grace
        assert not any(s.running for s in service)
