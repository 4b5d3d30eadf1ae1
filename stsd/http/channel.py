# -*- test-case-name: tests.test_channel,tests.test_hostile -*-
"""
The transport of stsd's ports: HTTP/1.1 connections hardened for a hostile
network, whatever resource they serve (L{STSSite} the STS port's,
L{MetricsSite} the metrics port's).

Every request must arrive whole within a deadline (a trickling client does
not hold a connection open), its request line and headers within a size,
its body in memory up to L{wire.MAX_BODY_BYTES}; a site holds a bounded
number of connections and knows them, for a graceful stop
(L{stsd.ops.drain}). The refusals the channel writes itself (bad request
line or headers, a request over its deadline) are STS XML with an
C{x-amz-request-id} on the STS port, like every answer of its resource
(L{stsd.http.resource}), and plain text on the metrics port. The STS
port's access log leaves out the query string, where minio-py sends the
WebIdentityToken.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from stsd import errors
from stsd.http import wire
from stsd.twisted_private import line_buffer

log = Logger()


DEFAULT_REQUEST_TIMEOUT = 10.0
# The request line and the headers together. Twisted's default is 16 KiB, but
# minio-py sends WebIdentityToken (up to 20,000 characters: docs/design.md, "Wire
# contract (what clients see)") and Policy in the query string, so the request line
# alone may be over 20 KiB.
MAX_HEADER_BYTES = 32 * 1024
# Connections closed at a site's max_connections are logged at most this often.
BOUND_WARNING_SECONDS = 60.0


# Request ids need to be unique, not secret: a generator seeded from the
# system's randomness once, rather than a system call per request.
_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """
    A request id for an answer's C{x-amz-request-id} and C{RequestId}: 128
    random bits, spelled like the operator's (32 upper-case hex digits).
    """
    return f"{_ids.getrandbits(128):032X}"


class BoundedRequest(Request):
    """
    A request that keeps at most L{wire.MAX_BODY_BYTES} of its body in
    memory and never spills to a temporary file; a larger body is noted
    and refused by the resource. (How long its arrival may take is bounded
    by L{STSSite.request_timeout}, enforced by L{_DeadlineChannel}.)
    """

    body_too_large = False
    #: Always a buffer in memory (L{gotLength}), never a spooled file.
    content: io.BytesIO

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self._body_bytes = 0
        if length is not None and length > wire.MAX_BODY_BYTES:
            self.body_too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > wire.MAX_BODY_BYTES:
            self.body_too_large = True
        if not self.body_too_large:
            self.content.write(data)

    def render(self, resrc: IResource) -> None:
        # Request.process() has set "Server: TwistedWeb/<version>": nothing a
        # client needs, and the version tells a scanner which bugs to try.
        self.responseHeaders.removeHeader(b"server")
        super().render(resrc)

    def _handleStar(self) -> None:  # a private hook: stsd.twisted_private.OVERRIDDEN
        # Twisted answers a "*" request-target itself (an empty 405, or 200 to
        # OPTIONS) without x-amz-request-id; here the resource answers it like
        # any other target, in STS XML.
        try:
            # Set by Site before a request is processed.
            assert self.site is not None
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> Failure:
        # A last resort (the resource answers its own errors): Twisted's page
        # is HTML, with the traceback if displayTracebacks is on.
        log.failure("unexpected error answering a request", failure=reason)
        request_id = new_request_id()
        body = wire.error_xml(errors.internal_error("stsd failed unexpectedly; see its log"),
                              request_id)
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"text/xml")
        self.setHeader(b"x-amz-request-id", request_id.encode("ascii"))
        self.setHeader(b"content-length", b"%d" % (len(body),))
        self.write(body)
        self.finish()
        return reason


def _raw_error_response(error: errors.STSError) -> bytes:
    """
    A whole HTTP/1.1 response carrying C{error} as STS XML, for the channel
    to write itself when there is no complete request for the resource to
    answer; the connection is closed after it.
    """
    request_id = new_request_id()
    body = wire.error_xml(error, request_id)
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (error.status, RESPONSES.get(error.status, b"Error")),
        b"Content-Type: text/xml\r\n",
        b"Content-Length: %d\r\n" % (len(body),),
        b"x-amz-request-id: %s\r\n" % (request_id.encode("ascii"),),
        b"Connection: close\r\n\r\n",
        body,
    ])


class _DeadlineChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that gives every request a deadline: from the moment
    the channel is ready for a request (the connection is made, or the
    previous response is done on a keep-alive connection), the whole request
    (request line, headers and body) must arrive within C{request_timeout}
    seconds, else the connection is closed, with a 408 in STS XML if part of
    a request had arrived. Twisted's own timeout is an idle timeout, reset by
    every byte received: a client trickling one byte a second keeps it off
    forever. No deadline runs while a request is being answered.

    The bad-request answers of Twisted's HTTP parser (malformed request line
    or header, headers or a line over the limit) are STS XML too.

    The timer runs on the site's reactor (C{callLater}, set by
    C{HTTPFactory.buildProtocol}).
    """

    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    MAX_LENGTH = MAX_HEADER_BYTES
    #: Set by L{DeadlineSite.buildProtocol} (Site's), before the connection is made.
    site: DeadlineSite
    #: A TCP connection (or TLS over one) once the connection is made.
    transport: ITCPTransport
    totalHeadersSize = MAX_HEADER_BYTES

    _deadline: IDelayedCall | None = None
    _timed_out = False
    _lost = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_deadline()

    def dataReceived(self, data: bytes) -> None:
        # ITCPTransport does not declare disconnecting, which every transport has.
        if self._timed_out or self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # refused or too late: the connection is being closed
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        # Cancelled before the request is handed on: an answer written at
        # once ends in requestDone, which arms the next request's deadline.
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self._flush()
        # Armed before Twisted replays pipelined data, which may hold the
        # whole next request (whose allContentReceived cancels it again).
        if self.persistent and not self._lost:
            self._arm_deadline()
        super().requestDone(request)
        if self.site.draining:
            self.site._settle()

    @property
    def busy(self) -> bool:
        """
        Whether a request is arriving or being answered: a partial request
        line waits in the line buffer, a request from its line on is in
        C{requests}. A connection cut off at its deadline is not.
        """
        return not self._timed_out and (bool(self.requests) or bool(line_buffer(self)))

    # A response is held until it is complete and then written at once: one
    # TLS record and one segment instead of headers, body and chunk trailer
    # apart. STS answers are a few KiB; nothing streams.
    _pending: list[bytes] | None = None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        pending = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                pending.extend((name, b": ", value, b"\r\n"))
        if self.persistent and self.site.draining:
            # Stopping: this answer is the connection's last, so the client
            # opens its next connection elsewhere (stsd.ops.drain).
            self.persistent = False
            pending.append(b"Connection: close\r\n")
        pending.append(b"\r\n")
        self._pending = pending

    def write(self, data: bytes) -> None:
        if self._pending is None:
            super().write(data)
        else:
            self._pending.append(data)

    def writeSequence(self, iovec: Any) -> None:
        if self._pending is None:
            super().writeSequence(iovec)
        else:
            self._pending.extend(iovec)

    def _flush(self) -> None:
        if self._pending is not None:
            data, self._pending = b"".join(self._pending), None
            if not self._lost:
                self.transport.write(data)

    def loseConnection(self) -> None:
        self._cancel_deadline()
        super().loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._pending = None
        self._cancel_deadline()
        super().connectionLost(reason)
        self.site._channel_lost(self)

    def _refusal(self, error: errors.STSError) -> bytes:
        """The whole response refusing a request the channel cannot hand on."""
        return _raw_error_response(error)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver's default drops the connection without a word.
        self._respondToBadRequestAndDisconnect()

    def _respondToBadRequestAndDisconnect(self) -> None:  # stsd.twisted_private.OVERRIDDEN
        # Twisted's answer is a bare "400 Bad Request" without a body.
        self._cancel_deadline()
        self.transport.write(self._refusal(errors.invalid_parameter(
            f"malformed HTTP request, or request line and headers over "
            f"{self.totalHeadersSize} bytes"
        )))
        self.loseConnection()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        if self.request_timeout is not None:
            self._deadline = self.callLater(self.request_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._timed_out = True
        # A Request exists from the request line on; before it, a partial
        # line waits in the line buffer. Neither: an idle connection.
        started = bool(self.requests) or bool(line_buffer(self))
        log.info(
            "closing connection from {client}: {what} within {timeout}s",
            client=getattr(self.transport.getPeer(), "host", "-"),
            what="request not complete" if started else "no request",
            timeout=self.request_timeout,
        )
        if started:
            self.transport.write(self._refusal(errors.STSError(
                "RequestTimeout",
                f"the request did not arrive within {self.request_timeout} seconds",
                408,
            )))
        # Closes, and aborts after abortTimeout if the client will not read.
        self.timeoutConnection()
        if self.site.draining:
            self.site._settle()


class _PlainDeadlineChannel(_DeadlineChannel):
    """
    L{_DeadlineChannel} for the metrics port: its refusals are plain text
    (Prometheus and the kubelet read no STS XML).
    """

    def _refusal(self, error: errors.STSError) -> bytes:
        body = error.message.encode("utf-8") + b"\n"
        return b"".join([
            b"HTTP/1.1 %d %s\r\n" % (error.status, RESPONSES.get(error.status, b"Error")),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % (len(body),),
            b"Connection: close\r\n\r\n",
            body,
        ])


class DeadlineSite(Site):
    """
    A Site whose connections are L{_DeadlineChannel}s: every request must
    arrive within C{request_timeout} seconds, its request line and headers
    within C{max_header_bytes}, its body is kept in memory up to
    L{wire.MAX_BODY_BYTES} (L{BoundedRequest}); at most C{max_connections}
    connections are held at once (C{None}: no bound), one more is closed as
    soon as it is accepted (with a warning at most every
    L{BOUND_WARNING_SECONDS}).

    It knows its connections, for a graceful stop (L{stsd.ops.drain}): once
    C{draining} is set, every answer closes its connection; L{close_idle},
    L{when_quiet} and L{abort_all} do the rest.
    """

    requestFactory = BoundedRequest
    # HTTPFactory declares protocol as a factory of its _GenericHTTPChannelProtocol
    # wrapper only, but any HTTPChannel serves: Site.buildProtocol just sets site on it.
    protocol = _DeadlineChannel  # type: ignore[assignment]

    #: Set when a stop begins: every answer from then on is its connection's last.
    draining = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        # Twisted's idle timeout (12 h, re-armed by a timer per request) is
        # redundant: the request deadline of _DeadlineChannel also closes an
        # idle keep-alive connection, after request_timeout.
        kwargs.setdefault("timeout", None)
        super().__init__(resource, reactor=reactor, **kwargs)
        self.request_timeout = request_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self._channels: set[_DeadlineChannel] = set()
        self._quiet: list[Deferred[None]] = []
        self._closed: list[Deferred[None]] = []
        self._refused = 0  # connections closed at the bound since the last warning
        self._warned_at: float | None = None

    # The return type Twisted declares is its wrapper's (see protocol above).
    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> _DeadlineChannel | None:
        if self.max_connections is not None and len(self._channels) >= self.max_connections:
            # None: the listening port closes the new socket at once.
            self._refused += 1
            now = self.reactor.seconds()
            if self._warned_at is None or now - self._warned_at >= BOUND_WARNING_SECONDS:
                # At most a line a minute, however hard the port is flooded.
                log.warn("{count} connections open, the most allowed: closed {refused} new "
                         "ones", count=len(self._channels), refused=self._refused)
                self._warned_at, self._refused = now, 0
            return None
        channel: _DeadlineChannel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        channel.MAX_LENGTH = channel.totalHeadersSize = self.max_header_bytes
        self._channels.add(channel)
        return channel

    # -- connections, for a graceful stop ---------------------------------------

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._channels)

    @property
    def busy(self) -> int:
        """Connections with a request arriving or being answered."""
        return sum(1 for channel in self._channels if channel.busy)

    def close_idle(self) -> int:
        """Close every connection without a request; return how many."""
        idle = [channel for channel in self._channels if not channel.busy]
        for channel in idle:
            channel.loseConnection()
        return len(idle)

    def abort_all(self) -> int:
        """Drop every connection now, requests and all; return how many."""
        channels = list(self._channels)
        for channel in channels:
            channel.transport.abortConnection()
        return len(channels)

    def when_quiet(self) -> Deferred[None]:
        """
        A Deferred that fires once no connection is busy (checked when a
        request is done or a connection lost, while C{draining}).
        """
        d: Deferred[None] = Deferred(self._quiet.remove)
        self._quiet.append(d)
        self._settle()
        return d

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open."""
        d: Deferred[None] = Deferred(self._closed.remove)
        self._closed.append(d)
        self._settle()
        return d

    def _settle(self) -> None:
        if self._quiet and not any(channel.busy for channel in self._channels):
            waiting, self._quiet = self._quiet, []
            for d in waiting:
                d.callback(None)
        if self._closed and not self._channels:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def _channel_lost(self, channel: _DeadlineChannel) -> None:
        self._channels.discard(channel)
        if self._quiet or self._closed:
            self._settle()


class STSSite(DeadlineSite):
    """
    The Site of the STS port: requests are L{BoundedRequest}s, each must
    arrive within C{request_timeout} seconds (L{_DeadlineChannel}), the
    request line and headers within C{max_header_bytes}; form bodies are
    left to L{wire.parse_request} (Twisted's own C{request.args} parsing of
    POST bodies, with its bare-400 on a bad multipart body, is off). The
    access log omits the query string (minio-py sends the WebIdentityToken
    there) and is a structured log event.
    """

    def startFactory(self) -> None:
        # HTTPFactory opens a log file and starts a once-a-second timer for
        # the Combined Log Format date, which nothing here uses (log() below
        # replaces that log) and which stopFactory never cancels.
        pass

    def log(self, request: http.Request) -> None:
        if getattr(request, "audited", False):
            return  # an STS request: its audit event says all this and more
        request_id = request.responseHeaders.getRawHeaders(b"x-amz-request-id", [b"-"])[0]
        log.info(
            "{method} {path} {status} {client} request_id={request_id}",
            method=request.method.decode("latin-1", "replace"),
            path=request.path.decode("latin-1", "replace")[:128],
            status=request.code,
            client=getattr(request.getClientAddress(), "host", "-"),
            request_id=request_id.decode("latin-1"),
        )


class MetricsSite(DeadlineSite):
    """
    The Site of the metrics port: the STS port's request deadline, a bound
    on connections (a client holding thousands of half-sent requests open
    costs at most C{max_connections} sockets for C{request_timeout}
    seconds), plain-text refusals, and Twisted's access log.
    """

    protocol = _PlainDeadlineChannel
    noisy = False
