# -*- test-case-name: tests.test_twisted_private -*-
"""
Every use stsd makes of a private name of Twisted (or of calling a public
one off its documented path), in one place. Each is a small function or
name with the reason it is kept and what it was measured to do; anything
without such a reason uses public API instead. A Twisted upgrade that
moves one of them fails tests/test_twisted_private.py, which checks that
each name still exists with the signature and behaviour relied on here.

Two are overrides rather than calls: Twisted calls them by name on
stsd's subclasses (L{stsd.http.channel}), so they stay methods there and are
listed in L{OVERRIDDEN}.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IWriteDescriptor
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "IOpenSSLTrustRoot", "OVERRIDDEN", "TRUST_ROOT_METHOD", "UnbufferedTLSFactory",
    "clear_exit_signal", "line_buffer", "quiet_pool", "raise_listen_errors", "send_now",
]


# -- twisted.internet._sslverify -------------------------------------------------------

#: L{stsd.upstream.tls.CertificateTrust} implements this interface (it has no public
#: home) so that C{optionsForClientTLS(trustRoot=...)} takes it: Twisted's
#: own trust roots are the platform's store or a fixed list, never both, and
#: tenants need both (public CAs and the cluster's CA: upstream.kube.tenant_trust).
#: Kept for correctness; no public trust root combines the two (not
#: measured by removal: there is nothing to put in its place).
#: Twisted calls the method named L{TRUST_ROOT_METHOD} with the SSL context.
TRUST_ROOT_METHOD = "_addCACertsToContext"


# -- twisted.application.internet ------------------------------------------------------


def raise_listen_errors(service: StreamServerEndpointService) -> None:
    """
    Make C{privilegedStartService} raise when the port cannot be bound,
    instead of logging the error and starting anyway. Kept for correctness:
    a port in use must stop start-up with exit status 1 and a one-line
    reason. Measured by removing it: test_daemon_startup.py's
    test_sts_port_in_use and test_metrics_port_in_use fail (the daemon runs
    on, not listening, until the test's timeout). C{_raiseSynchronously} is
    the flag twistd's own C{strports} services use for the same thing.
    """
    service._raiseSynchronously = True


# -- the reactor (twisted.internet.base.ReactorBase) -------------------------------------


def clear_exit_signal(reactor: Any, signum: int = signal.SIGTERM) -> bool:
    """
    Forget that C{signum} stopped the reactor, so that twistd exits 0 after
    a completed drain instead of re-raising the signal on itself (exit
    status 143, which Kubernetes reports as a failure). Measured by
    removing it: test_drain.py's test_a_drained_sigterm_exits_zero and
    test_sigterm_drains_a_real_daemon fail. Whether it was set: C{False}
    for a reactor without the attribute (a test clock) or another signal.
    """
    if getattr(reactor, "_exitSignal", None) == signum:
        reactor._exitSignal = None
        return True
    return False


# -- twisted.protocols.basic.LineReceiver ------------------------------------------------


def line_buffer(channel: LineReceiver) -> bytes:
    """
    The bytes of an incomplete line a channel holds (an HTTPChannel reads
    the request line and headers as lines). Kept for correctness: it is the
    only way to tell a connection with half a request line (busy: a drain
    waits for it, the read deadline says "request not complete") from an
    idle one. Measured by removing it (always C{b""}): 5 tests fail,
    test_hostile.py's deadline tests (trickled headers, keep-alive and
    pipelined requests, many trickling connections) and test_drain.py's
    test_a_request_arriving_at_the_listener_stop_gets_its_deadline.
    """
    return channel._buffer


# -- twisted.web.client (treq's pool) ------------------------------------------------------


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


def quiet_pool(pool: HTTPConnectionPool) -> None:
    """
    Make C{pool}'s connections log nothing as they open and close. Measured:
    Twisted's own factory logs "Starting factory ..." and "Stopping factory
    ..." for every new upstream connection (2 info lines per connection,
    tests/test_twisted_private.py counts them over loopback); on a busy
    replica in TokenReview mode that is most of its log. There is no
    public way to give the pool a factory.
    """
    pool._factory = _QuietClientFactory


# -- sending now, unbuffered TLS (stsd.upstream.keepalive) ----------------------------------------


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """
    Client TLS whose writes go to the socket at once. Twisted's default TLS
    transport (C{BufferingTLSTransport}) holds small writes until the
    reactor's next turn to send them together; a request is already one
    write, and L{send_now} must find its bytes on the socket. Public
    classes, but C{protocol} is not a documented knob of the factory.
    Its effect is L{send_now}'s over TLS (see there); without it
    test_keepalive.py's test_tls_connections_are_not_write_buffered fails.
    """

    protocol = TLSMemoryBIOProtocol


def send_now(transport: Any) -> None:
    """
    Put what was just written on the wire now, not at the reactor's next
    turn, by calling the socket's C{doWrite} (what the reactor calls when
    the socket is writable) from outside the reactor. A reactor turn
    handles every request that arrived together; written at its end, their
    AssumeRoles reach MinIO as one burst, and stsd then waits for the whole
    burst's answers with nothing to do: about a tenth of stsd's time in
    C{python -m bench.run}, as recorded when it was introduced (not
    re-measured in this change). Without it, test_keepalive.py's
    test_request_leaves_before_the_reactor_turn_ends fails (the request
    waits in the socket's buffer for the reactor's turn).

    C{transport} is the TLS layer (its C{transport} the socket) or the
    socket itself. A socket that cannot take the bytes keeps them, and a
    failed send is left for the reactor to see on its next turn (the write
    is still registered).
    """
    socket_transport = getattr(transport, "transport", None) or transport
    # IWriteDescriptor does not declare disconnecting, which every one (a FileDescriptor) has.
    if (IWriteDescriptor.providedBy(socket_transport)
            and not socket_transport.disconnecting):  # type: ignore[attr-defined]
        socket_transport.doWrite()


# -- overrides: methods Twisted calls by name on stsd's subclasses ----------------------

#: (Twisted class, method name, stsd's override, why). The test checks each
#: still exists on the Twisted class, takes only C{self}, and is called in
#: the situation stsd overrides it for.
OVERRIDDEN: tuple[tuple[str, str, str, str], ...] = (
    ("twisted.web.server.Request", "_handleStar", "stsd.http.channel.BoundedRequest._handleStar",
     "a '*' request-target is answered by Twisted itself (an empty 405, no "
     "x-amz-request-id); stsd answers it in STS XML. Removed: test_hostile.py's "
     "test_no_server_header and test_star_target_is_sts_xml[GET,POST,OPTIONS] fail"),
    ("twisted.web.http.HTTPChannel", "_respondToBadRequestAndDisconnect",
     "stsd.http.channel._DeadlineChannel._respondToBadRequestAndDisconnect",
     "Twisted's answer to a malformed request is a bare 400 without a body; "
     "stsd's is an STS XML error. Removed: test_hostile.py's "
     "test_raw_bytes_through_the_site and test_oversized_and_malformed_heads_are_sts_xml fail"),
)
