"""Differential tests of stsd.core.policy against the MinIO-semantics evaluator.

For random bound policies and a random caller Policy, stsd's session policy (computed as
exchange.py computes it) may allow, as MinIO evaluates it, only what the bound policies
and the caller's Policy both allow; and compaction alone never changes what a policy
allows.  The generators mix what broke the algebra before (issue 9): admin statements
with and without a bucket-scoped action or a Resource, KMS, STS and tables statements,
implied-action literals, NotAction/NotResource, Deny, ``*``/``?`` globs, non-ASCII, and
probe paths that ``path.Clean`` changes (repeated and trailing slashes; MinIO refuses
``.`` and ``..`` segments before authorization).

Deterministic (derandomized, no example database); 7,500 + 2,500 examples, counted and
printed (with ``-s``) by the last test of the file.
"""

from __future__ import annotations

import json
from random import Random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from stsd.core.policy import PolicyError, compact, intersect, merge, parse_policy, to_json
from stsd.testing.minio_policy import allowed

S3 = "arn:aws:s3:::"
GROUPS = {
    "s3": ["s3:*", "s3:Get*", "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject",
           "s3:DeleteObject", "s3:ListBucket", "s3:*Object", "s3:*Version", "s3:?etObject",
           "s3:GetObject?ersion", "s3:ListMultipartUploadParts", "s3:Get*Version"],
    "admin": ["admin:*", "*", "admin:CreateUser", "admin:AttachUserOrGroupPolicy",
              "admin:SetBucketQuota", "admin:Export*", "admin:ExportIAM",
              "admin:ExportBucketMetadata", "admin:Set*"],
    "kms": ["kms:*", "kms:CreateKey"],
    "sts": ["sts:AssumeRole", "sts:*"],
    "tables": ["s3tables:*", "s3tables:GetTableData", "s3tables:PutTableData",
               "s3tables:DeleteTable", "s3tables:GetWarehouse"],
}
RESOURCE_OPTIONAL = ("admin", "kms", "sts")
RESOURCES = [S3 + "*", "*", S3 + "b/*", S3 + "b", S3 + "b/x", S3 + "*/x", S3 + "b/?",
             S3 + "b/??", S3 + "b/é", S3 + "b*", S3 + "b/x*", S3 + "b/*x", S3 + "team-a-*",
             S3 + "home/${aws:username}/*", "arn:aws:s3tables:::bucket/wh/table/*",
             S3 + "wh/*", "arn:minio:kms:::k*", S3 + "b/é*", S3 + "?/x"]
CONDITIONS = [{"StringEquals": {"aws:username": "ann"}}, {"Bool": {"aws:SecureTransport": "true"}},
              {"StringLike": {"s3:prefix": "a*"}}, {"StringNotEquals": {"aws:username": "bob"}}]
PROBE_ACTIONS = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                 "s3:ListBucket", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload",
                 "admin:CreateUser", "admin:AttachUserOrGroupPolicy", "admin:SetBucketQuota",
                 "admin:ExportIAM", "admin:ExportBucketMetadata", "admin:ServerInfo",
                 "kms:CreateKey", "sts:AssumeRole", "s3tables:GetTableData",
                 "s3tables:GetTableBucket", "s3tables:GetWarehouse"]
PROBE_RESOURCES = [S3 + "b/k", S3 + "b/x", S3 + "b/x/", S3 + "b//x", S3 + "b/x//", S3 + "b/é",
                   S3 + "b/ab", S3 + "b/a", S3 + "b", S3 + "b/", S3 + "team-a-1", S3 + "c/x",
                   S3 + "c/x/", S3 + "wh/t1/data", "", "arn:minio:kms:::k1",
                   "arn:aws:s3tables:::bucket/wh/table/t1", S3 + "home/ann/x",
                   S3 + "home/bob/x", S3 + "b/xx/", S3 + "b/éx", S3 + "b/x/x"]
CONTEXTS = [{}, {"username": ["ann"], "SecureTransport": ["true"], "prefix": ["ab"]},
            {"username": ["bob"], "prefix": ["x"]}]

COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def _statement(rnd: Random) -> dict[str, Any]:
    group = rnd.choice(sorted(GROUPS))
    s: dict[str, Any] = {"Effect": rnd.choice(["Allow", "Allow", "Deny"])}
    actions = rnd.sample(GROUPS[group], rnd.randint(1, min(3, len(GROUPS[group]))))
    s["NotAction" if rnd.random() < 1 / 8 else "Action"] = actions
    shape = rnd.choice(["NotResource", "none"] + ["Resource"] * 6)
    if shape == "none" and group in RESOURCE_OPTIONAL and "Action" in s:
        pass  # MinIO lets admin, KMS and STS statements omit Resource
    else:
        resources = rnd.sample(RESOURCES, rnd.randint(1, 3))
        s["NotResource" if shape == "NotResource" else "Resource"] = resources
    if rnd.random() < 1 / 6:
        s["Condition"] = rnd.choice(CONDITIONS)
    return s


# Hypothesis picks statements from a fixed pool (and shrinks towards its first ones):
# one draw per statement instead of a dozen keeps its own overhead below the test's.
_POOL_RANDOM = Random(9)
POOL = [_statement(_POOL_RANDOM) for _ in range(5000)]
ALL_PROBES = [(a, r, c) for a in PROBE_ACTIONS for r in PROBE_RESOURCES for c in range(len(CONTEXTS))]


def documents(max_statements: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(st.sampled_from(POOL), min_size=1, max_size=max_statements).map(
        lambda ss: {"Version": "2012-10-17", "Statement": ss})


PROBES = st.integers(0, 2**32).map(lambda seed: Random(seed).sample(ALL_PROBES, 20))
DIFFERENTIAL = settings(derandomize=True, database=None, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def session_policy(bound_docs: list[dict[str, Any]], caller_doc: dict[str, Any]) -> dict[str, Any]:
    """As exchange.py computes it: compact(merge(bound)), then compact(intersect(...))."""
    bound = compact(merge(parse_policy(json.dumps(d)) for d in bound_docs))
    caller = parse_policy(json.dumps(caller_doc))
    return json.loads(to_json(compact(intersect(bound, caller))))


class PolicyDifferentialTests(SynchronousTestCase):
    @settings(DIFFERENTIAL, max_examples=7500)
    @given(st.lists(documents(), min_size=1, max_size=3), documents(), PROBES)
    def test_session_allows_only_what_bound_and_caller_allow(self, 
            bound: list[dict[str, Any]], caller: dict[str, Any],
            probes: list[tuple[str, str, int]]) -> None:
        _count("session within bound and caller")
        session = session_policy(bound, caller)
        for action, resource, c in probes:
            context = CONTEXTS[c]
            if allowed([session], action, resource, context):
                assert allowed(bound, action, resource, context), (action, resource, c, session)
                assert allowed([caller], action, resource, context), (action, resource, c, session)

    @settings(DIFFERENTIAL, max_examples=2500)
    @given(documents(6), PROBES)
    def test_compaction_never_changes_what_minio_allows(self, doc: dict[str, Any],
                                                        probes: list[tuple[str, str, int]]) -> None:
        _count("compaction preserves")
        try:
            compacted = json.loads(to_json(compact(parse_policy(json.dumps(doc)))))
        except PolicyError:  # pragma: no cover - the generators only write valid policies
            raise AssertionError(f"generated an invalid policy: {doc}") from None
        for action, resource, c in probes:
            context = CONTEXTS[c]
            assert allowed([compacted], action, resource, context) == allowed(
                [doc], action, resource, context), (action, resource, c, compacted)

    def test_zz_differential_example_count(self) -> None:
        # Runs after the two above in file order: they ran at least 10,000 examples in all.
        if COUNTS:
            assert sum(COUNTS.values()) >= 10_000, COUNTS
        print(f"\ndifferential examples: {COUNTS} = {sum(COUNTS.values())}")
