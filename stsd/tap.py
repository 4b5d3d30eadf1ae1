# -*- test-case-name: tests.test_tap -*-
"""
C{twistd stsd}: command-line options and the wiring of the service.

Nothing here does work of its own: it reads the configuration, builds the
clients, indexes, background refresher and Klein resource, and returns
them as one C{MultiService}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, cast

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IReactorFromThreads,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from stsd import config as configuration
from stsd.auth.jwt import JWKSAuthenticator, LocallyCheckedTokenReview
from stsd.auth.keyset import KeySet
from stsd.auth.tokencache import CachingAuthenticator
from stsd.auth.tokenreview import TokenReviewAuthenticator
from stsd.core.exchange import Exchange, Limits
from stsd.core.ratelimit import Rate, RateLimiter
from stsd.http.channel import MetricsSite, STSSite
from stsd.http.resource import STSResource
from stsd.model import Authenticator
from stsd.ops import logs
from stsd.ops.certreload import CertificateLoadError, CertificateReloader
from stsd.ops.drain import GracefulStop
from stsd.ops.gctuning import freeze_heap_when_ready
from stsd.ops.metrics import (
    Metrics,
    ObservedHTTPClient,
    kubernetes_target,
    metrics_site_root,
)
from stsd.state.bindings import BindingIndex
from stsd.state.parent_users import ParentUsers
from stsd.state.refresh import Refresher
from stsd.state.serviceaccounts import ServiceAccountIndex
from stsd.state.tenants import EndpointRule, TenantIndex
from stsd.state.sync import WatchSync
from stsd.twisted_private import raise_listen_errors
from stsd.upstream import kube, tls
from stsd.upstream.http import make_client
from stsd.upstream.keepalive import KeepAliveClient
from stsd.upstream.minio import MinIOClient, ThreadedPayloadCrypto

log = Logger()

CREDENTIAL_REFRESH_SECONDS = 60.0


class StartupError(usage.UsageError):
    """
    A setting stops start-up. C{str()} is one line: the setting, then the
    cause. Under twistd it is written alone to stderr and the process exits
    1 (L{refuse}): no usage text (the command line was fine) and no
    traceback. L{Options} used directly raises it.
    """


def refuse(message: str) -> NoReturn:
    """
    Stop start-up with one line on the process's stderr and exit status 1.
    Once twistd has begun logging, C{sys.stderr} is a log observer's file:
    the line goes to the original stderr.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"stsd: {message}\n")
    stream.flush()
    raise SystemExit(1)


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Security Token Service for MinIO tenants on Kubernetes."
    optParameters = [
        ["config", "c", "/etc/stsd/stsd.yaml", "The stsd configuration file (YAML)."],
        ["log-format", None, "text",
         "Log output: text, or json (one object per line). On stdout, or appended to "
         "twistd's --logfile."],
        ["log-level", None, "info", "Least severe level logged: debug, info, warn, error."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except StartupError as e:
            if self.parent is None:  # not under twistd: the caller decides
                raise
            # twistd would print the whole usage text before the message.
            refuse(str(e))

    def postOptions(self) -> None:
        try:
            factory = logs.factory_name(self["log-format"], self["log-level"],
                                        logs.log_file(self.parent))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self.parent is not None:
            # twistd imports its log observer factory by this name once all
            # options are parsed; it overrides twistd's own --logger.
            self.parent["logger"] = factory
        # Validate everything that can be checked without the network now, so
        # that a bad configuration stops start-up with one clear line.
        try:
            self.config = configuration.load_config(self["config"])
        except configuration.ConfigError as e:
            raise StartupError(str(e)) from None
        try:
            self.kube_access = kube.load_access(self.config.kubernetes.kubeconfig)
        except kube.KubeAccessError as e:
            raise StartupError(f"kubernetes.kubeconfig: {e}") from None


def _limits(config: configuration.LimitsConfig, clock: IReactorTime) -> Limits:
    def limiter(rate: configuration.RateConfig) -> RateLimiter:
        return RateLimiter(Rate(rate.rate, rate.burst), clock, max_keys=config.max_tracked_keys)

    return Limits(
        failed_auth_per_client=limiter(config.failed_auth_per_client),
        per_serviceaccount=limiter(config.per_serviceaccount),
    )


class _Daemon(GracefulStop):
    """
    The top service: it drains the STS port on SIGTERM (L{GracefulStop}). twistd binds the ports through C{privilegedStartService}
    (before dropping privileges); a port that cannot be bound stops start-up
    with one line naming its setting, not a traceback.

    @param ports: the setting of each port number (a port also used by a
        later listener is that one's: the later bind is the one that fails).
    """

    def __init__(
        self, clock: IReactorTime, *, delay: float, grace: float, ports: dict[int, str]
    ) -> None:
        super().__init__(clock, delay=delay, grace=grace)
        self.ports = ports

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            setting = self.ports.get(int(e.port), "port")
            cause = getattr(e.socketError, "strerror", None) or str(e.socketError)
            refuse(f"{setting}: cannot listen on {e.interface}:{e.port} ({cause})")


def _listen(service: StreamServerEndpointService, parent: MultiService) -> None:
    raise_listen_errors(service)  # a port in use must stop start-up, not just log
    service.setServiceParent(parent)


class IDaemonReactor(IReactorTime, IReactorTCP, IReactorSSL, IReactorFromThreads):
    """
    What the daemon needs of its reactor: timers, the TCP and TLS listeners
    and clients, and calls back from the crypto thread pool.
    """


#: The index sync of either mode (C{kubernetes.watch}).
_Sync = Refresher | WatchSync


def makeService(options: Options, reactor: IDaemonReactor | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default  # noqa: PLC0415 - injected in tests

        # Twisted declares only the common reactor interfaces; every reactor
        # twistd installs also provides IReactorSSL and IReactorFromThreads.
        reactor = cast(IDaemonReactor, default)
    config: configuration.Config = options.config
    access: kube.KubeAccess = options.kube_access
    log.info("starting stsd with configuration {config}", config=configuration.redacted(config))
    metrics = Metrics()

    kube_http = ObservedHTTPClient(
        make_client(reactor, access.https), metrics, kubernetes_target, reactor)
    kubernetes = kube.KubernetesClient(
        access, kube_http, reactor, config.kubernetes.timeout_seconds)
    minio_http = KeepAliveClient(reactor, tls.VerifiedHTTPS(kube.tenant_trust(access, config.tenants.ca_file)),
                                 observe=metrics.observe_upstream,
                                 max_connections=config.tenants.max_connections)
    crypto_pool = _crypto_pool()
    minio = MinIOClient(minio_http, reactor, config.tenants.timeout_seconds,
                        crypto=ThreadedPayloadCrypto(reactor, crypto_pool))
    bindings = BindingIndex()
    tenants = TenantIndex(EndpointRule(config.tenants.endpoint, config.tenants.cluster_domain))
    sync: _Sync = (WatchSync if config.kubernetes.watch else Refresher)(
        kubernetes, bindings, tenants, reactor, config.kubernetes.resync_seconds)
    parent_users = serviceaccounts = None
    if config.tenants.authorization == "parent-user":
        if config.kubernetes.watch:
            # A deleted ServiceAccount's credentials are revoked with its users.
            serviceaccounts = ServiceAccountIndex(
                kubernetes, reactor, config.kubernetes.resync_seconds)
        parent_users = ParentUsers(
            bindings=bindings, tenants=tenants, minio=minio, clock=reactor,
            is_ready=lambda: sync.ready, resync_seconds=config.kubernetes.resync_seconds,
            serviceaccounts=serviceaccounts)
    keys = KeySet(kubernetes, reactor)
    # The top service: on SIGTERM it drains the STS port before the rest stops.
    top = _Daemon(reactor, delay=config.server.shutdown_delay_seconds,
                  grace=config.server.shutdown_grace_seconds,
                  ports={config.server.port: "server.port", config.metrics.port: "metrics.port"})
    readiness = top.readiness(_readiness(
        sync, config.kubernetes.resync_seconds, reactor,
        keys if config.kubernetes.token_verification == "jwks" else None))
    authenticator = _remembering(
        _authenticator(config.kubernetes, kubernetes, keys, reactor), config.kubernetes,
        reactor, metrics)
    exchange = Exchange(
        authenticator=authenticator,
        bindings=bindings,
        tenants=tenants,
        minio=minio,
        clock=reactor,
        is_ready=lambda: sync.ready,
        limits=_limits(config.limits, reactor),
        reuse_seconds=config.sts.reuse_seconds,
        metrics=metrics,
        parent_users=parent_users,
    )
    resource = STSResource(
        exchange,
        default_duration=config.sts.default_duration_seconds,
        max_duration=config.sts.max_duration_seconds,
        clock=reactor,
        is_ready=lambda: sync.ready,
        metrics=metrics,
        known_namespace=tenants.has_namespace,
        readiness=readiness,
    )
    site = STSSite(resource.resource(), reactor=reactor,
                   request_timeout=config.server.request_timeout_seconds)
    site.displayTracebacks = False

    try:
        reloader = CertificateReloader(config.server.tls_cert, config.server.tls_key, reactor)
    except CertificateLoadError as e:
        # Checked by Options already; this is the file changing in between.
        message = f"server.tls_cert: {e}"
        if options.parent is not None:
            refuse(message)
        raise StartupError(message) from None
    metrics.certificate_expiry.set_function(lambda: reloader.not_after.timestamp())
    metrics.watch_index("bindings", lambda: len(bindings))
    metrics.watch_index("tenants", lambda: len(tenants))
    for resource_name in ("bindings", "tenants"):
        metrics.watch_sync(resource_name, _age(sync, resource_name, reactor))
    metrics.ready.set_function(lambda: 1 if sync.ready else 0)

    sync.setServiceParent(top)
    if serviceaccounts is not None:
        serviceaccounts.setServiceParent(top)
    if parent_users is not None:
        parent_users.setServiceParent(top)
    _ThreadPoolService(crypto_pool).setServiceParent(top)
    if config.server.gc_tuning:
        freeze_heap_when_ready(sync, reactor).setServiceParent(top)
    keys.setServiceParent(top)
    credentials = TimerService(CREDENTIAL_REFRESH_SECONDS, _refresh_credentials, access)
    credentials.clock = reactor
    credentials.setServiceParent(top)
    reloader.setServiceParent(top)
    sts_listener = StreamServerEndpointService(SSL4ServerEndpoint(
        reactor, config.server.port, reloader.options, interface=config.server.interface,
    ), site)
    _listen(sts_listener, top)
    top.drains(sts_listener, site)
    metrics_site = MetricsSite(metrics_site_root(metrics.registry, lambda: None, readiness),
                               reactor=reactor,
                               request_timeout=config.server.request_timeout_seconds,
                               max_connections=config.metrics.max_connections)
    _listen(StreamServerEndpointService(TCP4ServerEndpoint(
        reactor, config.metrics.port, interface=config.metrics.interface), metrics_site), top)
    return top


#: Threads for MinIO's admin payload encryption: each argon2id derivation
#: takes 64 MiB for tens of milliseconds, so one at a time bounds the memory.
CRYPTO_THREADS = 1


def _crypto_pool() -> ThreadPool:
    return ThreadPool(minthreads=0, maxthreads=CRYPTO_THREADS, name="stsd-crypto")


class _ThreadPoolService(Service):
    """Starts a thread pool with the service tree and stops it with it."""

    def __init__(self, pool: ThreadPool) -> None:
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()


def _readiness(
    sync: _Sync, resync: float, clock: IReactorTime, keys: KeySet | None = None
) -> Callable[[], str | None]:
    """
    Why stsd is not ready, or None: the initial list is done, no resource's
    last sync is older than three resync periods, and (in jwks mode, given
    C{keys}) the cluster's signing keys are known.
    """

    def readiness() -> str | None:
        if not sync.ready:
            return "PolicyBindings and Tenants not listed yet"
        if keys is not None and not keys.known:
            return "the cluster's ServiceAccount signing keys not fetched yet"
        for name in ("bindings", "tenants"):
            if clock.seconds() - sync.synced_at[name] > 3 * resync:
                return f"{name} not synced for more than {3 * resync:g} s"
        return None

    return readiness


def _authenticator(
    config: configuration.KubernetesConfig, kubernetes: kube.KubernetesClient, keys: KeySet,
    clock: IReactorTime,
) -> JWKSAuthenticator | LocallyCheckedTokenReview:
    if config.token_verification == "jwks":
        return JWKSAuthenticator(keys, config.audience, clock)
    # TokenReview, but forged tokens are refused locally once the keys are known.
    return LocallyCheckedTokenReview(
        TokenReviewAuthenticator(kubernetes, config.audience), keys, clock)


def _remembering(
    authenticator: Authenticator, config: configuration.KubernetesConfig, clock: IReactorTime,
    metrics: Metrics,
) -> Authenticator:
    """
    TokenReviews are remembered for C{token_cache_seconds}. In jwks mode a
    token is checked in memory, in about the time the cache itself costs a
    token it has not seen; most tokens are new (a pod's token rotates before
    it asks again), so nothing is remembered there.
    """
    if config.token_verification != "tokenreview":
        return authenticator
    cached = CachingAuthenticator(authenticator, clock, ttl=config.token_cache_seconds)
    metrics.watch_cache("tokenreview", lambda: (cached.hits, cached.misses))
    return cached


def _age(sync: _Sync, name: str, clock: IReactorTime) -> Callable[[], float]:
    def age() -> float:
        synced = sync.synced_at.get(name)
        return float("nan") if synced is None else clock.seconds() - synced

    return age


def _refresh_credentials(access: kube.KubeAccess) -> None:
    # A TimerService stops for good on an exception: log and carry on.
    try:
        access.refresh()
    except Exception:
        log.failure("re-reading the Kubernetes credentials failed; keeping the old ones")
