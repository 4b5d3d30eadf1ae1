# -*- test-case-name: tests.test_upstream_http -*-
"""
Calls to upstream HTTP services (Kubernetes, MinIO) with treq: a bounded
persistent connection pool per client and a deadline on the whole call.

treq's own C{timeout=} covers only the wait for response headers; a
server that sends headers and then trickles the body would hold a request
forever, so the deadline here covers reading the body too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol as Interface
from typing import TypeAlias
from weakref import WeakKeyDictionary

from treq.client import HTTPClient
from treq.response import _Response
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


#: What treq's C{request} answers with (an C{IResponse}).
TreqResponse: TypeAlias = _Response

#: Request headers as treq takes them: each name with its values.
TreqHeaders: TypeAlias = dict[bytes | str, list[bytes | str]]


class TreqClient(Interface):
    """
    What stsd's callers use of treq's C{HTTPClient}: C{request}, with the
    arguments they pass. An C{HTTPClient} is one, and so is
    L{stsd.ops.metrics.ObservedHTTPClient}, which wraps one.
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: TreqHeaders | None = None,
        data: bytes | None = None,
        allow_redirects: bool = True,
        unbuffered: bool = False,
    ) -> Deferred[TreqResponse]: ...


class TreqTransport:
    """L{Transport} over a treq client (C{StubTreq} in memory)."""

    def __init__(self, client: TreqClient, clock: IReactorTime) -> None:
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
    client: TreqClient,
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
        treq_headers: TreqHeaders = {k: [v] for k, v in (headers or {}).items()}
        response = await client.request(
            method, url, headers=treq_headers, data=data,
            # Never follow a redirect: a TokenReview body carries a token, and
            # an upstream has no business sending it elsewhere. The body is
            # read by CappedBody (bounded), not buffered by treq first.
            allow_redirects=False, unbuffered=True,
        )
        reader = CappedBody(MAX_RESPONSE_BYTES, too_large=lambda: UpstreamError(
            f"{target}: response larger than {MAX_RESPONSE_BYTES} bytes"))
        response.deliverBody(reader)
        body = await reader.done
        flat = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, flat, body)

    d = Deferred.fromCoroutine(call())
    # Whatever the cancelled call failed with (the HTTP client turns a
    # cancellation into ResponseNeverReceived), a timed-out call is a timeout.
    d.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
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


def timed_out(result: object, timeout: float) -> object:
    """
    C{onTimeoutCancel} for C{Deferred.addTimeout}: whatever the cancelled
    call failed with (the HTTP client turns a cancellation into
    C{ResponseNeverReceived}), a timed-out call is a C{TimeoutError}.
    """
    if isinstance(result, Failure):
        raise TimeoutError(timeout, "upstream call")
    return result


class CappedBody(Protocol):
    """
    Collect a response body, at most C{limit} bytes of it; past that the
    rest is abandoned with the connection. Cancelling L{done} (a deadline)
    closes the connection too: a server trickling a body must not keep it
    open after the call has given up (treq's C{content} cannot be
    cancelled, and the connection stayed open).

    With C{too_large}, the body is wanted whole: one larger than C{limit},
    or a connection cut before its end, fails L{done} (with C{too_large()},
    or the reason). Without it, reading is best effort (a short error
    document): L{done} fires with the first C{limit} bytes, or with what
    arrived before the connection closed, however it closed.
    """

    def __init__(self, limit: int, *, too_large: Callable[[], Exception] | None = None) -> None:
        self._limit = limit
        self._too_large = too_large
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._close())

    def _close(self) -> None:
        # IResponse.deliverBody: stopProducing abandons the body and closes the
        # connection (under TLS without waiting for the server's close_notify).
        if self.transport is not None:
            # deliverBody's transport is an IPushProducer; Protocol declares ITransport.
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        room = self._limit - self._size
        self._size += len(data)
        if self._too_large is not None:
            if len(data) > room:
                self._close()
                self.done.errback(self._too_large())
                return
        elif len(data) >= room:  # best effort: enough read
            self._chunks.append(data[:room])
            self._close()
            self.done.callback(b"".join(self._chunks))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if self._too_large is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def describe(error: BaseException | None, *, text: bool = True) -> str:
    """
    What kind of failure C{error} is, for an error message: its type, the
    type of the cause twisted.web wraps, and (with C{text}) the first
    characters of their texts. Without C{text} it names the kinds only:
    exception texts can quote request details.
    """
    name = type(error).__name__
    reasons = getattr(error, "reasons", None)
    if reasons:
        # twisted.web's ResponseNeverReceived / RequestTransmissionFailed wrap the cause.
        inner = reasons[0].value
        if not text:
            return f"{name} ({type(inner).__name__})"
        return f"{name} ({type(inner).__name__}: {_safe_text(inner)})"
    return f"{name}: {_safe_text(error)}" if text else name


def _safe_text(error: BaseException | None) -> str:
    # Connection errors say "Connection refused" or name an SSL alert; cap the
    # length so a chatty library cannot push request data into our messages.
    return str(error)[:160]
