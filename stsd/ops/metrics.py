# -*- test-case-name: tests.test_observability,tests.test_drain -*-
"""
Prometheus metrics of stsd, in a registry of their own (no global state),
exposed by C{prometheus_client}'s own encoder on the plain-HTTP metrics
port, next to C{/healthz} and C{/readyz} for kubelet probes.

Label values are bounded: Codes and targets come from fixed sets, and a
tenant namespace is used as a label only when a Tenant exists there (any
other path segment is reported as C{other}), so a caller cannot grow the
series count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from stsd.upstream.http import TreqHeaders, TreqResponse

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """
    The collectors stsd updates. Gauges that mirror state (index sizes,
    sync age, certificate expiry) read it when scraped, via C{watch_*}.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "stsd_requests", "STS requests answered, by outcome Code and tenant namespace.",
            ["code", "namespace"], registry=r)
        self.request_seconds = Histogram(
            "stsd_request_duration_seconds", "Time to answer an STS request.",
            ["outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream = Counter(
            "stsd_upstream_requests", "Calls to Kubernetes and MinIO, by target and result.",
            ["target", "result"], registry=r)
        self.upstream_seconds = Histogram(
            "stsd_upstream_duration_seconds", "Duration of calls to Kubernetes and MinIO.",
            ["target"], buckets=_LATENCY_BUCKETS, registry=r)
        self._cache_counts: dict[tuple[str, str], int] = {}
        self._cache_sources: dict[str, Callable[[], tuple[int, int]]] = {}
        r.register(_CacheCollector(self))
        self.rate_limited = Counter(
            "stsd_ratelimit_rejections", "Requests refused with Throttling, by limit.",
            ["limit"], registry=r)
        self.skipped_policies = Counter(
            "stsd_skipped_policies", "Bound policies skipped: missing or unparsable in MinIO.",
            ["namespace"], registry=r)
        self.index_size = Gauge(
            "stsd_index_objects", "Objects held in memory, by resource.", ["resource"],
            registry=r)
        self.sync_age = Gauge(
            "stsd_seconds_since_last_sync",
            "Seconds since the last successful list or watch event, by resource.",
            ["resource"], registry=r)
        self.certificate_expiry = Gauge(
            "stsd_tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (Unix time).", registry=r)
        self.ready = Gauge("stsd_ready", "1 when stsd answers STS requests.", registry=r)

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() validates and locks on every call; the label sets are
        # bounded, so their children are kept.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_upstream(self, target: str, seconds: float, ok: bool) -> None:
        self._child(self.upstream, target, "ok" if ok else "error").inc()
        self._child(self.upstream_seconds, target).observe(seconds)

    def observe_request(self, code: str, namespace: str, seconds: float, ok: bool) -> None:
        self._child(self.requests, code, namespace).inc()
        self._child(self.request_seconds, "success" if ok else "error").observe(seconds)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        key = (cache, "hit" if hit else "miss")
        self._cache_counts[key] = self._cache_counts.get(key, 0) + 1

    def watch_cache(self, cache: str, counts: Callable[[], tuple[int, int]]) -> None:
        """
        A cache that counts its own (hits, misses), read when scraped.
        """
        self._cache_sources[cache] = counts

    def cache_counts(self) -> dict[tuple[str, str], int]:
        counts = dict(self._cache_counts)
        for cache, source in self._cache_sources.items():
            hits, misses = source()
            counts[(cache, "hit")] = hits
            counts[(cache, "miss")] = misses
        return counts

    def watch_index(self, resource: str, size: Callable[[], int]) -> None:
        self.index_size.labels(resource).set_function(size)

    def watch_sync(self, resource: str, age: Callable[[], float]) -> None:
        self.sync_age.labels(resource).set_function(age)


class _CacheCollector:
    """
    C{stsd_cache_requests_total}: counted here for some caches, by the
    caches themselves for others (the TokenReview cache).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> list[CounterMetricFamily]:
        family = self._family()
        for (cache, result), count in sorted(self._metrics.cache_counts().items()):
            family.add_metric([cache, result], count)
        return [family]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "stsd_cache_requests", "Cache lookups, by cache and hit or miss.",
            labels=["cache", "result"])


class MetricsResource(Resource):
    """
    C{/metrics} in the format the scraper asks for (text or OpenMetrics).
    Encoding a registry this size takes well under a millisecond, so it
    runs on the reactor thread instead of a WSGI thread pool.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self._registry)


def answer_probe(request: Request, problem: str | None, healthy: bytes = b"ok\n") -> bytes:
    """
    A probe's plain-text answer, on either port: C{healthy}, or a 503
    saying what is wrong.

    @param problem: C{None} when all is well, else why not.
    """
    request.setHeader(b"content-type", b"text/plain")
    if problem is None:
        return healthy
    request.setResponseCode(503)
    return f"not ready: {problem}\n".encode()


class _Probe(Resource):
    isLeaf = True

    def __init__(self, check: Callable[[], str | None]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> bytes:
        return answer_probe(request, self._check())


def metrics_site_root(
    registry: CollectorRegistry, live: Callable[[], str | None], ready: Callable[[], str | None]
) -> Resource:
    """
    The metrics port: C{/metrics}, C{/healthz}, C{/readyz}.

    @param live: C{None} when alive, else why not.
    @param ready: C{None} when ready, else why not.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", _Probe(live))
    root.putChild(b"readyz", _Probe(ready))
    return root


def kubernetes_target(method: str, url: str) -> str:
    path, _, query = url.partition("?")
    if path.endswith("/tokenreviews"):
        return "tokenreview"
    if "/.well-known/" in path or path.endswith("/jwks"):
        return "jwks"
    if "watch=1" in query or "watch=true" in query:
        return "watch"
    return "get" if "/secrets/" in path else "list"


class ObservedHTTPClient:
    """
    A treq client that counts and times every call by target, without the
    clients knowing: C{request} is all stsd's clients use. The time is to
    the response headers (for a watch, the stream's start).
    """

    def __init__(
        self, inner: HTTPClient, metrics: Metrics, classify: Callable[[str, str], str],
        clock: IReactorTime,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._classify = classify
        self._clock = clock

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: TreqHeaders | None = None,
        data: bytes | None = None,
        allow_redirects: bool = True,
        unbuffered: bool = False,
    ) -> Deferred[TreqResponse]:
        target = self._classify(method, url)
        started = self._clock.seconds()

        def done(result: TreqResponse | Failure) -> TreqResponse | Failure:
            ok = not isinstance(result, Failure) and (
                result.code < 400 or result.code == 404)
            self._metrics.observe_upstream(target, self._clock.seconds() - started, ok)
            return result

        requested = self._inner.request(
            method, url, headers=headers, data=data, allow_redirects=allow_redirects,
            unbuffered=unbuffered)
        return requested.addBoth(done)
