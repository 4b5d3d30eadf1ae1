# -*- test-case-name: tests.test_keepalive -*-
"""
A lean HTTP/1.1 client for the per-request upstream call (MinIO's
AssumeRole): persistent TLS connections, at most C{max_connections} open
or opening per host (further calls wait in line, first come first served,
within their deadline), one request at a time per connection, a deadline
on the whole call.

treq and twisted.web's Agent spend most of a credential's CPU on an
AssumeRole (URL objects, header objects, body producers, a chain of
Deferreds per call). This client writes each request as one buffer and
parses the answer in one pass, which is all a request/response exchange
with a known server needs. It keeps the guarantees of L{stsd.upstream.http}:
the same error messages, certificate verification by the same TLS policy,
no redirects followed, a bounded response.

A request that fails on a reused connection before any byte of the
answer arrived (the server closed that idle connection as the request was
sent) is sent once more on a new connection, as browsers do. For
AssumeRole that is safe: an unanswered mint leaves at worst a credential
nobody holds, which expires on its own.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

from stsd.twisted_private import UnbufferedTLSFactory, send_now
from stsd.upstream.http import PERSISTENT_PER_HOST, Response, UpstreamError, describe

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# Idle connections are closed by this client before a server's usual idle
# timeout would close them under a request.
IDLE_SECONDS = 30.0
CONNECT_SECONDS = 10.0
# Connections open or being opened to one host at a time (tenants.max_connections):
# a rollout of a thousand pods must not become a thousand TLS handshakes at once.
MAX_CONNECTIONS_PER_HOST = 64

_Key = tuple[str, str, int]
# One header line after a CRLF: a token, a colon, the value without the
# whitespace around it (RFC 9110 field-name and OWS).
_HEADER_LINE = re.compile(rb"\r\n([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|\Z)")


class _Lost(Exception):
    """The connection closed before the whole answer arrived."""

    def __init__(self, reason: Failure, received: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.received = received


class ResponseError(Exception):
    """The server's answer is not HTTP/1.1 this client can read."""


# The name the rest of this module (and older tests) use.
_ProtocolError = ResponseError

# A whole answer: the response, and whether the connection may carry another
# request (the answer allows it and nothing came after it).
Answer = tuple[Response, bool]


class ResponseParser:
    """
    The answer to one request, read from the bytes as they arrive: no I/O,
    no clock, nothing but the bytes given to L{feed} (and L{close}, when the
    connection ends). L{parse_response} is the same over one piece.

    L{feed} returns the whole L{Answer} once it has arrived, or C{None} for
    "need more"; it raises L{ResponseError} for an answer that is not HTTP
    this client reads, or that passes a bound (L{MAX_HEAD_BYTES} of head or
    trailers, C{max_body} of body). After an answer the parser is ready for
    the next one; bytes after the framed answer are dropped and make the
    answer's keep flag C{False}.
    """

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self._max_body = max_body
        self._buffer = bytearray()
        self.reset()

    def reset(self) -> None:
        """Forget any partial answer (a new request is sent)."""
        self._buffer = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self.head_done = False
        self._length: int | None = None  # Content-Length; None: chunked or until close
        self._chunked = False
        self._body = bytearray()
        self._keep_alive = True

    @property
    def until_close(self) -> bool:
        """Whether the head is read and the body ends when the connection closes."""
        return self.head_done and self._length is None and not self._chunked

    def close(self) -> Answer | None:
        """
        The connection closed: the answer, if its body was delimited by the
        close (L{until_close}); C{None} if it is incomplete.
        """
        if not self.until_close:
            return None
        return self._complete()

    def feed(self, data: bytes) -> Answer | None:
        self._buffer += data
        while not self.head_done:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ResponseError("response headers too large")
                return None
            if end > MAX_HEAD_BYTES:
                raise ResponseError("response headers too large")
            head = bytes(self._buffer[:end])
            del self._buffer[:end + 4]
            self._read_head(head)
        if self._chunked:
            return self._read_chunks()
        if self._length is not None:
            if len(self._buffer) >= self._length:
                if len(self._buffer) > self._length:
                    self._keep_alive = False  # more than was framed: do not reuse
                self._body = self._buffer[:self._length]
                return self._complete()
            return None
        self._body += self._buffer
        self._buffer = bytearray()
        if len(self._body) > self._max_body:
            raise ResponseError(f"response larger than {self._max_body} bytes")
        return None

    def _read_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or (
                rest[3:4] not in (b"", b" ")):
            raise ResponseError("not an HTTP/1.1 status line")
        status = int(code)
        fields = _HEADER_LINE.findall(head, len(status_line))
        # Every line must be a header: no continuation lines, no junk.
        if len(fields) != head.count(b"\r\n"):
            raise ResponseError("malformed header line")
        headers: dict[str, str] = {}
        lengths = set()
        for name, value in fields:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key == "content-length":
                lengths.add(text)
            headers[key] = text
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._status = status
        self._headers = headers
        self.head_done = True
        connection = headers.get("connection", "").lower()
        if version == b"HTTP/1.0":
            self._keep_alive = "keep-alive" in connection
        elif "close" in connection:
            self._keep_alive = False
        encoding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            self._length = 0
        elif encoding:
            if encoding != "chunked":
                raise ResponseError("unsupported transfer-encoding")
            self._chunked = True
        elif lengths:
            length = next(iter(lengths))
            # isascii: str.isdigit() also holds for "²", which int() refuses.
            if len(lengths) != 1 or not (length.isascii() and length.isdigit()):
                raise ResponseError("bad content-length")
            self._length = int(length)
            if self._length > self._max_body:
                raise ResponseError(f"response larger than {self._max_body} bytes")
        else:
            self._keep_alive = False  # the body ends when the server closes

    def _read_chunks(self) -> Answer | None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise ResponseError("malformed chunk")
                return None
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ResponseError("malformed chunk") from None
            if size < 0 or len(self._body) + size > self._max_body:
                raise ResponseError(f"response larger than {self._max_body} bytes")
            if size == 0:
                # Then the trailer section: header lines, ended by an empty line.
                start = end + 2
                if buffer[start:start + 2] == b"\r\n":
                    final = start + 2
                else:
                    final = buffer.find(b"\r\n\r\n", start)
                    if final < 0:
                        if len(buffer) > MAX_HEAD_BYTES:
                            raise ResponseError("response trailers too large")
                        return None
                    final += 4
                if len(buffer) > final:
                    self._keep_alive = False  # more than was framed: do not reuse
                return self._complete()
            if len(buffer) < end + 2 + size + 2:
                return None
            if buffer[end + 2 + size:end + 4 + size] != b"\r\n":
                raise ResponseError("malformed chunk")
            self._body += buffer[end + 2:end + 2 + size]
            del buffer[:end + 4 + size]

    def _complete(self) -> Answer:
        answer = (Response(self._status, self._headers, bytes(self._body)), self._keep_alive)
        self.reset()
        return answer


def parse_response(data: bytes, max_body: int = MAX_BODY_BYTES, *,
                   closed: bool = False) -> Answer | None:
    """
    The answer in C{data}, or C{None} if more is needed (see
    L{ResponseParser}); C{closed}: the connection closed after C{data}.

    @raise ResponseError: not an answer this client reads, or over a bound.
    """
    parser = ResponseParser(max_body)
    answer = parser.feed(data)
    if answer is None and closed:
        answer = parser.close()
    return answer


class _Connection(Protocol):
    """
    One persistent connection: send a request, parse its answer (with a
    L{ResponseParser}), then be handed back to the pool (or closed when the
    answer says so).
    """

    #: The TLS layer (C{UnbufferedTLSFactory}'s) once connected.
    transport: ITCPTransport

    def __init__(self, max_body: int) -> None:
        self._parser = ResponseParser(max_body)
        # The call waiting for an answer: its answered() or lost() is called.
        self._owner: Any = None
        self._received = False
        self.is_open = False
        self.idle_since = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None
        # Whether this connection holds one of its host's max_connections
        # slots (from before it connects until it is lost).
        self.counted = True

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes, owner: Any) -> None:
        """
        Write one whole request. C{owner.answered(response, keep)} gets the
        answer and whether this connection may carry another request, or
        C{owner.lost(failure)} the reason there is none.
        """
        self._owner = owner
        self._received = False
        # (The parser is fresh: new, or reset by the last whole answer; a
        # connection whose answer failed is aborted, never reused.)
        self.transport.write(data)
        send_now(self.transport)  # see there: the request leaves within this call

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    # -- receiving -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.is_open = True
        # A request is one write; never hold it back for an ACK (Nagle).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        if self._owner is None:
            # Bytes nobody asked for: the connection cannot be trusted to
            # frame the next answer.
            self.abort()
            return
        self._received = True
        try:
            answer = self._parser.feed(data)
        except ResponseError as e:
            self._fail(Failure(e))
            self.abort()
            return
        if answer is not None:
            owner, self._owner = self._owner, None
            owner.answered(*answer)

    def _fail(self, failure: Failure) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.lost(failure)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.is_open = False
        if self._owner is not None:
            if self._parser.until_close:
                if reason.check(ConnectionDone):
                    answer = self._parser.close()  # a body delimited by the close
                    assert answer is not None  # until_close: the close completes it
                    owner, self._owner = self._owner, None
                    owner.answered(*answer)
                else:
                    self._fail(Failure(_Lost(reason, True)))
            else:
                self._fail(Failure(_Lost(reason, self._received)))
        if self.on_lost is not None:
            self.on_lost(self)


class _TLSEndpoint:
    """C{wrapClientTLS}, with the unbuffered TLS transport."""

    def __init__(self, endpoint: Any, creator: Any) -> None:
        self._endpoint = endpoint
        self._creator = creator

    def connect(self, factory: Factory) -> Deferred[Any]:
        return self._endpoint.connect(UnbufferedTLSFactory(self._creator, True, factory)).addCallback(
            lambda tls: tls.wrappedProtocol)


class KeepAliveClient:
    """
    HTTP/1.1 requests over a bounded pool of persistent connections per
    (scheme, host, port), verified with C{policy} for C{https}: at most
    C{max_connections} open or being opened at once (a call that finds
    none idle and none free waits in line for the next connection given
    back or slot freed; its deadline runs while it waits), at most
    C{per_host} of them kept idle.

    L{request} has the signature and the errors of L{stsd.upstream.http.request}
    (minus the client), so L{stsd.upstream.minio.MinIOClient} takes either.
    """

    def __init__(
        self,
        reactor: Any,
        policy: IPolicyForHTTPS,
        *,
        per_host: int = PERSISTENT_PER_HOST,
        max_connections: int = MAX_CONNECTIONS_PER_HOST,
        max_body: int = MAX_BODY_BYTES,
        idle_seconds: float = IDLE_SECONDS,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._per_host = per_host
        self._max_connections = max_connections
        # Per host: connections open or opening (each holds a slot), and the
        # calls waiting for one, first come first served.
        self._active: dict[_Key, int] = {}
        self._waiting: dict[_Key, deque[_Call]] = {}
        self._max_body = max_body
        self._idle_seconds = idle_seconds
        self._observe = observe
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._endpoints: dict[_Key, Any] = {}
        self._sweep: IDelayedCall | None = None
        self._targets: dict[str, tuple[_Key, str, str]] = {}

    # -- the pool ------------------------------------------------------------

    def _endpoint(self, key: _Key) -> Any:
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            scheme, host, port = key
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=CONNECT_SECONDS)
            if scheme == "https":
                creator = self._policy.creatorForNetloc(host.encode("idna"), port)
                endpoint = _TLSEndpoint(endpoint, creator)
            self._endpoints[key] = endpoint
        return endpoint

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely closed
            if connection.is_open:
                return connection
        return None

    def _give_back(self, key: _Key, connection: _Connection) -> None:
        if self._waiting and connection.is_open:
            call = self._next_waiting(key)
            if call is not None:
                call._send(connection, reused=True)  # straight to the next in line
                return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._per_host or not connection.is_open:
            connection.transport.loseConnection()
            return
        connection.idle_since = self._reactor.seconds()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self._idle_seconds, self._close_idle)

    def _close_idle(self) -> None:
        # One timer for the pool rather than one per request: it closes what
        # has been idle for idle_seconds and comes back for the rest.
        self._sweep = None
        now = self._reactor.seconds()
        oldest = None
        for idle in self._idle.values():
            # Oldest first: connections are appended as they come back.
            while idle and now - idle[0].idle_since >= self._idle_seconds:
                idle.pop(0).transport.loseConnection()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweep = self._reactor.callLater(
                max(0.0, oldest + self._idle_seconds - now), self._close_idle)

    def _forget(self, key: _Key, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(key)
        if idle and connection in idle:
            idle.remove(connection)
        self._release(key, connection)

    # -- the bound on connections per host -----------------------------------
    #
    # A connection holds one of its host's slots from before it connects
    # until it is lost (or fails to connect). A call that finds no idle
    # connection takes a free slot, or waits in line; a slot freed, or a
    # connection given back, goes to the first in line. Under the bound
    # this costs a counter per new connection and nothing per request.

    def _acquire(self, key: _Key, call: _Call) -> bool:
        """Take a slot for C{call}'s new connection, or put it in line."""
        active = self._active.get(key, 0)
        if active < self._max_connections:
            self._active[key] = active + 1
            return True
        self._waiting.setdefault(key, deque()).append(call)
        return False

    def _release(self, key: _Key, connection: _Connection) -> None:
        if not connection.counted:
            return
        connection.counted = False
        call = self._next_waiting(key)
        if call is not None:
            call._connect()  # the slot passes on
            return
        active = self._active[key] - 1
        if active:
            self._active[key] = active
        else:
            del self._active[key]

    def _next_waiting(self, key: _Key) -> _Call | None:
        waiting = self._waiting.get(key)
        if not waiting:
            return None
        call = waiting.popleft()
        if not waiting:
            del self._waiting[key]
        return call

    def _leave_line(self, key: _Key, call: _Call) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None and call in waiting:
            waiting.remove(call)
            if not waiting:
                del self._waiting[key]

    def connections(self, url: str) -> tuple[int, int]:
        """(connections open or opening, calls waiting) for C{url}'s host."""
        key = self._target(url)[0]
        return self._active.get(key, 0), len(self._waiting.get(key, ()))

    def _connect(self, key: _Key) -> Deferred[_Connection]:
        """A new connection, in a slot already taken (L{_acquire})."""
        connection = _Connection(self._max_body)
        connection.on_lost = lambda c: self._forget(key, c)
        factory = Factory.forProtocol(lambda: connection)
        factory.noisy = False

        def made(protocol: object) -> _Connection:
            self._open.add(connection)
            return connection

        def failed(failure: Failure) -> Failure:
            self._release(key, connection)
            return failure

        return self._endpoint(key).connect(factory).addCallbacks(made, failed)

    def close(self) -> Deferred[None]:
        """Close every connection (service shutdown, tests)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        # Calls still waiting for a connection are left to their deadlines.
        self._waiting.clear()
        waits = []
        for connection in list(self._open):
            if connection.is_open:
                lost: Deferred[None] = Deferred()
                previous = connection.on_lost

                def on_lost(c: _Connection, lost: Deferred[None] = lost,
                            previous: Any = previous) -> None:
                    if previous is not None:
                        previous(c)
                    lost.callback(None)

                connection.on_lost = on_lost
                connection.transport.loseConnection()
                waits.append(lost)
        self._idle.clear()
        return gatherResults(waits).addCallback(lambda _: None)

    # -- a request -----------------------------------------------------------

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
        """
        Send one request and read the whole answer within C{timeout} seconds.

        @param target: a short name of what is called, for error messages.
        @param metric: the target label of the upstream metrics.
        @raise UpstreamError: on timeout, connection failure, or an answer
            that is not HTTP or too large.
        """
        key, target_path, netloc = self._target(url)
        lines = [f"{method} {target_path} HTTP/1.1"]
        headers = headers or {}
        if not any(name.lower() == "host" for name in headers):
            lines.append(f"Host: {netloc}")
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if data is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(data or b'')}")
        lines.append("\r\n")
        wire = "\r\n".join(lines).encode("latin-1") + (data or b"")
        return _Call(self, key, wire, target, timeout, metric).result

    def _target(self, url: str) -> tuple[_Key, str, str]:
        # (pool key, request target, Host) of a URL; the few URLs stsd calls
        # are split once.
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            scheme = parts.scheme
            if scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = ((scheme, parts.hostname, port), path, parts.netloc)
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[url] = found
        return found


class _Call:
    """One request: its connection, its deadline, at most one resend."""

    # In line for a connection (KeepAliveClient._waiting); a class default,
    # not set per call: most calls never wait.
    _waiting = False

    def __init__(
        self, client: KeepAliveClient, key: _Key, wire: bytes, target: str, timeout: float,
        metric: str,
    ) -> None:
        self._client = client
        self._key = key
        self._wire = wire
        self._target = target
        self._timeout = timeout
        self._metric = metric
        self._connecting: Deferred[_Connection] | None = None
        self._connection: _Connection | None = None
        self._reused = False
        self._started = client._reactor.seconds()
        self.result: Deferred[Response] = Deferred(lambda _: self._cancelled())
        self._timer = client._reactor.callLater(timeout, self._expire)
        connection = client._take(key)
        if connection is not None:
            self._send(connection, reused=True)
        else:
            self._open()

    def _open(self) -> None:
        if self._client._acquire(self._key, self):
            self._connect()
        else:
            self._waiting = True  # until a slot or a connection comes (or the deadline)

    def _connect(self) -> None:
        self._waiting = False
        self._connecting = self._client._connect(self._key)
        self._connecting.addCallbacks(lambda c: self._send(c, reused=False), self._failed)

    def _send(self, connection: _Connection, reused: bool) -> None:
        self._waiting = False
        self._connecting = None
        if self.result.called:
            # Connected after this call gave up: the connection serves the
            # next call in line, or waits in the pool.
            self._client._give_back(self._key, connection)
            return
        self._connection = connection
        self._reused = reused
        connection.send(self._wire, self)

    def answered(self, response: Response, keep: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if keep:
                self._client._give_back(self._key, connection)
            else:
                connection.transport.loseConnection()
        self._finish(response)

    def lost(self, failure: Failure) -> None:
        connection, self._connection = self._connection, None
        if self.result.called:
            return
        lost = failure.value
        if isinstance(lost, _Lost) and self._reused and not lost.received:
            # The server closed an idle connection under us: a new one, in
            # the lost one's slot (no waiting in line for a call in service).
            if connection is not None and connection.counted:
                connection.counted = False
                self._connect()
            else:
                self._open()
            return
        self._failed(Failure(lost.reason.value) if isinstance(lost, _Lost) else failure)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.result.called:
            return
        error = failure.value
        if isinstance(error, ResponseError):
            message = f"{self._target}: {error}"
        else:
            message = f"{self._target}: {describe(error)}"
        self._finish(UpstreamError(message))

    def _expire(self) -> None:
        self._timer = None
        # Finished first: the connection attempt cancelled below fails at
        # once, and its error is not the reason this call ends.
        self._finish(UpstreamError(f"{self._target}: no answer within {self._timeout:g} seconds"))
        self._abandon()

    def _cancelled(self) -> None:
        # The caller gave up (its own deadline): nothing more to report.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._abandon()

    def _abandon(self) -> None:
        if self._waiting:
            self._waiting = False
            self._client._leave_line(self._key, self)
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.abort()

    def _finish(self, outcome: Response | UpstreamError) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.result.called:
            return
        observe = self._client._observe
        if observe is not None:
            ok = isinstance(outcome, Response) and (outcome.status < 400 or outcome.status == 404)
            observe(self._metric, self._client._reactor.seconds() - self._started, ok)
        if isinstance(outcome, UpstreamError):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)
