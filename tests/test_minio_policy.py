"""The MinIO-semantics evaluator in stsd.testing.minio_policy, rule by rule.

Each test names the minio/pkg (commit 876a725) or minio source it re-expresses.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from stsd.testing.minio_policy import allowed, allowed_with_session, path_clean, wildcard_match
from tests._trial import cases, expand

S3 = "arn:aws:s3:::"


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any, resource: Any = None, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": "Allow", "Action": action, **extra}
    if resource is not None:
        s["Resource"] = resource
    return s


def deny(action: Any, resource: Any = None, **extra: Any) -> dict[str, Any]:
    return {**allow(action, resource, **extra), "Effect": "Deny"}


# policy/policy.go Decide: every Deny is checked before any Allow.


# wildcard/match.go Match: byte-wise, case-sensitive, '?' exactly one byte.


# policy/statement.go IsAllowedPtr: NotAction excludes (with implications too).


# policy/actionset.go implicitActions: a literal implies more actions, one step.


# statement.go: ignoreResourceMatch for admin statements without a bucket-scoped action
# (admin-action.go AdminActionsWithResource).


# statement.go: STS statements never check the Resource.


# statement.go isKMS: no Resource, or no request resource: conditions only.


# resource.go Resource.Match: also path.Clean(resource) == pattern.


# condition/stringfunc.go, boolfunc.go, nullfunc.go, numericfunc.go.


# minio cmd/iam.go IsAllowedSTS / isAllowedBySessionPolicy.


@expand
class MinIOPolicyTests(SynchronousTestCase):
    def test_deny_wins_over_allow(self) -> None:
        p = doc(allow("s3:*", S3 + "*"), deny("s3:DeleteObject", S3 + "b/*"))
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([p], "s3:DeleteObject", S3 + "b/k")
        assert allowed([p], "s3:DeleteObject", S3 + "c/k")

    def test_deny_in_another_policy_still_wins(self) -> None:
        assert not allowed([doc(allow("s3:*", S3 + "*")), doc(deny("s3:*", S3 + "b/*"))],
                           "s3:GetObject", S3 + "b/k")

    def test_nothing_allows_by_default(self) -> None:
        assert not allowed([], "s3:GetObject", S3 + "b/k")
        assert not allowed([doc()], "s3:GetObject", S3 + "b/k")

    def test_action_glob_is_case_sensitive(self) -> None:
        p = doc(allow("s3:Get*", S3 + "*"))
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([p], "s3:getobject", S3 + "b/k")
        assert not allowed([doc(allow("S3:GetObject", S3 + "*"))], "s3:GetObject", S3 + "b/k")

    def test_question_mark_is_one_byte(self) -> None:
        assert wildcard_match("a?c", "abc")
        assert not wildcard_match("a?c", "aéc")  # é is two bytes in UTF-8
        assert wildcard_match("a??c", "aéc")
        assert not wildcard_match("a?c", "ac")  # Match, not MatchSimple: '?' is not optional
        assert wildcard_match("", "") and not wildcard_match("", "x")
        assert wildcard_match("*a*a*a*b", "a" * 40 + "b")
        assert not wildcard_match("*a*a*a*b", "a" * 400)  # linear-ish, no blow-up

    def test_question_mark_in_resource_is_one_byte(self) -> None:
        p = doc(allow("s3:GetObject", S3 + "b/?"))
        assert allowed([p], "s3:GetObject", S3 + "b/x")
        assert not allowed([p], "s3:GetObject", S3 + "b/é")

    def test_not_action(self) -> None:
        p = doc({"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": S3 + "*"})
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([p], "s3:DeleteObject", S3 + "b/k")
        q = doc({"Effect": "Allow", "NotAction": "s3:GetObjectVersion", "Resource": S3 + "*"})
        assert not allowed([q], "s3:GetObject", S3 + "b/k")  # actionset.go Match includes implied

    def test_implied_actions(self) -> None:
        p = doc(allow("s3:GetObjectVersion", S3 + "b/*"))
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([doc(allow("s3:GetObjectVers*", S3 + "b/*"))], "s3:GetObject", S3 + "b/k")
        d = doc(allow("s3:*", S3 + "*"), deny("s3:GetObjectVersion", S3 + "b/*"))
        assert not allowed([d], "s3:GetObject", S3 + "b/k")

    def test_s3tables_literals_imply_s3_data_actions(self) -> None:
        p = doc(allow("s3tables:*", "arn:aws:s3tables:::bucket/wh/table/*"))
        # statement.go: a tables statement evaluating an S3 action rewrites the resource
        assert allowed([p], "s3:PutObject", S3 + "wh/uuid/data/f.parquet")
        assert allowed([p], "s3:DeleteObject", S3 + "wh/uuid")
        assert not allowed([p], "s3:PutObject", S3 + "wh")  # no object: no table resource
        assert not allowed([p], "s3:GetBucketPolicy", S3 + "wh/uuid")
        assert allowed([doc(allow("s3tables:GetTableData", "arn:aws:s3tables:::bucket/wh/table/t1"))],
                       "s3:GetObject", S3 + "wh/t1/x")
        # table bucket <-> warehouse counterparts
        assert allowed([doc(allow("s3tables:GetWarehouse", "arn:aws:s3tables:::bucket/wh"))],
                       "s3tables:GetTableBucket", "arn:aws:s3tables:::bucket/wh")

    def test_admin_resource_ignored_without_bucket_scoped_action(self) -> None:
        p = doc(allow(["admin:CreateUser", "admin:AttachUserOrGroupPolicy"], S3 + "team-a-*"))
        assert allowed([p], "admin:CreateUser", "")
        assert allowed([p], "admin:CreateUser", S3 + "other")

    def test_admin_resource_checked_with_bucket_scoped_action(self) -> None:
        p = doc(allow("admin:*", S3 + "team-a-*"))  # admin:* matches admin:SetBucketQuota
        assert not allowed([p], "admin:CreateUser", "")
        assert allowed([p], "admin:SetBucketQuota", S3 + "team-a-1")
        assert not allowed([p], "admin:SetBucketQuota", S3 + "team-b")
        q = doc(allow(["admin:SetBucketQuota", "admin:CreateUser"], S3 + "team-a-*"))
        assert not allowed([q], "admin:CreateUser", "")  # the whole statement is checked

    def test_admin_without_resource(self) -> None:
        assert allowed([doc(allow("admin:*"))], "admin:CreateUser", "")
        assert allowed([doc(allow("admin:*"))], "admin:SetBucketQuota", S3 + "x")
        assert not allowed([doc(allow("s3:*", S3 + "*"), deny("admin:*"))], "admin:ServerInfo", "")

    def test_export_glob_checks_resource_but_export_iam_alone_does_not(self) -> None:
        # admin:Export* matches admin:ExportBucketMetadata (bucket-scoped): Resource checked;
        # admin:ExportIAM alone is not bucket-scoped: Resource ignored.
        assert not allowed([doc(allow("admin:Export*", S3 + "b"))], "admin:ExportIAM", "")
        assert allowed([doc(allow("admin:Export*", S3 + "*"))], "admin:ExportIAM", "")
        assert allowed([doc(allow("admin:ExportIAM", S3 + "b"))], "admin:ExportIAM", "")

    def test_star_action_is_an_admin_statement_with_resource(self) -> None:
        # "*" matches admin actions (AdminAction.IsValid), and admin:SetBucketQuota, so the
        # Resource is checked even for admin:CreateUser.
        p = doc(allow("*", S3 + "b/*"))
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([p], "admin:CreateUser", "")

    def test_sts_resource_ignored(self) -> None:
        assert allowed([doc(allow("sts:AssumeRole", S3 + "nothing"))], "sts:AssumeRole", "")

    def test_kms_statements(self) -> None:
        assert allowed([doc(allow("kms:*"))], "kms:CreateKey", "arn:minio:kms:::k1")
        p = doc(allow("kms:CreateKey", "arn:minio:kms:::team-*"))
        assert allowed([p], "kms:CreateKey", "arn:minio:kms:::team-a")
        assert not allowed([p], "kms:CreateKey", "arn:minio:kms:::other")
        assert allowed([p], "kms:CreateKey", "")  # resource "/": two-phase authorization

    def test_path_clean_semantics(self) -> None:
        assert path_clean("") == "."
        assert path_clean("b/") == "b"
        assert path_clean("b//x/./y/../z/") == "b/x/z"
        assert path_clean("/../x") == "/x"
        assert path_clean("../x/..") == ".."
        assert path_clean("//a") == "/a"  # unlike posixpath.normpath

    def test_resource_matches_on_clean_path(self) -> None:
        p = doc(allow("s3:ListBucket", S3 + "b"))
        assert allowed([p], "s3:ListBucket", S3 + "b")  # resource "b/", cleaned "b"
        assert allowed([p], "s3:ListBucket", S3 + "b/")
        q = doc(allow("s3:GetObject", S3 + "b/x"))
        assert allowed([q], "s3:GetObject", S3 + "b/x/")
        assert allowed([q], "s3:GetObject", S3 + "b//x")
        assert not allowed([doc(allow("s3:GetObject", S3 + "*/x"))], "s3:GetObject", S3 + "b/x/")

    def test_not_resource(self) -> None:
        p = doc({"Effect": "Allow", "Action": "s3:*", "NotResource": S3 + "secret/*"})
        assert allowed([p], "s3:GetObject", S3 + "b/k")
        assert not allowed([p], "s3:GetObject", S3 + "secret/k")

    def test_resource_policy_variables(self) -> None:
        p = doc(allow("s3:*", S3 + "home/${aws:username}/*"))
        assert allowed([p], "s3:GetObject", S3 + "home/ann/x", {"username": ["ann"]})
        assert not allowed([p], "s3:GetObject", S3 + "home/bob/x", {"username": ["ann"]})

    @cases(("operator", "value", "context", "expected"), [
        ("StringEquals", "x", {"prefix": ["x"]}, True),
        ("StringEquals", "x", {"prefix": ["y"]}, False),
        ("StringEquals", "x", {}, False),  # absent key: false
        ("StringNotEquals", "x", {}, True),  # ... and its negation true
        ("StringLike", "a/*", {"prefix": ["a/b"]}, True),
        ("StringLike", "a/*", {}, False),
        ("StringNotLike", "a/*", {}, True),
        ("StringEqualsIgnoreCase", "X", {"prefix": ["x"]}, True),
        ("ForAllValues:StringEquals", ["x", "y"], {}, True),
        ("ForAllValues:StringEquals", ["x", "y"], {"prefix": ["x", "z"]}, False),
    ])
    def test_string_conditions(self, operator: str, value: Any, context: dict[str, list[str]],
                               expected: bool) -> None:
        p = doc(allow("s3:ListBucket", S3 + "b", Condition={operator: {"s3:prefix": value}}))
        assert allowed([p], "s3:ListBucket", S3 + "b", context) is expected

    def test_bool_null_numeric(self) -> None:
        secure = doc(allow("s3:*", S3 + "*", Condition={"Bool": {"aws:SecureTransport": True}}))
        assert allowed([secure], "s3:GetObject", S3 + "b/k", {"SecureTransport": ["true"]})
        assert not allowed([secure], "s3:GetObject", S3 + "b/k", {})
        null = doc(allow("s3:*", S3 + "*", Condition={"Null": {"s3:prefix": "true"}}))
        assert allowed([null], "s3:ListBucket", S3 + "b", {})
        assert not allowed([null], "s3:ListBucket", S3 + "b", {"prefix": ["p"]})
        num = doc(allow("s3:ListBucket", S3 + "*", Condition={"NumericLessThan": {"s3:max-keys": 10}}))
        assert allowed([num], "s3:ListBucket", S3 + "b", {"max-keys": ["5"]})
        assert not allowed([num], "s3:ListBucket", S3 + "b", {"max-keys": ["50"]})
        assert not allowed([num], "s3:ListBucket", S3 + "b", {})

    def test_unmodelled_operator_never_allows(self) -> None:
        cond = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
        assert not allowed([doc(allow("s3:*", S3 + "*", Condition=cond))], "s3:GetObject", S3 + "b/k")
        both = doc(allow("s3:*", S3 + "*"), deny("s3:*", S3 + "*", Condition=cond))
        assert not allowed([both], "s3:GetObject", S3 + "b/k")  # the Deny applies

    def test_session_policy_intersects_with_parent(self) -> None:
        parent = [doc(allow("s3:*", S3 + "b/*"))]
        session = doc(allow("s3:GetObject", S3 + "*"))
        assert allowed_with_session(parent, session, "s3:GetObject", S3 + "b/k")
        assert not allowed_with_session(parent, session, "s3:PutObject", S3 + "b/k")
        assert not allowed_with_session(parent, session, "s3:GetObject", S3 + "c/k")
        assert allowed_with_session(parent, None, "s3:PutObject", S3 + "b/k")
        no_version = {"Statement": [allow("s3:*", S3 + "*")]}
        assert not allowed_with_session(parent, no_version, "s3:GetObject", S3 + "b/k")
