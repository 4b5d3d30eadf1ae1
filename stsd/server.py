# -*- test-case-name: tests.test_server -*-
"""
The STS endpoint: a Klein resource answering C{POST /sts/{namespace}} in
the AWS STS wire format, plus C{/healthz} and C{/readyz}.

Every response of this port is STS XML (Klein's own 404/405 pages are
HTML, and Klein decodes C{%2F} before routing, so paths are dispatched
here from the raw request path), every response carries
C{x-amz-request-id}, and no traceback ever reaches a client.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from stsd import errors, wire
from stsd.exchange import Exchange

log = Logger()

_STS_PREFIX = b"/sts/"
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]


class BoundedRequest(Request):
    """
    A request that keeps at most L{wire.MAX_BODY_BYTES} of its body in
    memory and never spills to a temporary file; a larger body is noted
    and refused by the resource.
    """

    body_too_large = False

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


class STSSite(Site):
    """
    A Site whose access log omits the query string (minio-py sends the
    WebIdentityToken there) and is a structured log event.
    """

    requestFactory = BoundedRequest

    def log(self, request: Request) -> None:  # type: ignore[override]
        request_id = request.responseHeaders.getRawHeaders(b"x-amz-request-id", [b"-"])[0]
        log.info(
            "{method} {path} {status} {client} request_id={request_id}",
            method=request.method.decode("latin-1", "replace"),
            path=request.path.decode("latin-1", "replace")[:128],
            status=request.code,
            client=getattr(request.getClientAddress(), "host", "-"),
            request_id=request_id.decode("latin-1"),
        )


def new_request_id() -> str:
    return uuid.uuid4().hex.upper()


class STSResource:
    """
    The Klein application of the STS port.
    """

    app = Klein()

    def __init__(
        self,
        exchange: Exchange,
        *,
        default_duration: int,
        max_duration: int,
        clock: IReactorTime,
        is_ready: Callable[[], bool],
        request_id: Callable[[], str] = new_request_id,
    ) -> None:
        self._exchange = exchange
        self._default_duration = default_duration
        self._max_duration = max_duration
        self._clock = clock
        self._is_ready = is_ready
        self._request_id = request_id

    def resource(self) -> IResource:
        return self.app.resource()

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        if self._is_ready():
            return b"ready\n"
        request.setResponseCode(503)
        return b"not ready: PolicyBindings and Tenants not listed yet\n"

    @app.route("/", branch=True, methods=_ANY_METHOD)
    async def sts(self, request: Request) -> bytes:
        request_id = self._request_id()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setHeader(b"content-type", b"text/xml")
        started = self._clock.seconds()
        try:
            issued, body = await self._handle(request, request_id)
        except errors.STSError as e:
            return self._error(request, e, request_id, started)
        except Exception:
            log.failure("unexpected error answering request {request_id}", request_id=request_id)
            return self._error(
                request, errors.internal_error("stsd failed unexpectedly; see its log"),
                request_id, started,
            )
        log.info(
            "issued credentials to {sa} for tenant {tenant} (policies {policies}, "
            "expires {expiration}) request_id={request_id} in {latency:.3f}s",
            sa=issued.identity.username, pod=issued.identity.pod, tenant=issued.tenant,
            policies=",".join(issued.policies_used), bindings=",".join(issued.grant.bindings),
            expiration=wire.format_expiration(issued.credentials.expiration), request_id=request_id,
            latency=self._clock.seconds() - started, outcome="Success",
        )
        return body

    async def _handle(self, request: Request, request_id: str):  # type: ignore[no-untyped-def]
        path = request.path
        if not path.startswith(_STS_PREFIX):
            raise errors.STSError(
                "NotFound", "stsd answers POST /sts/{tenantNamespace}", 404
            )
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            raise errors.STSError("MethodNotAllowed", "use POST", 405)
        # The raw path: an encoded slash or dot-segment is not a DNS label.
        namespace = wire.check_namespace(path[len(_STS_PREFIX):].decode("latin-1"))
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
            body=request.content.getvalue(),
            query=query,
            default_duration=self._default_duration,
            max_duration=self._max_duration,
        )
        issued = await self._exchange.exchange(namespace, parsed)
        body = wire.success_xml(
            issued.credentials,
            subject=issued.identity.username,
            audience=self._exchange.audience,
            policy_bytes=issued.policy_bytes,
            request_id=request_id,
        )
        return issued, body

    def _error(
        self, request: Request, error: errors.STSError, request_id: str, started: float
    ) -> bytes:
        request.setResponseCode(error.status)
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        log.info(
            "refused {code} ({status}): {message} request_id={request_id} in {latency:.3f}s",
            code=error.code, status=error.status, message=error.message,
            request_id=request_id, latency=self._clock.seconds() - started, outcome=error.code,
        )
        return wire.error_xml(error, request_id)
