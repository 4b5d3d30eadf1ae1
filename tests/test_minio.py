"""
Tests for L{stsd.upstream.minio}: the MinIO admin and STS client against the strict
fake through C{StubTreq}, and the AssumeRole answer read without and with an
XML tree.

No socket and no global reactor: every deadline runs on a L{Clock}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stsd.model import STS_NAMESPACE, IssuedCredentials, RootCredentials, TenantEndpoint
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.world import PHOTOS, READONLY, READWRITE
from stsd.upstream import http as upstream
from stsd.upstream.http import TreqTransport
from stsd.upstream.minio import MinIOClient, MinIOError, _plain_credentials
from tests._trial import cases, expand

T = TypeVar("T")

TIMEOUT = 5.0


def run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


# -- MinIO -----------------------------------------------------------------------------

ACCESS_KEY = "root-access"
SECRET_KEY = "root-secret-Zq8vX1"
REGION = "eu-west-1"


class MinIOClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.minio = FakeMinIO(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, clock=self.clock,
            policies={"readonly": READONLY, "readwrite": READWRITE},
        )
        self.stub = StubTreq(FakeMinIORouter({"ns": self.minio}))
        self.client = MinIOClient(TreqTransport(self.stub, self.clock), self.clock, TIMEOUT)
        self.tenant = TenantEndpoint(
            name="ns/t", url="https://minio.test/ns",
            credentials=RootCredentials(ACCESS_KEY, SECRET_KEY),
        )

    def test_region(self) -> None:
        self.assertEqual(self.successResultOf(run(self.client.region(self.tenant))), REGION)
        self.assertEqual(self.minio.count("info"), 1)

    def test_canned_policy(self) -> None:
        text = self.successResultOf(run(self.client.canned_policy(self.tenant, REGION, "readonly")))
        self.assertEqual(text, json.dumps(READONLY))
        self.assertEqual(json.loads(text), READONLY)

    def test_canned_policy_missing(self) -> None:
        missing = self.successResultOf(run(self.client.canned_policy(self.tenant, REGION, "nope")))
        self.assertIsNone(missing)
        self.assertEqual(self.minio.count("policy"), 1)

    def test_canned_policy_name_is_encoded(self) -> None:
        # A name with characters SigV4 must percent-encode still signs and is found.
        self.minio.set_policy("team a+b/c", PHOTOS)
        text = self.successResultOf(
            run(self.client.canned_policy(self.tenant, REGION, "team a+b/c")))
        self.assertEqual(json.loads(text), PHOTOS)

    def test_assume_role(self) -> None:
        policy = json.dumps(PHOTOS).encode()
        issued = self.successResultOf(
            run(self.client.assume_role(self.tenant, REGION, policy, 900)))
        [minted] = self.minio.minted
        self.assertEqual(issued, IssuedCredentials(
            minted.access_key, minted.secret_key, minted.session_token, minted.expiration))
        self.assertEqual(minted.policy, PHOTOS)
        self.assertEqual(minted.duration, 900)
        self.assertEqual(issued.expiration.timestamp(), int(self.clock.seconds()) + 900)

    def test_assume_role_wrong_region(self) -> None:
        d = run(self.client.assume_role(self.tenant, "us-east-1", json.dumps(PHOTOS).encode(), 900))
        failure = self.failureResultOf(d, MinIOError)
        # MinIO's STS answers AccessDenied with the S3 error's description.
        self.assertIn("AccessDenied: The authorization header is malformed; the region is wrong",
                      str(failure.value))
        self.assertEqual(self.minio.minted, [])

    def test_assume_role_wrong_secret(self) -> None:
        wrong = "not-the-root-secret-9f"
        tenant = TenantEndpoint("ns/t", "https://minio.test/ns", RootCredentials(ACCESS_KEY, wrong))
        d = run(self.client.assume_role(tenant, REGION, json.dumps(PHOTOS).encode(), 900))
        failure = self.failureResultOf(d, MinIOError)
        message = str(failure.value)
        self.assertIn("AccessDenied: The request signature we calculated does not match", message)
        self.assertNotIn(wrong, message)
        self.assertNotIn(SECRET_KEY, message)
        self.assertEqual(self.minio.minted, [])

    def test_admin_call_wrong_secret(self) -> None:
        tenant = TenantEndpoint("ns/t", "https://minio.test/ns",
                                RootCredentials(ACCESS_KEY, "wrong-secret-77"))
        failure = self.failureResultOf(run(self.client.region(tenant)), MinIOError)
        self.assertIn("HTTP 403", str(failure.value))
        self.assertNotIn("wrong-secret-77", str(failure.value))

    def test_assume_role_without_policy_is_refused_locally(self) -> None:
        d = run(self.client.assume_role(self.tenant, REGION, b"", 900))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.minio.count("assumerole"), 0)

    def test_faults(self) -> None:
        for route, call in [
            ("info", lambda: self.client.region(self.tenant)),
            ("policy", lambda: self.client.canned_policy(self.tenant, REGION, "readonly")),
            ("assumerole", lambda: self.client.assume_role(
                self.tenant, REGION, json.dumps(PHOTOS).encode(), 900)),
        ]:
            for mode in ("500", "error"):
                with self.subTest(route=route, mode=mode):
                    self.minio.fail(route, mode, times=1)
                    failure = self.failureResultOf(run(call()), MinIOError)
                    self.assertIn("HTTP 500", str(failure.value))
                    self.assertIn("ns/t", str(failure.value))
        self.assertEqual(self.minio.minted, [])

    def test_hang_times_out(self) -> None:
        self.minio.fail("assumerole", "hang")
        d = run(self.client.assume_role(self.tenant, REGION, json.dumps(PHOTOS).encode(), 900))
        self.stub.flush()
        self.clock.advance(TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, MinIOError)
        self.assertEqual(str(failure.value),
                         f"AssumeRole on tenant ns/t: no answer within {TIMEOUT:g} seconds")
        self.assertEqual(self.minio.minted, [])


# -- the AssumeRole answer, read without and with an XML tree ----------------------------


_CREDS = ("<AccessKeyId>AK1</AccessKeyId><SecretAccessKey>s+k</SecretAccessKey>"
          "<SessionToken>tok.en</SessionToken><Expiration>2026-11-30T05:00:00Z</Expiration>")


@expand
class AssumeRoleAnswerTests(SynchronousTestCase):
    @cases("body, plain", [
        # MinIO's own shape (AssumedRoleUser first, Expiration before SessionToken).
        (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><AssumedRoleUser><Arn>'
     "</Arn></AssumedRoleUser><Credentials><AccessKeyId>AK1</AccessKeyId><SecretAccessKey>s+k"
     "</SecretAccessKey><Expiration>2026-11-30T05:00:00Z</Expiration><SessionToken>tok.en"
     "</SessionToken></Credentials></AssumeRoleResult></AssumeRoleResponse>", True),
        (f'<?xml version="1.0"?>\n<AssumeRoleResponse xmlns="{STS_NAMESPACE}">\n  <AssumeRoleResult>'
     f"\n    <Credentials>\n      {_CREDS}\n    </Credentials>\n  </AssumeRoleResult>\n"
     "</AssumeRoleResponse>", True),
        # Shapes only an XML parser reads right: left to it.
        (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><Credentials>'
         + _CREDS.replace("s+k", "s&amp;k") + "</Credentials></AssumeRoleResult></AssumeRoleResponse>",
         False),
        (f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult><Credentials>'
         + _CREDS.replace("AK1", "<![CDATA[AK1]]>") + "</Credentials></AssumeRoleResult>"
     "</AssumeRoleResponse>", False),
        (f'<a:AssumeRoleResponse xmlns:a="{STS_NAMESPACE}"><a:AssumeRoleResult><a:Credentials>'
         + _CREDS.replace("<", "<a:").replace("<a:/", "</a:") + "</a:Credentials></a:AssumeRoleResult>"
     "</a:AssumeRoleResponse>", False),
    ])
    def test_assume_role_answer_shapes(self, body: str, plain: bool) -> None:
        response = upstream.Response(200, {}, body.encode())
        tenant = TenantEndpoint("ns/t", "https://minio.test/ns", RootCredentials("a", "b"))
        parsed = MinIOClient._parsed_credentials(tenant, response)
        fast = _plain_credentials(response)
        assert (fast is not None) == plain
        if fast is not None:
            assert fast == parsed
        assert parsed["SecretAccessKey"] in ("s+k", "s&k")

    def test_plain_answer_in_another_namespace_is_not_read(self) -> None:
        body = (b'<AssumeRoleResponse xmlns="urn:other"><AssumeRoleResult><Credentials>'
                + _CREDS.encode() + b"</Credentials></AssumeRoleResult></AssumeRoleResponse>")
        assert _plain_credentials(upstream.Response(200, {}, body)) is None
