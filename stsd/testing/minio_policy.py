# -*- test-case-name: tests.test_minio_policy -*-
"""How MinIO decides whether a request is allowed: an evaluator for tests.

Re-expressed from minio/pkg C{policy/} (commit 876a725) and minio C{cmd/iam.go},
written to be compared against, not to be fast.  Source locations are in the comments
and in C{tests/test_minio_policy.py}.  The rules:

 - A policy decides per request: any matching Deny statement denies; else any matching
   Allow allows; else no (C{Policy.Decide}).  Several policies are one union.
 - Actions match as MinIO globs over bytes, case-sensitively (C{wildcard.Match}: C{*}
   any sequence, C{?} exactly one byte).  A literal action also matches its implied
   actions (C{implicitActions}, one step), for Action and NotAction alike.
 - Resources: the request resource is C{bucket/object}, or C{bucket/} for a bucket, or
   C{/} for none (C{Statement.IsAllowedPtr}).  A pattern matches by glob, or when it
   equals C{path.Clean(resource)} (C{Resource.Match}).  The ARN prefix is not compared.
 - The Resource is not checked for an STS statement, for an admin statement none of
   whose actions is bucket-scoped (C{AdminActionsWithResource}), and for a KMS
   statement without Resource or for a request without resource.  A tables statement
   (C{s3tables:}) evaluating a plain S3 action rewrites the resource to
   C{bucket/<bucket>/table/<first object segment>}.
 - Conditions AND together; a key absent from the request makes StringEquals, Like and
   Bool false and their negations true (C{condition/*func.go}).  An operator this
   module does not model never allows: it makes an Allow statement not match and a Deny
   statement match.
 - STS credentials: the parent's policies must allow, and the session policy too when
   there is one (C{isAllowedBySessionPolicy}: a session policy without Version allows
   nothing).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from stsd.core.minio_actions import (
    ADMIN_ACTIONS,
    ADMIN_ACTIONS_WITH_RESOURCE,
    ARN_PREFIXES,
    IMPLIED_ACTIONS,
    KMS_ACTIONS,
    STS_ACTIONS,
    TABLE_ACTIONS,
)

__all__ = ["allowed", "allowed_with_session", "path_clean", "wildcard_match"]

_MEMORY_PREFIX = "arn:minio:memory:::"
# condition/keyname.go: toTrim, the service prefixes stripped from a key's name.
_TRIMMED = frozenset({"aws", "jwt", "ldap", "sts", "svc", "s3", "s3tables", "memory"})
# condition/keyname.go: CommonKeys (the ones substituted as ${...} policy variables).
_COMMON_KEYS = frozenset({
    "s3:signatureversion", "s3:authType", "s3:signatureAge", "s3:x-amz-content-sha256",
    "s3:LocationConstraint", "aws:Referer", "aws:SourceIp", "aws:UserAgent",
    "aws:SecureTransport", "aws:CurrentTime", "aws:EpochTime", "aws:principaltype",
    "aws:userid", "aws:username", "aws:groups", "ldap:user", "ldap:username", "ldap:groups",
})
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


class _Unsupported(Exception):
    """A condition this evaluator does not model."""


def wildcard_match(pattern: str, name: str) -> bool:
    """C{wildcard.Match} (minio/pkg wildcard/match.go) over UTF-8 bytes.

    Go's version recurses on every C{*}; this is the equivalent greedy matcher with one
    backtrack point, so hostile patterns cost O(len(pattern) * len(name)).
    """
    if pattern == "":
        return name == ""
    if pattern == "*":
        return True
    p, s = pattern.encode("utf-8"), name.encode("utf-8")
    pi = si = 0
    star, mark = -1, 0
    while si < len(s):
        if pi < len(p) and p[pi] == 0x2A:  # '*'
            star, mark = pi, si
            pi += 1
        elif pi < len(p) and (p[pi] == 0x3F or p[pi] == s[si]):  # '?' is one byte
            pi += 1
            si += 1
        elif star >= 0:
            pi, mark = star + 1, mark + 1
            si = mark
        else:
            return False
    return all(c == 0x2A for c in p[pi:])


def path_clean(path: str) -> str:
    """Go's C{path.Clean}: lexical, C{/}-separated, C{"."} for an empty result."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _key_name(key: str) -> str:
    """condition/keyname.go C{KeyName.Name}, with the C{/variable} part kept."""
    name, slash, variable = key.partition("/")
    service, colon, rest = name.partition(":")
    if colon and service in _TRIMMED:
        name = rest
    return name + slash + variable


def _canonical_header(name: str) -> str:
    # net/http CanonicalHeaderKey, used as the second lookup (condition/value.go).
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _lookup(context: Mapping[str, Sequence[str]], key: str) -> list[str]:
    name = _key_name(key)
    if name in context:
        return list(context[name])
    return list(context.get(_canonical_header(name), ()))


def _substitute(text: str, context: Mapping[str, Sequence[str]]) -> str:
    """Replace C{${key}} for the common keys that have a non-empty first value."""
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in _COMMON_KEYS or key.startswith("jwt:"):
            values = _lookup(context, key)
            if values and values[0] != "":
                return values[0]
        return match.group(0)

    return _VARIABLE.sub(one, text) if "${" in text else text


def _string_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in cast("Iterable[str]", value)]  # a JSON list of strings


def _field(statement: Mapping[str, Any], name: str) -> Any:
    # encoding/json matches struct fields case-insensitively.
    if name in statement:
        return statement[name]
    for key, value in statement.items():
        if key.lower() == name.lower():
            return value
    return None


def _values(raw: object) -> list[str | int]:
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    values: list[str | int] = []
    for item in items:
        if not isinstance(item, (str, int)):  # bool is an int; floats MinIO refuses
            raise _Unsupported
        values.append(item)
    return values


def _strings(raw: object) -> list[str]:
    items = _values(raw)
    strings = [v for v in items if isinstance(v, str)]
    if len(strings) != len(items):
        raise _Unsupported  # condition/stringfunc.go valuesToStringSlice refuses
    return strings


def _bool_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value in _BOOLS:
        return value
    raise _Unsupported


def _one_condition(operator: str, key: str, raw: object,
                   context: Mapping[str, Sequence[str]]) -> bool:
    qualifier, colon, name = operator.partition(":")
    if not colon:
        qualifier, name = "", operator
    if qualifier not in ("", "ForAnyValue", "ForAllValues"):
        raise _Unsupported
    present = _lookup(context, key)
    if name in ("StringEquals", "StringNotEquals", "StringEqualsIgnoreCase",
                "StringNotEqualsIgnoreCase"):
        # condition/stringfunc.go stringFunc.eval
        wanted = {_substitute(v, context) for v in _strings(raw)}
        have = set(present)
        if "IgnoreCase" in name:
            wanted, have = {v.lower() for v in wanted}, {v.lower() for v in have}
        common = have & wanted
        result = (not have or have == common) if qualifier == "ForAllValues" else bool(common)
        return not result if "Not" in name else result
    if name in ("StringLike", "StringNotLike"):
        # condition/stringfunc.go stringLikeFunc.eval
        patterns = [_substitute(v, context) for v in _strings(raw)]
        result = qualifier == "ForAllValues"
        for value in present:
            hit = any(wildcard_match(p, value) for p in patterns)
            if qualifier == "ForAllValues" and not hit:
                result = False
                break
            if qualifier != "ForAllValues" and hit:
                result = True
                break
        return not result if name == "StringNotLike" else result
    if name == "Bool":
        # condition/boolfunc.go: one value; compares its text with the first request value
        values = _values(raw)
        if len(values) != 1 or key != "aws:SecureTransport":
            raise _Unsupported
        return bool(present) and _bool_text(values[0]) == present[0]
    if name == "Null":
        # condition/nullfunc.go: true asks for the key to be absent
        values = _values(raw)
        if len(values) != 1:
            raise _Unsupported
        text = _bool_text(values[0])
        return (not present) if _BOOLS[text] else bool(present)
    if name.startswith("Numeric"):
        # condition/numericfunc.go: one integer; the first request value, Atoi
        values = _values(raw)
        if len(values) != 1:
            raise _Unsupported
        bound = values[0]
        if isinstance(bound, bool):
            raise _Unsupported
        try:
            limit = int(bound) if isinstance(bound, str) else bound
        except ValueError:
            raise _Unsupported from None
        compare = {
            "NumericEquals": lambda a: a == limit, "NumericNotEquals": lambda a: a != limit,
            "NumericLessThan": lambda a: a < limit, "NumericLessThanEquals": lambda a: a <= limit,
            "NumericGreaterThan": lambda a: a > limit,
            "NumericGreaterThanIfExists": lambda a: a > limit,
            "NumericGreaterThanEquals": lambda a: a >= limit,
        }.get(name)
        if compare is None:
            raise _Unsupported
        if not present:
            return name == "NumericGreaterThanIfExists"
        if not re.fullmatch(r"[+-]?[0-9]+", present[0]):
            return False
        return compare(int(present[0]))
    raise _Unsupported  # IpAddress, Date*, BinaryEquals, unknown names


def _conditions(raw: object, context: Mapping[str, Sequence[str]], effect: str) -> bool:
    """condition/func.go C{Functions.Evaluate}: every operator and key must hold."""
    if not raw:
        return True
    try:
        if not isinstance(raw, Mapping):
            raise _Unsupported
        for operator, keys in raw.items():
            if not isinstance(keys, Mapping):
                raise _Unsupported
            for key, values in keys.items():
                if not _one_condition(operator, key, values, context):
                    return False
        return True
    except _Unsupported:
        return effect == "Deny"  # never allows: an Allow does not match, a Deny does


@functools.lru_cache(maxsize=4096)
def _admin_valid(pattern: str) -> bool:
    # admin-action.go AdminAction.IsValid: the pattern matches some admin action
    return any(wildcard_match(pattern, a) for a in ADMIN_ACTIONS)


@functools.lru_cache(maxsize=4096)
def _admin_has_resource(pattern: str) -> bool:
    # admin-action.go AdminAction.HasResource
    return any(wildcard_match(pattern, r) for r in ADMIN_ACTIONS_WITH_RESOURCE)


def _actions_match(patterns: list[str], action: str) -> bool:
    """policy/actionset.go C{ActionSet.Match}: glob, or an implied action of a literal."""
    return any(wildcard_match(p, action) or action in IMPLIED_ACTIONS.get(p, ()) for p in patterns)


def _split_resource(resource: str) -> tuple[str, str, bool]:
    """An ARN (or bare C{bucket/key}) as MinIO's Args: bucket, object, memory ARN."""
    memory = resource.startswith(_MEMORY_PREFIX)
    for prefix in ARN_PREFIXES:
        if resource.startswith(prefix):
            resource = resource[len(prefix):]
            break
    bucket, _, obj = resource.partition("/")
    return bucket, obj, memory


def _resource_string(bucket: str, obj: str) -> str:
    # policy/statement.go IsAllowedPtr: bucket + "/" + object, or bucket + "/".
    if obj:
        return bucket + ("" if obj.startswith("/") else "/") + obj
    return bucket + "/"


def _is_table_resource(text: str) -> bool:
    # policy/resource.go isTableResourceString
    if not text.startswith("bucket/"):
        return False
    parts = text[len("bucket/"):].split("/")
    return 2 <= len(parts) <= 3 and parts[0] != "" and parts[1] in ("table", "view")


def _pattern_matches(raw: str, candidate: str, context: Mapping[str, Sequence[str]]) -> bool:
    """policy/resource.go C{Resource.Match}."""
    if raw == "*":
        pattern = "*"
    else:
        pattern = raw
        for prefix in ARN_PREFIXES:
            if raw.startswith(prefix):
                pattern = raw[len(prefix):]
                if prefix == _MEMORY_PREFIX:
                    cleaned = path_clean(candidate)
                    candidate = candidate if cleaned == "." else cleaned
                break
        else:
            return False  # ParseResource refuses it; never matches
    pattern = _substitute(pattern, context)
    cleaned = path_clean(candidate)
    if cleaned != "." and cleaned == pattern:
        return True
    return wildcard_match(pattern, candidate)


def _statement_matches(statement: Mapping[str, Any], action: str, bucket: str, obj: str,
                       context: Mapping[str, Sequence[str]]) -> bool:
    """policy/statement.go C{Statement.IsAllowedPtr}'s check(): does it apply?"""
    effect = _field(statement, "Effect")
    actions = _string_list(_field(statement, "Action"))
    not_actions = _string_list(_field(statement, "NotAction"))
    resources = _string_list(_field(statement, "Resource"))
    not_resources = _string_list(_field(statement, "NotResource"))
    if (actions and not _actions_match(actions, action)) or _actions_match(not_actions, action):
        return False
    resource = _resource_string(bucket, obj)
    if any(a in TABLE_ACTIONS for a in actions) and action not in TABLE_ACTIONS:
        if not _is_table_resource(resource):
            if not bucket or not obj:
                return False
            resource = f"bucket/{bucket}/table/{obj.split('/', 1)[0]}"
            if not _is_table_resource(resource):
                return False
    if any(a in KMS_ACTIONS for a in actions) and (resource == "/" or not resources):
        return _conditions(_field(statement, "Condition"), context, effect)
    is_sts = any(a in STS_ACTIONS for a in actions)
    is_admin = any(_admin_valid(a) for a in actions)
    if not (is_sts or (is_admin and not any(_admin_has_resource(a) for a in actions))):
        if resources and not any(_pattern_matches(r, resource, context) for r in resources):
            return False
        if not_resources and any(_pattern_matches(r, resource, context) for r in not_resources):
            return False
    return _conditions(_field(statement, "Condition"), context, effect)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = _field(policy, "Statement")
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [raw]
    return list(raw)


def _decide(policies: Sequence[Mapping[str, Any]], action: str, resource: str,
            context: Mapping[str, Sequence[str]]) -> bool:
    bucket, obj, _ = _split_resource(resource)
    statements = [s for p in policies for s in _statements(p)]
    for s in statements:  # policy/policy.go Decide: Deny first
        if _field(s, "Effect") == "Deny" and _statement_matches(s, action, bucket, obj, context):
            return False
    return any(_field(s, "Effect") == "Allow" and _statement_matches(s, action, bucket, obj, context)
               for s in statements)


def allowed(policies: Sequence[Mapping[str, Any]], action: str, resource: str,
            context: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Whether MinIO allows I{action} on I{resource} under the union of I{policies}.

    @param policies: parsed policy documents (C{{"Version": ..., "Statement": [...]}}).
    @param action: e.g. C{"s3:GetObject"}, C{"admin:CreateUser"}.
    @param resource: the ARN MinIO evaluates: C{"arn:aws:s3:::bucket/key"},
        C{"arn:aws:s3:::bucket"} (a bucket), C{"arn:aws:s3:::"} or C{""} (no resource, as
        for most admin actions).
    @param context: condition values keyed as MinIO keys them (C{"SecureTransport"},
        C{"prefix"}; C{"aws:SecureTransport"} is read the same way).
    """
    ctx = {_key_name(k): list(v) for k, v in (context or {}).items()}
    return _decide(policies, action, resource, ctx)


def allowed_with_session(parent: Sequence[Mapping[str, Any]], session: Mapping[str, Any] | None,
                         action: str, resource: str,
                         context: Mapping[str, Sequence[str]] | None = None) -> bool:
    """STS credentials (minio cmd/iam.go C{IsAllowedSTS}): the parent's policies allow,
    and the session policy allows too when there is one."""
    if not allowed(parent, action, resource, context):
        return False
    if session is None:
        return True
    if not session or (_field(session, "Version") in (None, "")
                       and _field(session, "Statement") is None and _field(session, "ID") is None):
        return True  # an empty policy is no session policy
    if _field(session, "Version") in (None, ""):
        return False  # "Policy without Version string value reject it."
    return allowed([session], action, resource, context)
