# -*- test-case-name: tests.test_policy -*-
"""Session policies: parse IAM JSON, intersect, compact, serialize, evaluate.

Issued credentials may do at most what both the bound (canned) policies and the caller's
C{Policy} allow, as MinIO evaluates them.  Where that intersection cannot be computed
exactly, we grant less, never more.  Everything here is pure and deterministic.

MinIO's evaluator has quirks a plain IAM reading misses (minio/pkg C{policy/}; the
tables are in L{stsd.core.minio_actions}, the rules in L{stsd.testing.minio_policy}, against
which C{tests/test_policy_differential.py} checks this module):

 - globs (C{*} any sequence, C{?} one I{byte}) match actions case-sensitively;
 - a literal action may allow further actions (C{s3:GetObjectVersion} also allows
   C{s3:GetObject}; C{s3tables:} literals allow S3 data actions);
 - an admin statement has its Resource checked only if one of its actions is a
   bucket-scoped admin action; STS statements never, KMS statements sometimes, and a
   tables statement rewrites the resource;
 - a resource pattern also matches a request whose C{path.Clean} equals it.

The rules this module follows, so that it never has to guess:

 1. A statement is I{regular} when MinIO checks its Resource for every action and does
    not rewrite it: no STS, KMS or tables action, and if admin, a bucket-scoped one.  A
    regular statement allows (glob of each action pattern plus the implied actions of
    each literal) on (its resources), under its Condition.
 2. Only plain S3 Allows (C{Action} and C{Resource}, every action starting with
    C{s3:}) are ever narrowed, merged or dropped as covered.  An intersection meets two
    regular Allows and keeps only C{s3:} patterns of the result, so the output is again
    plain S3; every containment decision compares implied closures, never bare globs.
 3. Any other Allow (admin, kms, sts, tables, NotAction, NotResource) is never narrowed:
    it survives an intersection only if the other side allows with the identical
    statement, else it is dropped (grant less).
 4. Every Deny statement of both sides is kept verbatim: never merged, narrowed or
    dropped (only exact duplicates go), so it applies exactly as its author wrote it.
 5. Resource containment holds under byte C{?} and C{path.Clean}: besides glob
    containment, the outer pattern must also match every request MinIO could clean into
    the inner one (requests with C{.} or C{..} segments MinIO refuses before
    authorization, C{hasBadPathComponent}).
 6. Work is bounded: glob containment is linear (each C{*}-free segment is found with
    C{str.find}), and a caller's Policy is limited in patterns and wildcards
    (L{check_session_limits}): literal and C{P*} patterns are compared by prefix tests
    in C, and at most 16 complex ones by the linear containment.  Every operation counts
    its work in a L{Work} (tests and the benchmark read it; a limit, if given, turns
    excess into a L{PolicyError}).

L{parse_policy} accepts what MinIO accepts (top-level C{ID}, field names in any case,
admin/STS/KMS statements without Resource) and refuses what it refuses (floats,
C{Version} other than C{2012-10-17}, unknown ARN types, mixed action namespaces).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from stsd.core.minio_actions import (
    ADMIN_ACTIONS,
    ADMIN_ACTIONS_WITH_RESOURCE,
    ARN_PREFIXES,
    IMPLIED_ACTIONS,
    KMS_ACTIONS,
    STS_ACTIONS,
    TABLE_ACTIONS,
)

DEFAULT_VERSION = "2012-10-17"
_EFFECTS = ("Allow", "Deny")
# MinIO's Policy and Statement fields; encoding/json matches names case-insensitively.
_POLICY_KEYS = {"id": "ID", "version": "Version", "statement": "Statement"}
_STATEMENT_KEYS = {k.lower(): k for k in ("Sid", "Effect", "Action", "NotAction", "Resource",
                                          "NotResource", "Condition")}
_S3_ARN = "arn:aws:s3:::"
_INT64 = (-(1 << 63), (1 << 63) - 1)

#: A caller's Policy (L{check_session_limits}): at most this many action and resource
#: patterns in all, this many of them complex (a C{?}, or a C{*} anywhere but once at
#: the end), and this many C{*}/C{?} in one pattern.  Literal and C{P*} patterns are
#: compared by prefix tests in C; these bound the quadratic parts to a few ms.
MAX_SESSION_PATTERNS = 128
MAX_COMPLEX_PATTERNS = 16
MAX_PATTERN_WILDCARDS = 8

#: Canonical Condition: sorted C{(operator, key, values)} triples, the values sorted,
#: deduplicated and JSON-encoded, so that "true", true and 1 stay distinct (True == 1 in
#: Python).  All triples must hold (IAM ANDs operators and keys; values are any-of).
Condition = tuple[tuple[str, str, tuple[str, ...]], ...]


class PolicyError(ValueError):
    """Not a valid IAM policy, or one too complex to work on.  The message is short and
    safe to show to a client."""


class Work:
    """Work counted for one operation: L{spend} raises L{PolicyError} past I{limit}, if any.

    Counting makes the CPU bound testable without a clock: the units are bytes compared
    by glob containment plus one per pattern pair considered.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.spent = 0
        #: Containment answers within this operation (compaction asks the same pairs
        #: on every pass); it lives and dies with the request, so needs no bound.
        self.known: dict[tuple[str, str, str], bool] = {}

    def spend(self, units: int) -> None:
        self.spent += units
        if self.limit is not None and self.spent > self.limit:
            raise PolicyError("the policies are too complex to intersect")


def _short(value: object) -> str:
    """Client input rendered for an error message, bounded in length."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: object, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise PolicyError(f"{what} must be a non-empty string, not {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: Go's JSON decoder would alter them
        raise PolicyError(f"{what} is not valid Unicode") from None
    return value


def _pattern_set(values: Iterable[object], what: str) -> frozenset[str]:
    if isinstance(values, (str, bytes)):  # frozenset("s3:*") would be a set of characters
        raise PolicyError(f"{what} must be a collection of strings")
    return frozenset(_text(v, what) for v in values)


def _condition_values(values: object) -> tuple[str, ...]:
    items = values if isinstance(values, (list, tuple)) else [values]
    if not items:
        raise PolicyError("Condition values must not be empty")
    for item in items:
        if isinstance(item, str):
            _text(item, "a Condition value", empty=True)
        elif not isinstance(item, int):
            # condition/value.go: a value is a bool, an int or a string; 1.5 and 1.0 fail.
            raise PolicyError("Condition values must be strings, integers or booleans")
        elif not _INT64[0] <= item <= _INT64[1]:
            raise PolicyError("a Condition value is out of range")
    return tuple(json.dumps(item, ensure_ascii=False) for item in items)


def _canonical_condition(raw: object) -> Condition | None:
    if raw is None:
        return None
    if isinstance(raw, tuple):  # already flattened by this module: only re-sort
        triples = list(raw)
    elif isinstance(raw, Mapping):
        triples = []
        for operator, keys in raw.items():
            _text(operator, "a Condition operator")
            if not isinstance(keys, Mapping) or not keys:
                raise PolicyError("each Condition operator needs a non-empty object of keys")
            for key, values in keys.items():
                triples.append((operator, _text(key, "a Condition key"), _condition_values(values)))
    else:
        raise PolicyError("Condition must be an object")
    return tuple(sorted((op, key, tuple(sorted(set(vs)))) for op, key, vs in triples)) or None


# -- MinIO's classification of a statement (policy/statement.go) ----------------------


def _minio_glob(pattern: str, name: str) -> bool:
    """C{wildcard.Match}: bytes, case-sensitive."""
    if pattern == "":
        return name == ""
    return _match(_bytes(pattern), _bytes(name), symbolic=False, work=None)


def _is_admin(pattern: str) -> bool:
    # AdminAction.IsValid: the pattern matches some admin action ("*" does).
    if pattern[:1] not in ("a", "*", "?"):
        return False  # cannot match "admin:...": spare the scan of the table
    if "*" not in pattern and "?" not in pattern:
        return pattern in ADMIN_ACTIONS
    return any(_minio_glob(pattern, a) for a in ADMIN_ACTIONS)


def _namespace(pattern: str) -> str:
    """validateActionTypes: which kind of action MinIO takes I{pattern} for."""
    if _is_admin(pattern):
        return "admin"
    if pattern in STS_ACTIONS:
        return "sts"
    if pattern in KMS_ACTIONS:
        return "kms"
    if pattern in TABLE_ACTIONS:
        return "tables"
    return "s3"


def _resource_optional(actions: frozenset[str]) -> bool:
    """Statement.isValid: admin, STS and KMS statements may omit Resource."""
    return any(_namespace(a) in ("admin", "sts", "kms") for a in actions)


def _regular(s: Statement) -> bool:
    """Whether MinIO checks I{s}'s Resource for every action, unrewritten (rule 1)."""
    if s.not_actions is not None or s.not_resources is not None or not s.resources:
        return False
    if any(a in STS_ACTIONS or a in KMS_ACTIONS or a in TABLE_ACTIONS for a in s.actions):
        return False
    if any(_is_admin(a) for a in s.actions):
        return any(a in ADMIN_ACTIONS_WITH_RESOURCE or (("*" in a or "?" in a) and any(
            _minio_glob(a, r) for r in ADMIN_ACTIONS_WITH_RESOURCE)) for a in s.actions)
    return True


def _plain_s3(s: Statement) -> bool:
    """An Allow this module may narrow, merge or drop (rule 2)."""
    return s.effect == "Allow" and _regular(s) and all(a.startswith("s3:") for a in s.actions)


@dataclass(frozen=True)
class Statement:
    """One IAM statement.

    Exactly one of C{actions}/C{not_actions} is in use, likewise for resources: the
    unused positive set is empty, the unused negative one None.  Sets in use are never
    empty, so every statement serializes to something MinIO accepts; the one exception
    is a statement MinIO lets omit its Resource (admin, STS, KMS), where both resource
    sets are unused.  C{condition} may be given as the IAM mapping; it is stored
    canonically (see L{Condition}).
    """

    effect: str
    actions: frozenset[str]
    resources: frozenset[str]
    not_actions: frozenset[str] | None = None
    not_resources: frozenset[str] | None = None
    condition: Condition | None = None
    sid: str | None = None

    def __post_init__(self) -> None:
        if self.effect not in _EFFECTS:
            raise PolicyError(f"Effect must be Allow or Deny, not {_short(self.effect)}")
        for positive, negative, name in (("actions", "not_actions", "Action"),
                                         ("resources", "not_resources", "Resource")):
            pos = _pattern_set(getattr(self, positive), name)
            neg = getattr(self, negative)
            neg = None if neg is None else _pattern_set(neg, "Not" + name)
            object.__setattr__(self, positive, pos)
            object.__setattr__(self, negative, neg)
            if neg == frozenset() or (pos and neg is not None):
                raise PolicyError(f"a statement needs exactly one of {name} and Not{name}")
            if not pos and neg is None and not (name == "Resource"
                                                and _resource_optional(self.actions)):
                raise PolicyError(f"a statement needs exactly one of {name} and Not{name}")
        object.__setattr__(self, "condition", _canonical_condition(self.condition))


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "statements", tuple(self.statements))
        if self.version == "":
            object.__setattr__(self, "version", DEFAULT_VERSION)
        if self.version != DEFAULT_VERSION:  # policy.go isValid
            raise PolicyError(f"unsupported Version {_short(self.version)}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Parsers disagree on which duplicate wins; refuse rather than guess.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise PolicyError("duplicate key in policy JSON")
    return result


def _no_constant(name: str) -> object:
    raise PolicyError(f"{name} is not valid JSON")


def _fields(raw: Mapping[str, object] | Mapping[object, object], known: Mapping[str, str], what: str) -> dict[str, object]:
    """I{raw}'s keys read as encoding/json does (case-insensitively); unknown refused."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        name = known.get(key.lower()) if isinstance(key, str) and key.isascii() else None
        if name is None:
            raise PolicyError(f"unknown {what} key {_short(str(key))}")
        if name in out:
            raise PolicyError("duplicate key in policy JSON")
        out[name] = value
    return out


def _string_list(value: object, what: str) -> Iterable[object]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value:
        return value
    raise PolicyError(f"{what} must be a string or a non-empty list of strings")


def _check_resource(resource: object, what: str) -> None:
    """resource.go ParseResource: a known ARN type or "*", not starting with "/"."""
    text = _text(resource, what)
    if text == "*":
        return
    for prefix in ARN_PREFIXES:
        if text.startswith(prefix):
            if text[len(prefix):].startswith("/"):
                raise PolicyError(f"{what} must not start with '/' after the ARN prefix")
            return
    raise PolicyError(f"{what} must be an arn:aws:s3::: ARN or *")


def _parse_statement(raw: object) -> Statement:
    if not isinstance(raw, Mapping):
        raise PolicyError("each Statement must be an object")
    if any(isinstance(k, str) and k.lower() in ("principal", "notprincipal") for k in raw):
        raise PolicyError("Principal is not allowed in a session policy")
    fields = _fields(raw, _STATEMENT_KEYS, "Statement")
    if "Effect" not in fields:
        raise PolicyError("a Statement needs an Effect")
    sides: dict[str, Iterable[object]] = {}
    if ("Action" in fields) == ("NotAction" in fields):
        raise PolicyError("a Statement needs exactly one of Action and NotAction")
    for name, attr in (("Action", "actions"), ("Resource", "resources")):
        sides[attr] = _string_list(fields[name], name) if name in fields else ()
        if "Not" + name in fields:
            sides["not_" + attr] = _string_list(fields["Not" + name], "Not" + name)
    if "Resource" in fields and "NotResource" in fields:
        raise PolicyError("a Statement needs at most one of Resource and NotResource")
    for attr in ("resources", "not_resources"):
        for resource in sides.get(attr, ()):
            _check_resource(resource, "Resource")
    named = list(sides["actions"]) or list(sides.get("not_actions", ()))
    kinds = {_namespace(_text(a, "Action")) for a in named}
    if len(kinds) > 1:  # statement.go validateActionTypes
        raise PolicyError("a Statement must not mix actions of different services")
    sid = fields.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyError("Sid must be a string")
    # Unchecked JSON values on purpose: Statement.__post_init__ checks and normalizes
    # Effect, the action and resource lists and Condition.
    return Statement(fields["Effect"], condition=fields.get("Condition"), sid=sid,  # type: ignore[arg-type]
                     **sides)  # type: ignore[arg-type]


def parse_policy(document: str | bytes | Mapping[str, object]) -> Policy:
    """Parse and validate an IAM policy document; raise L{PolicyError} if it is not one.

    An empty Statement list is valid and allows nothing (callers decide what that means).
    """
    if isinstance(document, (bytes, bytearray)):
        try:
            document = bytes(document).decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8") from None
    if isinstance(document, str):
        try:
            document = json.loads(document, object_pairs_hook=_unique_keys,
                                  parse_constant=_no_constant)
        except PolicyError:
            raise
        except (ValueError, RecursionError):  # also catches absurdly nested or long numbers
            raise PolicyError("policy is not valid JSON") from None
    if not isinstance(document, Mapping):
        raise PolicyError("policy must be a JSON object")
    fields = _fields(document, _POLICY_KEYS, "policy")
    if "Statement" not in fields:
        raise PolicyError("policy has no Statement")
    if "ID" in fields and not isinstance(fields["ID"], str):
        raise PolicyError("ID must be a string")
    statements = fields["Statement"]
    if isinstance(statements, Mapping):
        statements = [statements]
    elif not isinstance(statements, (list, tuple)):
        raise PolicyError("Statement must be an object or a list of objects")
    version = fields.get("Version", DEFAULT_VERSION)
    if not isinstance(version, str):
        raise PolicyError("Version must be a string")
    return Policy(tuple(_parse_statement(s) for s in statements), version)


def check_session_limits(policy: Policy) -> None:
    """Refuse a caller's Policy too big for the algebra to meet cheaply (rule 6).

    Apply it to client input only: a bound policy MinIO stores must never be refused.
    """
    patterns = [p for s in policy.statements
                for group in (s.actions, s.resources, s.not_actions or (), s.not_resources or ())
                for p in group]
    if len(patterns) > MAX_SESSION_PATTERNS:
        raise PolicyError(f"a Policy may name at most {MAX_SESSION_PATTERNS} actions and resources")
    complex_ = [p for p in patterns
                if "?" in p or "*" in p[:-1] or "${" in p]
    if len(complex_) > MAX_COMPLEX_PATTERNS:
        raise PolicyError(f"a Policy may hold at most {MAX_COMPLEX_PATTERNS} patterns with ? or"
                          " a * before their end")
    for p in complex_:
        if p.count("*") + p.count("?") > MAX_PATTERN_WILDCARDS:
            raise PolicyError(f"a pattern may hold at most {MAX_PATTERN_WILDCARDS} wildcards")


# -- globs ---------------------------------------------------------------------------


def _bytes(text: str) -> str:
    """I{text} as its UTF-8 bytes, one character per byte: MinIO's C{?} is one byte."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def _segment_at(segment: str, text: str, at: int, symbolic: bool) -> bool:
    """Whether I{segment} (no C{*}) matches I{text} at I{at}: C{?} one byte, but in a
    I{symbolic} text never a C{*} (an inner C{*} may stand for many bytes)."""
    if "?" not in segment:
        return text.startswith(segment, at)
    if at + len(segment) > len(text):
        return False
    pieces = segment.split("?")
    for i, piece in enumerate(pieces):  # literal pieces compare in C; one step per "?"
        if not text.startswith(piece, at):
            return False
        at += len(piece)
        if i < len(pieces) - 1:
            if symbolic and text[at] == "*":
                return False
            at += 1
    return True


def _find(segment: str, text: str, start: int, end: int, symbolic: bool,
          work: Work | None) -> int:
    """Leftmost match of I{segment} in C{text[start:end]}, or -1."""
    if work is not None:
        work.spend(end - start + len(segment))
    if "?" not in segment:
        return text.find(segment, start, end)
    anchor = max(segment.split("?"), key=len)  # the longest literal piece, found by str.find
    offset = segment.index(anchor) if anchor else 0
    at = start
    while at + len(segment) <= end:
        if anchor:
            hit = text.find(anchor, at + offset, end - (len(segment) - offset - len(anchor)))
            if hit < 0:
                return -1
            at = hit - offset
        if _segment_at(segment, text, at, symbolic):
            return at
        at += 1
        if work is not None:
            work.spend(len(segment))
    return -1


def _match(pattern: str, text: str, *, symbolic: bool, work: Work | None) -> bool:
    """Glob match in linear time: split I{pattern} at C{*} and place each segment as far
    left as it fits (optimal, since segments have fixed length).  With I{symbolic}, I{text}
    is itself a pattern and only an outer C{*} may absorb an inner C{*}."""
    segments = pattern.split("*")
    if len(segments) == 1:
        if work is not None:
            work.spend(len(text))
        return len(pattern) == len(text) and _segment_at(pattern, text, 0, symbolic)
    first, last = segments[0], segments[-1]
    if len(first) + len(last) > len(text):
        return False
    if not (_segment_at(first, text, 0, symbolic)
            and _segment_at(last, text, len(text) - len(last), symbolic)):
        return False
    at, end = len(first), len(text) - len(last)
    for segment in segments[1:-1]:
        if not segment:
            continue
        hit = _find(segment, text, at, end, symbolic, work)
        if hit < 0:
            return False
        at = hit + len(segment)
    return True


def pattern_matches(pattern: str, value: str, *, case_insensitive: bool = False) -> bool:
    """Glob match of a concrete I{value}: C{*} any sequence, C{?} one UTF-8 byte."""
    if case_insensitive:
        pattern, value = pattern.casefold(), value.casefold()
    return _match(_bytes(pattern), _bytes(value), symbolic=False, work=None)


def _contains(outer: str, inner: str, work: Work | None, case_insensitive: bool = False) -> bool:
    if case_insensitive:
        outer, inner = outer.casefold(), inner.casefold()
    if "${" in outer:
        return outer == inner
    variable = inner.find("${")
    if variable >= 0:
        inner = inner[:variable] + "*"
    return _match(_bytes(outer), _bytes(inner), symbolic=True, work=work)


def pattern_contains(outer: str, inner: str, *, case_insensitive: bool = False) -> bool:
    """Whether every string I{inner} matches is matched by I{outer}.

    Sound, not complete: I{outer} is matched against I{inner} read symbolically (an outer
    C{*} absorbs any inner tokens, an outer C{?} one inner byte or C{?}), so an
    answer of True is always right and False may mean "unsure".  Policy variables
    (C{${aws:username}}) expand to unknown text: in I{inner} everything from the first
    C{$E{lb}} on is read as C{*}; an I{outer} with a variable contains only itself.
    """
    return _contains(outer, inner, None, case_insensitive)


def _memo(kind: str, compute: Callable[[str, str, Work | None], bool]) -> Callable[
        [str, str, Work | None], bool]:
    def contains(outer: str, inner: str, work: Work | None) -> bool:
        if work is None:
            return compute(outer, inner, work)
        key = (kind, outer, inner)
        known = work.known.get(key)
        if known is None:
            known = work.known[key] = compute(outer, inner, work)
        else:
            work.spend(1)
        return known

    return contains


def _action_contains_(outer: str, inner: str, work: Work | None) -> bool:
    """Whether I{outer} allows every action I{inner} allows, implied ones included; and
    glob-contains it under MinIO's case-sensitive and IAM's case-insensitive reading."""
    if outer == inner or (inner in IMPLIED_ACTIONS.get(outer, ()) and inner not in IMPLIED_ACTIONS):
        return True
    if not (_contains(outer, inner, work) and _contains(outer, inner, work, True)):
        return False
    implied = IMPLIED_ACTIONS.get(inner, frozenset()) - IMPLIED_ACTIONS.get(outer, frozenset())
    return all(_minio_glob(outer, x) and pattern_matches(outer, x, case_insensitive=True)
               for x in implied)


def _arn_rest(resource: str) -> str | None:
    """The part of an S3 resource MinIO matches, or None for other ARN types."""
    if resource == "*":
        return "*"
    return resource[len(_S3_ARN):] if resource.startswith(_S3_ARN) else None


def _clean_variants_covered(outer: str, inner: str) -> bool:
    """Whether I{outer} matches every request path that C{path.Clean} turns into I{inner}
    (MinIO's second way to match, resource.go C{Resource.Match}).

    MinIO refuses C{.} and C{..} segments before authorization, so such a path is
    I{inner} with slashes repeated or trailing; every one keeps I{inner}'s bucket and first
    slash.  Sufficient: I{outer} is C{P*} with a wildcard-free P matching that kept prefix.
    """
    keep = inner.index("/") + 1 if "/" in inner else len(inner)
    if "${" in inner:
        keep = min(keep, inner.index("${"))
    head = outer[:-1]
    if not outer.endswith("*") or "*" in head or "${" in head:
        return False
    head, kept = _bytes(head), _bytes(inner[:keep])
    return len(head) <= len(kept) and all(c in ("?", kept[i]) for i, c in enumerate(head))


def _resource_contains_(outer: str, inner: str, work: Work | None) -> bool:
    """Whether I{outer} matches every request I{inner} matches, as MinIO matches: glob with
    byte C{?}, or C{path.Clean(request) == pattern} (rule 5)."""
    if outer == inner:
        return True
    o, i = _arn_rest(outer), _arn_rest(inner)
    if o is None or i is None:
        return False
    if o == "*":
        return True
    # The path.Clean condition is the cheaper and the more selective: it goes first.
    return _clean_variants_covered(o, i) and _contains(o, i, work)


_action_contains = _memo("action", _action_contains_)
_resource_contains = _memo("resource", _resource_contains_)


def _action_may_contain(pattern: str) -> bool:
    """Whether I{pattern} can contain an action pattern other than itself."""
    return "*" in pattern or "?" in pattern or pattern in IMPLIED_ACTIONS


def _resource_may_contain(pattern: str) -> bool:
    """Whether I{pattern} can contain a resource pattern other than itself (see
    L{_clean_variants_covered}: only C{*} and C{P*} forms can)."""
    rest = _arn_rest(pattern)
    return rest is not None and rest.endswith("*") and "*" not in rest[:-1] and "${" not in rest


# -- the evaluator (IAM reading; see stsd.testing.minio_policy for MinIO's) -----------


def _applies(statement: Statement, action: str, resource: str) -> bool:
    def hit(patterns: frozenset[str], value: str, ci: bool) -> bool:
        return any(pattern_matches(p, value, case_insensitive=ci) for p in patterns)

    if statement.not_actions is None:
        action_ok = hit(statement.actions, action, True)
    else:
        action_ok = not hit(statement.not_actions, action, True)
    if statement.not_resources is None:
        return action_ok and (not statement.resources or hit(statement.resources, resource, False))
    return action_ok and not hit(statement.not_resources, resource, False)


def allows(policy: Policy, action: str, resource: str) -> bool:
    """Whether I{policy} allows I{action} on I{resource} in a plain IAM reading: an explicit
    Deny wins, else any matching Allow, else no.

    Conditions are not evaluated: an Allow with a Condition never matches and a Deny
    with one always does.  MinIO's quirks are not modelled here (see
    L{stsd.testing.minio_policy}).
    """
    allowed = False
    for statement in policy.statements:
        if _applies(statement, action, resource):
            if statement.effect == "Deny":
                return False
            allowed = allowed or statement.condition is None
    return allowed


def has_allow(policy: Policy) -> bool:
    """Whether any Allow statement remains (statement sets are never empty, so each one
    can allow something, possibly under its Condition)."""
    return any(s.effect == "Allow" for s in policy.statements)


def merge(policies: Iterable[Policy]) -> Policy:
    """Union of the bound policies: every statement of each, Deny included."""
    return Policy(tuple(s for p in policies for s in p.statements))


# -- the algebra ---------------------------------------------------------------------


def _narrower_of_pairs(
    outer: frozenset[str], inner: frozenset[str], kind: str, work: Work
) -> Iterator[tuple[str, str, str | None]]:
    """Each pair of patterns, one of each side, with the one the other contains (C{None}
    when neither does)."""
    covers = _covers(outer | inner, kind, work)
    for a in outer:
        for b in inner:
            work.spend(1)
            yield a, b, b if covers(a, b) else a if covers(b, a) else None


def _narrow_actions(outer: frozenset[str], inner: frozenset[str], work: Work) -> frozenset[str]:
    """C{s3:} patterns allowing only what a pattern of each side allows (rule 2).

    Of each pair, the one the other contains, implied closures compared; plus an
    implied action of one that the other's glob covers.  Overlapping pairs where neither
    contains the other (s3:Get* and s3:*Object) are dropped: grant less.
    """
    result = set()
    for a, b, narrower in _narrower_of_pairs(outer, inner, "actions", work):
        if narrower is not None:
            result.add(narrower)
        for x, y in ((a, b), (b, a)):
            for implied in IMPLIED_ACTIONS.get(x, ()):
                if _action_contains(y, implied, work):
                    result.add(implied)
    return frozenset(x for x in result if x.startswith("s3:"))


def _narrow_resources(outer: frozenset[str], inner: frozenset[str], work: Work) -> frozenset[str]:
    """Resource patterns matching only what a pattern of each side matches: of each pair,
    the one the other contains."""
    pairs = _narrower_of_pairs(outer, inner, "resources", work)
    return frozenset(narrower for _, _, narrower in pairs if narrower is not None)


def _meet(a: Statement, b: Statement, work: Work) -> list[Statement]:
    """A plain S3 Allow granting only what both regular Allows grant (at most one)."""
    conditions: dict[tuple[str, str], tuple[str, str, tuple[str, ...]]] = {}
    for triple in (a.condition or ()) + (b.condition or ()):
        # One map cannot AND two value sets for one operator and key (compared
        # case-insensitively, as IAM may): drop the pair.
        if conditions.setdefault((triple[0].casefold(), triple[1].casefold()), triple) != triple:
            return []
    resources = _narrow_resources(a.resources, b.resources, work)
    actions = _narrow_actions(a.actions, b.actions, work) if resources else frozenset()
    if not actions:
        return []
    return [Statement("Allow", actions, resources, condition=tuple(conditions.values()))]


def _bare(s: Statement) -> Statement:
    return replace(s, sid=None)


def intersect(bound: Policy, session: Policy, *, work: Work | None = None) -> Policy:
    """What both I{bound} and I{session} allow, compacted (rules 2-4).

    Each pair of regular Allows meets (see L{_narrow_actions}; the Conditions of both
    apply).  Any other Allow survives only where the other side has the identical
    statement.  Every Deny of either side is kept verbatim.
    """
    work = work or Work()
    session = compact(session, work=work)  # the bound side comes compacted (and cached)
    denies = [s for s in bound.statements + session.statements if s.effect == "Deny"]
    b_allows = [s for s in bound.statements if s.effect == "Allow"]
    s_allows = [s for s in session.statements if s.effect == "Allow"]
    s_identical = set(map(_bare, s_allows))
    grants = [s for s in b_allows if not _plain_s3(s) and _bare(s) in s_identical]
    b_regular = [s for s in b_allows if _regular(s)]
    s_regular = [s for s in s_allows if _regular(s)]
    for a in b_regular:
        for b in s_regular:
            grants.extend(_meet(a, b, work))
    return compact(Policy((*denies, *grants)), work=work)


def _literal_head(rest: str | None) -> str | None:
    """P of a C{P*} pattern whose P has no wildcard or variable, else None."""
    if rest is None or not rest.endswith("*"):
        return None
    head = rest[:-1]
    return None if "*" in head or "?" in head or "${" in head else head


def _keep(rest: str) -> int:
    """How much of I{rest} every path MinIO cleans into it keeps (L{_clean_variants_covered})."""
    keep = rest.index("/") + 1 if "/" in rest else len(rest)
    return min(keep, rest.index("${")) if "${" in rest else keep


def _covers(patterns: Iterable[str], kind: str, work: Work) -> Callable[[str, str], bool]:
    """Containment among I{patterns} (C{covers(q, p)}: q contains p): L{_covers_outers}'s."""
    return _covers_outers(patterns, kind, work)[0]


def _covers_outers(
    patterns: Iterable[str], kind: str, work: Work
) -> tuple[Callable[[str, str], bool], dict[str, str | None]]:
    """Containment among I{patterns} (C{covers(q, p)}: q contains p), each pattern
    prepared once.  Only a pattern with a wildcard (or implied actions) contains another
    than its equal; the common C{P*} with a literal P is decided by a prefix test in C;
    any other goes through the general containment, which L{check_session_limits} keeps
    to a few patterns of a caller's Policy.  With it, the patterns that may contain
    another (the outers), each with its literal head (C{None}: no prefix test)."""
    actions = kind == "actions"
    contains = _action_contains if actions else _resource_contains
    may_contain = _action_may_contain if actions else _resource_may_contain
    rest = {p: p if actions else _arn_rest(p) for p in patterns}
    heads = {q: _literal_head(rest[q]) for q in rest if may_contain(q)}

    def covers(q: str, p: str) -> bool:
        if q == p:
            return True
        if q not in heads:
            return False
        head = heads[q]
        if head is None or (actions and q in IMPLIED_ACTIONS):
            return contains(q, p, work)
        inner = rest[p]
        if inner is None or not inner.startswith(head):
            return False
        if actions:  # the implied actions too (see _action_contains)
            return all(x.startswith(head) for x in IMPLIED_ACTIONS.get(p, ()))
        return len(head) <= _keep(inner)

    return covers, heads


def _minimal(patterns: frozenset[str], kind: str, work: Work) -> frozenset[str]:
    """I{patterns} without those another one contains (their union is unchanged).

    A C{P*} outer is looked up by the prefixes of each pattern (linear in its length),
    any other outer tried in turn (few: see L{check_session_limits})."""
    covers, outers = _covers_outers(patterns, kind, work)
    by_head: dict[str, list[str]] = {}
    for q, head in outers.items():
        if head is not None:
            by_head.setdefault(head, []).append(q)
    others = [q for q, head in outers.items() if head is None]
    kept = set(patterns)
    for p in sorted(patterns, key=lambda x: (-len(x), x)):  # of equivalents keep the shortest
        rest = p if kind == "actions" else _arn_rest(p)
        candidates = list(others)
        if rest is not None:
            work.spend(len(rest) + len(others))
            for k in range(len(rest) + 1):
                candidates.extend(by_head.get(rest[:k], ()))
        if any(q != p and q in kept and covers(q, p) for q in candidates):
            kept.discard(p)
    return frozenset(kept)


def _reduce(s: Statement, work: Work) -> Statement:
    return replace(s, actions=_minimal(s.actions, "actions", work),
                   resources=_minimal(s.resources, "resources", work))


def _merge_along(statements: Iterable[Statement], field: str) -> set[Statement]:
    """Union the I{field} ("actions"/"resources") of plain S3 Allows equal in all else."""
    groups: dict[Statement, frozenset[str]] = {}
    for s in statements:
        key = _with(s, field, frozenset({"s3:*"}))  # placeholder, keeps s3: actions
        groups[key] = groups.get(key, frozenset()) | getattr(s, field)
    return {_with(s, field, values) for s, values in groups.items()}


def _with(s: Statement, field: str, values: frozenset[str]) -> Statement:
    """I{s} with its I{field} ("actions"/"resources") replaced by I{values}."""
    if field == "actions":
        return replace(s, actions=values)
    return replace(s, resources=values)


def _subsumes(big: Statement, small: Statement, work: Work) -> bool:
    """Whether plain S3 Allow I{big} allows whenever plain S3 Allow I{small} does."""
    return (
        big.condition in (None, small.condition)
        and all(any(_action_contains(b, x, work) for b in big.actions) for x in small.actions)
        and all(any(_resource_contains(b, x, work) for b in big.resources)
                for x in small.resources)
    )


def _prune(plain: set[Statement], work: Work) -> set[Statement]:
    for s in sorted(plain, key=_sort_key):
        work.spend(len(plain))
        if any(o != s and _subsumes(o, s, work) for o in plain):
            plain.discard(s)
    return plain


def compact(policy: Policy, *, work: Work | None = None) -> Policy:
    """An equivalent, smaller policy in canonical order.

    Drops Sids and duplicates.  Among plain S3 Allows only (rule 2): drops patterns
    another of the same set contains, Allows another unconditioned (or equally
    conditioned) one covers, and merges statements that differ only in their actions or
    only in their resources.  Every other statement is kept as written (rules 3, 4).
    Every step preserves what MinIO allows, under any evaluation of the Conditions.
    """
    work = work or Work()
    statements = {_bare(s) for s in policy.statements}
    kept = {s for s in statements if not _plain_s3(s)}
    minimal: dict[Statement, Statement] = {}  # a reduced statement reduces to itself

    def reduce(s: Statement) -> Statement:
        if s not in minimal:
            minimal[s] = _reduce(s, work)
            minimal[minimal[s]] = minimal[s]
        return minimal[s]

    current = {reduce(s) for s in statements - kept}
    while True:
        merged = _merge_along(_merge_along(current, "resources"), "actions")
        reduced = _prune({reduce(s) for s in merged}, work)
        if reduced == current:  # each step only shrinks the policy, so this terminates
            break
        current = reduced
    return Policy(tuple(sorted(kept | current, key=_sort_key)), policy.version)


def _one_or_list(values: Iterable[object]) -> object:
    items = list(values)
    return items[0] if len(items) == 1 else items


def _statement_json(s: Statement) -> dict[str, object]:
    out: dict[str, object] = {} if s.sid is None else {"Sid": s.sid}
    out["Effect"] = s.effect
    for name, positive, negative in (("Action", s.actions, s.not_actions),
                                     ("Resource", s.resources, s.not_resources)):
        if negative is not None:
            out["Not" + name] = _one_or_list(sorted(negative))
        elif positive:
            out[name] = _one_or_list(sorted(positive))
    if s.condition:
        condition: dict[str, dict[str, object]] = {}
        for operator, key, values in s.condition:
            condition.setdefault(operator, {})[key] = _one_or_list(map(json.loads, values))
        out["Condition"] = condition
    return out


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _sort_key(s: Statement) -> str:
    return _dumps(_statement_json(s))


def to_json(policy: Policy) -> bytes:
    """Compact, deterministic UTF-8 JSON that MinIO accepts as a session policy."""
    statements = [_statement_json(s) for s in policy.statements]
    return _dumps({"Version": policy.version, "Statement": statements}).encode("utf-8")
