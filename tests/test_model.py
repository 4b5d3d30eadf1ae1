"""
Tests for L{stsd.model}: the ServiceAccount username parser, the DNS-label
check, and the records that must never show a secret in their C{repr}.
"""

from __future__ import annotations

import string
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from stsd.model import (
    Binding,
    Identity,
    IssuedCredentials,
    RootCredentials,
    Tenant,
    TenantEndpoint,
    is_dns_label,
    parse_serviceaccount,
)
from tests._trial import cases, expand

_USERNAME_ALPHABET = string.ascii_letters + string.digits + ":-._ \n"


@expand
class ParseServiceAccountTests(SynchronousTestCase):
    @given(st.one_of(
        st.text(alphabet=_USERNAME_ALPHABET, max_size=80),
        st.text(alphabet=_USERNAME_ALPHABET, max_size=60).map(lambda s: "system:serviceaccount:" + s),
        st.tuples(st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
                  st.from_regex(r"[a-z0-9.-]{1,70}", fullmatch=True))
        .map(lambda p: f"system:serviceaccount:{p[0]}:{p[1]}"),
        st.text(max_size=40),
    ))
    def test_parse_serviceaccount_round_trips(self, username: str) -> None:
        parsed = parse_serviceaccount(username)
        if parsed is not None:
            namespace, name = parsed
            assert f"system:serviceaccount:{namespace}:{name}" == username
            assert ":" not in namespace and ":" not in name
            assert namespace == namespace.lower() and name == name.lower()

    @given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
           st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,3}",
                         fullmatch=True))
    def test_parse_serviceaccount_accepts_valid_names(self, namespace: str, name: str) -> None:
        assert parse_serviceaccount(f"system:serviceaccount:{namespace}:{name}") == (namespace, name)

    @cases("username", [None, 42, b"system:serviceaccount:a:b", ["x"]])
    def test_parse_serviceaccount_not_a_string(self, username: object) -> None:
        assert parse_serviceaccount(username) is None


class RecordTests(SynchronousTestCase):
    def test_username_round_trips_through_the_parser(self) -> None:
        identity = Identity("apps", "photo-sa", pod="pod-1")
        self.assertEqual(identity.username, "system:serviceaccount:apps:photo-sa")
        self.assertEqual(parse_serviceaccount(identity.username), ("apps", "photo-sa"))

    def test_expiry_is_not_part_of_who_it_is(self) -> None:
        self.assertEqual(Identity("apps", "sa", expires=1.0), Identity("apps", "sa", expires=2.0))

    def test_binding_key(self) -> None:
        binding = Binding("tenant-1", "b", "apps", "sa", ("readwrite",))
        self.assertEqual(binding.app_key, ("tenant-1", "apps", "sa"))

    def test_secret_path_keeps_names_one_segment(self) -> None:
        tenant = Tenant("tenant-1", "storage", True, "a/b", {})
        self.assertEqual(tenant.secret_path, "/api/v1/namespaces/tenant-1/secrets/a%2Fb")

    def test_no_secret_in_any_repr(self) -> None:
        root = RootCredentials("ROOTUSER", "root-secret-value")
        records: list[object] = [
            root,
            TenantEndpoint("tenant-1/storage", "https://minio.tenant-1.svc", root),
            Tenant("tenant-1", "storage", True, "env", {"MINIO_ROOT_PASSWORD": "env-secret-value"}),
            IssuedCredentials("AKID", "issued-secret-value", "session-token-value",
                              datetime(2026, 12, 3, tzinfo=timezone.utc)),
        ]
        for record in records:
            for secret in ("root-secret-value", "ROOTUSER", "env-secret-value",
                           "issued-secret-value", "session-token-value"):
                self.assertNotIn(secret, repr(record))
        self.assertIn("AKID", repr(records[-1]))


@expand
class DNSLabelTests(SynchronousTestCase):
    @cases("name, ok", [
        ("tenant-1", True), ("a", True), ("a" * 63, True), ("a" * 64, False), ("Tenant", False),
        ("-a", False), ("a-", False), ("a.b", False), ("..", False), ("a%2Fb", False), ("", False),
        ("a\n", False), ("A", False),
    ])
    def test_dns_label(self, name: str, ok: bool) -> None:
        self.assertIs(is_dns_label(name), ok)
