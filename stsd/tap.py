# -*- test-case-name: tests.test_tap -*-
"""
C{twistd stsd}: command-line options and the wiring of the service.

Nothing here does work of its own: it reads the configuration, builds the
clients, indexes, background refresher and Klein resource, and returns
them as one L{MultiService}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from stsd import config as configuration
from stsd import kube, tls
from stsd.bindings import BindingIndex
from stsd.exchange import Exchange
from stsd.identity import TokenReviewAuthenticator
from stsd.minio_client import MinIOClient
from stsd.refresh import Refresher
from stsd.server import STSResource, STSSite
from stsd.tenants import EndpointRule, TenantIndex
from stsd.upstream import make_client

log = Logger()

CREDENTIAL_REFRESH_SECONDS = 60.0


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Security Token Service for MinIO tenants on Kubernetes."
    optParameters = [
        ["config", "c", "/etc/stsd/stsd.yaml", "The stsd configuration file (YAML)."],
    ]

    def postOptions(self) -> None:
        # Validate everything that can be checked without the network now, so
        # that a bad configuration stops start-up with one clear line.
        try:
            self.config = configuration.load_config(self["config"])
        except configuration.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self.kube_access = kube.load_access(self.config.kubernetes.kubeconfig)
        except kube.KubeAccessError as e:
            raise usage.UsageError(f"kubernetes.kubeconfig: {e}") from None


def _tenant_trust(config: configuration.Config, access: kube.KubeAccess) -> tls.CertificateTrust:
    """
    Tenants are verified against the system store, the cluster's CA (the
    operator's auto-certificates are signed by it) and C{tenants.ca_file}.
    """
    paths = []
    if config.kubernetes.kubeconfig is None and access.configuration.ssl_ca_cert:
        paths.append(access.configuration.ssl_ca_cert)
    if config.tenants.ca_file:
        paths.append(config.tenants.ca_file)
    return tls.trust_from_files(paths, system=True)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: PLC0415 - injected in tests
    config: configuration.Config = options.config
    access: kube.KubeAccess = options.kube_access
    log.info("starting stsd with configuration {config}", config=configuration.redacted(config))

    kubernetes = kube.KubernetesClient(
        access, make_client(reactor, access.https), reactor, config.kubernetes.timeout_seconds
    )
    minio = MinIOClient(
        make_client(reactor, tls.VerifiedHTTPS(_tenant_trust(config, access))),
        reactor,
        config.tenants.timeout_seconds,
    )
    bindings = BindingIndex()
    tenants = TenantIndex(EndpointRule(config.tenants.endpoint, config.tenants.cluster_domain))
    refresher = Refresher(kubernetes, bindings, tenants, reactor, config.kubernetes.resync_seconds)
    exchange = Exchange(
        authenticator=TokenReviewAuthenticator(kubernetes, config.kubernetes.audience),
        bindings=bindings,
        tenants=tenants,
        minio=minio,
        clock=reactor,
        is_ready=lambda: refresher.ready,
    )
    resource = STSResource(
        exchange,
        default_duration=config.sts.default_duration_seconds,
        max_duration=config.sts.max_duration_seconds,
        clock=reactor,
        is_ready=lambda: refresher.ready,
    )
    site = STSSite(resource.resource(), reactor=reactor)
    site.displayTracebacks = False
    site.timeout = 60  # idle connections are closed after a minute

    top = MultiService()
    refresher.setServiceParent(top)
    credentials = TimerService(CREDENTIAL_REFRESH_SECONDS, _refresh_credentials, access)
    credentials.clock = reactor
    credentials.setServiceParent(top)
    endpoint = SSL4ServerEndpoint(
        reactor,
        config.server.port,
        tls.server_options(config.server.tls_cert, config.server.tls_key),
        interface=config.server.interface,
    )
    server = StreamServerEndpointService(endpoint, site)
    server._raiseSynchronously = True  # a port in use must stop start-up, not just log
    server.setServiceParent(top)
    return top


def _refresh_credentials(access: kube.KubeAccess) -> None:
    # A TimerService stops for good on an exception: log and carry on.
    try:
        access.refresh()
    except Exception:
        log.failure("re-reading the Kubernetes credentials failed; keeping the old ones")
