# -*- test-case-name: tests.test_upstream -*-
"""
Calls to upstream HTTP services (Kubernetes, MinIO) with treq: a bounded
persistent connection pool per client and a deadline on the whole call.

treq's own C{timeout=} covers only the wait for response headers; a
server that sends headers and then trickles the body would hold a request
forever, so the deadline here covers reading the body too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol as Interface
from weakref import WeakKeyDictionary

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IPolicyForHTTPS

from stsd.twisted_private import quiet_pool

MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class UpstreamError(Exception):
    """
    An upstream call failed: no answer in time, a connection error, or a
    response too large. The message names the target, never a credential.
    """


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Interface):
    """
    What the MinIO client needs: one request, its whole answer within
    C{timeout}, L{UpstreamError} otherwise. C{metric} names the call in the
    upstream metrics (a transport without metrics ignores it).
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        target: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        metric: str = "",
    ) -> Deferred[Response]: ...


class TreqTransport:
    """L{Transport} over a treq client (C{StubTreq} in memory)."""

    def __init__(self, client: HTTPClient, clock: IReactorTime) -> None:
        self._client = client
        self._clock = clock

    def request(
        self,
        method: str,
        url: str,
        *,
        target: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        metric: str = "",
    ) -> Deferred[Response]:
        return Deferred.fromCoroutine(request(
            self._client, self._clock, method, url, target=target, timeout=timeout,
            headers=headers, data=data))


# Idle connections kept per upstream host: enough for the concurrency of a
# busy replica, so that a burst does not pay a TLS handshake per call.
PERSISTENT_PER_HOST = 64


def make_client(
    reactor: object, policy: IPolicyForHTTPS, *, per_host: int = PERSISTENT_PER_HOST
) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    quiet_pool(pool)  # no "Starting factory" log line per connection
    pool.retryAutomatically = False  # never replay a POST (TokenReview, AssumeRole) silently
    client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    _pools[client] = pool
    return client


# The pool of each client of make_client (treq keeps it in private attributes).
_pools: WeakKeyDictionary[HTTPClient, HTTPConnectionPool] = WeakKeyDictionary()


def close_connections(client: HTTPClient) -> Deferred[None]:
    """Close the cached connections of a client of L{make_client} (shutdown, tests)."""
    return _pools[client].closeCachedConnections()


async def request(
    client: HTTPClient,
    clock: IReactorTime,
    method: str,
    url: str,
    *,
    target: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> Response:
    """
    Perform one HTTP request and read its whole body within C{timeout}
    seconds of C{clock}.

    @param target: a short name of what is called, for error messages.
    @raise UpstreamError: on timeout or connection failure.
    """

    async def call() -> Response:
        response = await client.request(
            method, url, headers={k: [v] for k, v in (headers or {}).items()}, data=data,
            # Never follow a redirect: a TokenReview body carries a token, and
            # an upstream has no business sending it elsewhere. The body is
            # read by _BodyReader (bounded), not buffered by treq first.
            allow_redirects=False, unbuffered=True,
        )
        reader = _BodyReader(target)
        response.deliverBody(reader)
        body = await reader.done
        flat = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, flat, body)

    d = Deferred.fromCoroutine(call())
    # Whatever the cancelled call failed with (the HTTP client turns a
    # cancellation into ResponseNeverReceived), a timed-out call is a timeout.
    d.addTimeout(timeout, clock, onTimeoutCancel=_timed_out)
    try:
        return await d
    except (TimeoutError, CancelledError):
        raise UpstreamError(f"{target}: no answer within {timeout:g} seconds") from None
    except UpstreamError:
        raise
    except Exception as e:
        # Connection refused, TLS verification failure, reset: name the kind
        # of failure only; exception texts can quote request details.
        raise UpstreamError(f"{target}: {describe(e)}") from None


def _timed_out(result: object, timeout: float) -> object:
    if isinstance(result, Failure):
        raise TimeoutError(timeout, "upstream call")
    return result


class _BodyReader(Protocol):
    """
    Collect a response body, at most L{MAX_RESPONSE_BYTES} of it. Cancelling
    L{done} (the deadline) closes the connection: a server trickling a body
    must not keep it open after the call has given up (treq's C{content}
    cannot be cancelled, and the connection stayed open).
    """

    def __init__(self, target: str) -> None:
        self._target = target
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._close())

    def _close(self) -> None:
        # IResponse.deliverBody: stopProducing abandons the body and closes the
        # connection (under TLS without waiting for the server's close_notify).
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE_BYTES:
            self._close()
            self.done.errback(UpstreamError(
                f"{self._target}: response larger than {MAX_RESPONSE_BYTES} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def describe(error: Exception) -> str:
    name = type(error).__name__
    reasons = getattr(error, "reasons", None)
    if reasons:
        # twisted.web's ResponseNeverReceived / RequestTransmissionFailed wrap the cause.
        inner = reasons[0].value
        return f"{name} ({type(inner).__name__}: {_safe_text(inner)})"
    return f"{name}: {_safe_text(error)}"


def _safe_text(error: BaseException) -> str:
    # Connection errors say "Connection refused" or name an SSL alert; cap the
    # length so a chatty library cannot push request data into our messages.
    return str(error)[:160]
