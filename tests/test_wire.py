"""
Tests for L{stsd.http.wire}: request parsing in the order of the error table,
and the XML the SDKs read.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from twisted.trial.unittest import SynchronousTestCase

from stsd import errors

from stsd.http import wire
from tests._trial import cases, expand

NS = {"sts": wire.STS_NAMESPACE}


def jwt_like(header: dict | None = None) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'RS256', 'kid': 'k'})}.{part({'sub': 'x'})}.c2ln"


TOKEN = jwt_like()


def form(**params: str) -> bytes:
    base = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "WebIdentityToken": TOKEN}
    base.update(params)
    return urlencode({k: v for k, v in base.items() if v is not None}).encode()


def parse(body: bytes = b"", query: bytes = b"", content_type: str | None = wire.FORM_CONTENT_TYPE,
          max_duration: int = 43200) -> wire.AssumeRoleRequest:
    return wire.parse_request(content_type=content_type, body=body, query=query,
                              default_duration=3600, max_duration=max_duration)


def code_of(**kw) -> tuple[str, int]:
    with pytest.raises(errors.STSError) as raised:
        parse(**kw)
    return raised.value.code, raised.value.status


@expand
class WireTests(SynchronousTestCase):
    def test_form_body(self) -> None:
        request = parse(form(DurationSeconds="900"))
        assert request.token == TOKEN
        assert request.duration_seconds == 900
        assert request.policy is None

    def test_query_string_like_minio_py(self) -> None:
        request = parse(body=b"", query=form(), content_type=None)
        assert request.token == TOKEN
        assert request.duration_seconds == 3600

    def test_body_wins_over_query(self) -> None:
        request = parse(body=form(DurationSeconds="1000"), query=form(DurationSeconds="2000"))
        assert request.duration_seconds == 1000

    @cases("kw, expected", [
        ({"body": b"x" * (64 * 1024 + 1)}, ("InvalidParameterValue", 400)),
        ({"body": form(), "content_type": "application/json"}, ("InvalidParameterValue", 400)),
        ({"body": b"Action=\xff"}, ("InvalidParameterValue", 400)),
        ({"body": form() + b"&Version=2010-01-01"}, ("InvalidParameterValue", 400)),
        ({"body": form(Version=None)}, ("MissingParameter", 400)),
        ({"body": form(Version="2010-01-01")}, ("MissingParameter", 400)),
        ({"body": form(Action="AssumeRole")}, ("InvalidParameterValue", 400)),
        ({"body": form(Action=None)}, ("InvalidParameterValue", 400)),
        ({"body": form(WebIdentityToken=None)}, ("MissingParameter", 400)),
        ({"body": form(WebIdentityToken="")}, ("MissingParameter", 400)),
        ({"body": form(WebIdentityToken="not-a-jwt")}, ("InvalidIdentityToken", 400)),
        ({"body": form(WebIdentityToken="a.b")}, ("InvalidIdentityToken", 400)),
        ({"body": form(WebIdentityToken="e30.e30.e30")}, ("InvalidIdentityToken", 400)),  # no alg
        ({"body": form(WebIdentityToken=TOKEN + "A" * 20_000)}, ("InvalidIdentityToken", 400)),
        ({"body": form(DurationSeconds="abc")}, ("InvalidParameterValue", 400)),
        ({"body": form(DurationSeconds="-900")}, ("InvalidParameterValue", 400)),
        ({"body": form(DurationSeconds="899")}, ("InvalidParameterValue", 400)),
        ({"body": form(DurationSeconds="43201")}, ("InvalidParameterValue", 400)),
        ({"body": form(DurationSeconds="1e4")}, ("InvalidParameterValue", 400)),
        ({"body": form(Policy="{not json")}, ("MalformedPolicyDocument", 400)),
        ({"body": form(Policy='{"Statement": "nope"}')}, ("MalformedPolicyDocument", 400)),
        ({"body": form(Policy="[]")}, ("MalformedPolicyDocument", 400)),
        # over the session limits (stsd.core.policy.check_session_limits): 9 wildcards in a pattern
        ({"body": form(Policy='{"Statement": {"Effect": "Allow", "Action": "s3:*",'
                          ' "Resource": "arn:aws:s3:::*a*a*a*a*a*a*a*a*"}}')},
         ("MalformedPolicyDocument", 400)),
    ])
    def test_error_table_parameter_rows(self, kw: dict, expected: tuple[str, int]) -> None:
        assert code_of(**kw) == expected

    def test_parameters_checked_in_table_order(self) -> None:
        # A request wrong in several ways is judged by the first row it fails.
        assert code_of(body=form(Version=None, Action="x", WebIdentityToken=None)) == (
            "MissingParameter", 400)
        assert code_of(body=form(WebIdentityToken="x", DurationSeconds="1")) == (
            "InvalidIdentityToken", 400)

    def test_duration_bounded_by_configured_maximum(self) -> None:
        assert code_of(body=form(DurationSeconds="7200"), max_duration=3600)[0] == "InvalidParameterValue"
        assert parse(form(DurationSeconds="3600"), max_duration=3600).duration_seconds == 3600

    def test_policy_length_bounded(self) -> None:
        statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}
        long = json.dumps({"Version": "2012-10-17", "Statement": [statement] * 40})
        assert len(long) > 2048
        assert code_of(body=form(Policy=long)) == ("PackedPolicyTooLarge", 400)

    def test_policy_parsed(self) -> None:
        policy = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}]})
        assert parse(form(Policy=policy)).policy is not None

    def test_ignored_parameters_accepted(self) -> None:
        assert parse(form(RoleArn="arn:aws:iam::1:role/x", RoleSessionName="s",
                          ProviderId="p")).token == TOKEN

    def test_repr_hides_token(self) -> None:
        assert TOKEN not in repr(parse(form()))

    @cases("name, ok", [("tenant-1", True), ("Tenant", False), ("a%2Fb", False), ("", False)])
    def test_path_namespace_is_a_dns_label(self, name: str, ok: bool) -> None:
        # The label rule itself is tested with stsd.model.is_dns_label.
        if ok:
            assert wire.check_namespace(name) == name
        else:
            with self.assertRaises(errors.STSError) as raised:
                wire.check_namespace(name)
            assert (raised.exception.code, raised.exception.status) == ("InvalidParameterValue", 400)

    def test_success_xml_shape(self) -> None:
        credentials = wire.IssuedCredentials(
            "AK", "SK<&>", "ST", datetime(2026, 11, 30, 13, 0, 0, 987654, tzinfo=timezone.utc))
        body = wire.success_xml(credentials, subject="system:serviceaccount:apps:sa",
                                audience="sts.min.io", policy_bytes=1024, request_id="RID")
        root = ElementTree.fromstring(body)
        assert root.tag == f"{{{wire.STS_NAMESPACE}}}AssumeRoleWithWebIdentityResponse"
        result = "sts:AssumeRoleWithWebIdentityResult"
        assert root.findtext(f"{result}/sts:Credentials/sts:SecretAccessKey", namespaces=NS) == "SK<&>"
        assert root.findtext(f"{result}/sts:Credentials/sts:Expiration", namespaces=NS) == (
            "2026-11-30T13:00:00Z")
        assert root.findtext(f"{result}/sts:PackedPolicySize", namespaces=NS) == "50"
        assert root.findtext("sts:ResponseMetadata/sts:RequestId", namespaces=NS) == "RID"

    def test_error_xml_shape(self) -> None:
        body = wire.error_xml(errors.access_denied("no <binding>"), "RID")
        root = ElementTree.fromstring(body)
        assert root.findtext("sts:Error/sts:Code", namespaces=NS) == "AccessDenied"
        assert root.findtext("sts:Error/sts:Type", namespaces=NS) == "Sender"
        assert root.findtext("sts:Error/sts:Message", namespaces=NS) == "no <binding>"
        assert root.findtext("sts:RequestId", namespaces=NS) == "RID"
        assert ElementTree.fromstring(wire.error_xml(errors.internal_error("x"), "R")).findtext(
            "sts:Error/sts:Type", namespaces=NS) == "Receiver"
