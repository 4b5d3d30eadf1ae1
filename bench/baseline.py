"""
The framework ceiling for the stsd benchmark: a bare Klein resource over TLS
answering C{POST /sts/<namespace>} with a fixed, STS-sized
AssumeRoleWithWebIdentityResponse and an C{x-amz-request-id} header.

Same TLS as stsd (L{stsd.http.tls.server_options}, C{SSL4ServerEndpoint}), same
kind of request (Twisted's HTTP/1.1 channel, keep-alive, Klein routing, the
form body read into memory), no work behind it: nothing stsd does per
request (parsing the form, authenticating, the exchange, the access log and
the audit event) is here.

    python bench/baseline.py --cert tls.crt --key tls.key --port 4300

Prints C{READY <port>} once listening. Run it pinned to a core
(C{taskset -c 0 ...}), as L{bench.run} does.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import react
from twisted.web.server import Request, Site

from stsd.http import tls
# What stsd answers for the benchmark's ServiceAccount, with fixed values of
# the same lengths (stsd.http.wire.success_xml): about 1 KiB, and the same size
# on the wire as stsd's answers in the benchmark (~1,335 bytes with headers).
_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<AssumeRoleWithWebIdentityResult>"
    "<Credentials>"
    "<AccessKeyId>ASIA0123456789ABCDEF</AccessKeyId>"
    "<SecretAccessKey>" + "s" * 40 + "</SecretAccessKey>"
    "<SessionToken>" + "t" * 430 + "</SessionToken>"
    "<Expiration>2030-01-01T00:00:00Z</Expiration>"
    "</Credentials>"
    "<SubjectFromWebIdentityToken>system:serviceaccount:apps:photo-sa</SubjectFromWebIdentityToken>"
    "<Audience>sts.min.io</Audience>"
    "<PackedPolicySize>4</PackedPolicySize>"
    "</AssumeRoleWithWebIdentityResult>"
    "<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
    "</AssumeRoleWithWebIdentityResponse>"
)


class Baseline:
    app = Klein()

    @app.route("/sts/<namespace>", methods=["POST"])
    def sts(self, request: Request, namespace: str) -> bytes:
        request_id = uuid.uuid4().hex.upper()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setHeader(b"content-type", b"text/xml")
        return _BODY.replace("{request_id}", request_id).encode()

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        return b"ready\n"


class QuietSite(Site):
    """No access log: the ceiling is TLS + HTTP + Klein + the response."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


async def main(reactor, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    site = QuietSite(Baseline().app.resource(), reactor=reactor)
    site.displayTracebacks = False
    endpoint = SSL4ServerEndpoint(
        reactor, args.port, tls.server_options(args.cert, args.key), interface=args.interface
    )
    port = await endpoint.listen(site)
    print(f"READY {port.getHost().port}", flush=True)
    await Deferred()  # until killed


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
