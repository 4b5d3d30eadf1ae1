# -*- test-case-name: tests.test_resource,tests.test_hostile -*-
"""
The STS endpoint: a Klein application answering C{POST /sts/{namespace}}
in the AWS STS wire format, plus C{/healthz} and C{/readyz}.

Klein routes, and what it would answer itself is STS XML here: an unknown
path is a C{NotFound} (404), another method on the endpoint a
C{MethodNotAllowed} (405), not Klein's HTML pages. Every answer but the
probes' is STS XML with an C{x-amz-request-id}, and no traceback ever
reaches a client. Klein routes the path as the client sent it
(L{_RawPathGuard}): a percent-escape is never decoded into a slash or
into the endpoint's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter

from stsd import errors
from stsd.core.exchange import Exchange, Issued, Trail
from stsd.http import wire
from stsd.http.channel import new_request_id
from stsd.ops import audit
from stsd.ops.metrics import Metrics, answer_probe

log = Logger()


def _not_found() -> errors.STSError:
    return errors.STSError("NotFound", "stsd answers POST /sts/{tenantNamespace}", 404)


def _body(request: Request) -> bytes:
    # In memory with BoundedRequest; any other request may have spooled a
    # large body to a file: read no more than the limit (and one byte).
    if request.content is None:  # a request whose body was never started
        return b""
    request.content.seek(0)
    return request.content.read(wire.MAX_BODY_BYTES + 1)


_PLAIN = re.compile(rb"[\x21-\x24\x26-\x7e]*").fullmatch


def _unroutable(raw_path: bytes) -> bool:
    """
    A path (or Host) that is not UTF-8 text once percent-decoded, or holds
    control characters: refused as such (a 400), never routed. (Klein's
    own answer to one that is not UTF-8 as sent is a text/html 400 and a
    logged traceback.)
    """
    if _PLAIN(raw_path):
        return False  # printable ASCII, nothing encoded: the common case
    decoded = unquote_to_bytes(raw_path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


class _RawPathGuard(Resource):
    """
    The STS port's root: paths Klein cannot route are refused here, as STS
    XML; every other request goes to the Klein application, with the path
    as the client sent it.

    Klein routes on C{request.postpath}, which Twisted has percent-decoded
    segment by segment (C{/sts/a%2Fb} would reach a route as C{/sts/a/b},
    C{/%73ts/x} as C{/sts/x}); a werkzeug converter only ever sees the
    decoded text, so no route could tell. Klein gets the segments as sent
    instead: the namespace is judged as sent, and only a path that starts
    C{/sts/} reaches the endpoint. Twisted also drops a target's first
    byte whatever it is (C{xsts/x} would reach Klein as C{/sts/x}), and
    werkzeug strips every leading slash (C{//sts/x} would match
    C{/sts/x}): a path that does not start with exactly one slash is no
    route's.
    """

    isLeaf = True

    def __init__(self, sts: STSResource, klein: IResource) -> None:
        super().__init__()
        self._sts = sts
        self._klein = klein

    def render(self, request: Request) -> Any:
        host = request.requestHeaders.getRawHeaders(b"host", [b""])[0]
        if _unroutable(request.path) or _unroutable(host):
            return self._sts.refuse(request, errors.invalid_parameter(
                "the request path is not valid UTF-8 text"))
        if not request.path.startswith(b"/") or request.path.startswith(b"//"):
            return self._sts.refuse(request, _not_found())
        request.postpath = request.path[1:].split(b"/")
        return self._klein.render(request)


class _Rest(BaseConverter):
    """
    The rest of the path, slashes and all, possibly empty: what follows
    C{/sts/} is the namespace's to judge (L{wire.check_namespace}: a 400),
    not the router's (a 404).
    """

    regex = ".*"
    part_isolating = False


class STSResource:
    """
    The Klein application of the STS port.
    """

    app = Klein()
    app.url_map.converters["rest"] = _Rest
    # No route of werkzeug's own making: a path with "//" in it is not
    # redirected to one without (a 308, not STS XML).
    app.url_map.merge_slashes = False

    def __init__(
        self,
        exchange: Exchange,
        *,
        default_duration: int,
        max_duration: int,
        clock: IReactorTime,
        is_ready: Callable[[], bool],
        request_id: Callable[[], str] = new_request_id,
        metrics: Metrics | None = None,
        known_namespace: Callable[[str], bool] = lambda namespace: False,
        readiness: Callable[[], str | None] | None = None,
    ) -> None:
        # Why stsd is not ready (None when it is); by default, the initial sync.
        self._readiness = readiness or (
            lambda: None if is_ready() else "PolicyBindings and Tenants not listed yet")
        self._metrics = metrics
        self._known_namespace = known_namespace
        self._exchange = exchange
        self._default_duration = default_duration
        self._max_duration = max_duration
        self._clock = clock
        self._request_id = request_id

    def resource(self) -> IResource:
        return _RawPathGuard(self, self.app.resource())

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Request) -> bytes:
        return answer_probe(request, None)

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(self, request: Request) -> bytes:
        return answer_probe(request, self._readiness(), b"ready\n")

    @app.route("/sts/<rest:namespace>", methods=["POST"])
    async def sts(self, request: Request, namespace: str) -> bytes:
        if request.method != b"POST":
            # werkzeug matches methods case-insensitively; HTTP's are not.
            return self._refuse_method(request)
        request_id, started, trail = self._start(request)
        issued = None
        try:
            issued, body = await self._handle(request, namespace, request_id, trail)
            outcome, status = "Success", 200
        except CancelledError:
            # The client went away (Klein cancels its request): nothing to
            # answer, nothing unexpected; audited as nginx's 499.
            self._finish(request, request_id, started, trail, "ClientClosedRequest", 499, b"")
            raise
        except errors.STSError as e:
            body = self._error(request, e, request_id)
            outcome, status = e.code, e.status
        except Exception:
            log.failure("unexpected error answering request {request_id}", request_id=request_id)
            body = self._error(
                request, errors.internal_error("stsd failed unexpectedly; see its log"), request_id
            )
            outcome, status = "InternalError", 500
        return self._finish(request, request_id, started, trail, outcome, status, body, issued)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self.refuse(request, _not_found())

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        if "POST" not in (error.valid_methods or ()):
            # A probe's path: another method on it is as unknown as any path.
            return self.refuse(request, _not_found())
        return self._refuse_method(request)

    def _refuse_method(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self.refuse(request, errors.STSError("MethodNotAllowed", "use POST", 405))

    def refuse(self, request: IRequest, error: errors.STSError) -> bytes:
        """
        Answer a request that no route takes, or that L{_RawPathGuard}
        refuses: an audited STS error.
        """
        request_id, started, trail = self._start(request)
        body = self._error(request, error, request_id)
        return self._finish(request, request_id, started, trail, error.code, error.status, body)

    def _start(self, request: IRequest) -> tuple[str, float, Trail]:
        request_id = self._request_id()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setHeader(b"content-type", b"text/xml")
        client = getattr(request.getClientAddress(), "host", "-")
        return request_id, self._clock.seconds(), Trail(client=client)

    def _finish(
        self, request: IRequest, request_id: str, started: float, trail: Trail, outcome: str,
        status: int, body: bytes, issued: Issued | None = None,
    ) -> bytes:
        latency = self._clock.seconds() - started
        # The audit event is this request's log line: the access log skips it.
        # A mark for STSSite.log on whatever Request Twisted made (a plain one in tests).
        request.audited = True  # type: ignore[attr-defined]
        audit.emit(audit.audit_event(request_id=request_id, trail=trail, outcome=outcome,
                                     status=status, latency=latency, issued=issued))
        if self._metrics is not None:
            self._metrics.observe_request(
                outcome, self._namespace_label(trail.namespace), latency, status == 200)
        # A known length: no chunked encoding, and the client need not wait
        # for a trailer.
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _namespace_label(self, namespace: str | None) -> str:
        # Only namespaces with a Tenant become label values: the path is the
        # caller's choice, and label values must stay few.
        if namespace is not None and self._known_namespace(namespace):
            return namespace
        return "other"

    async def _handle(
        self, request: Request, namespace: str, request_id: str, trail: Trail
    ) -> tuple[Issued, bytes]:
        # As sent (see _RawPathGuard): an encoded slash or dot-segment is not a DNS label.
        namespace = wire.check_namespace(namespace)
        # BoundedRequest (from STSSite) flags an oversized body without keeping
        # it; any other request is still held to the limit by parse_request.
        if getattr(request, "body_too_large", False):
            raise errors.invalid_parameter(
                f"the request body is larger than {wire.MAX_BODY_BYTES} bytes"
            )
        query = request.uri.partition(b"?")[2]
        content_type = request.getHeader(b"content-type")
        parsed = wire.parse_request(
            content_type=content_type.decode("latin-1") if content_type else None,
            body=_body(request),
            query=query,
            default_duration=self._default_duration,
            max_duration=self._max_duration,
        )
        issued = await self._exchange.exchange(namespace, parsed, trail)
        body = wire.success_xml(
            issued.credentials,
            subject=issued.identity.username,
            audience=self._exchange.audience,
            policy_bytes=issued.policy_bytes,
            request_id=request_id,
        )
        return issued, body

    def _error(self, request: IRequest, error: errors.STSError, request_id: str) -> bytes:
        request.setResponseCode(error.status)
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        return wire.error_xml(error, request_id)
