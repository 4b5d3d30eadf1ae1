# -*- test-case-name: tests.test_policy -*-
"""Session policies: parse IAM JSON, intersect, compact, serialize, evaluate.

Issued credentials may do at most what both the bound (canned) policies and the caller's
``Policy`` allow.  Where that intersection cannot be computed exactly, we grant less,
never more.  Everything here is pure and deterministic.

Patterns are IAM/MinIO globs: ``*`` is any sequence, ``?`` one character.  Actions
compare case-insensitively (IAM), resources case-sensitively.  MinIO itself matches
actions case-sensitively, so whenever this module narrows or drops an action pattern
because another contains it, the containment must hold under both readings.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

DEFAULT_VERSION = "2012-10-17"
_VERSIONS = ("2012-10-17", "2008-10-17")
_EFFECTS = ("Allow", "Deny")
_WILDCARD = re.compile(r"[*?]")
_POLICY_KEYS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                             "Condition"})

#: Canonical Condition: sorted ``(operator, key, values)`` triples, the values sorted,
#: deduplicated and JSON-encoded, so that "true", true and 1 stay distinct (True == 1 in
#: Python).  All triples must hold (IAM ANDs operators and keys; values are any-of).
Condition = tuple[tuple[str, str, tuple[str, ...]], ...]


class PolicyError(ValueError):
    """Not a valid IAM policy.  The message is short and safe to show to a client."""


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
        elif not isinstance(item, int):  # bools are ints; floats refused (1e400 is inf)
            raise PolicyError("Condition values must be strings, integers or booleans")
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


@dataclass(frozen=True)
class Statement:
    """One IAM statement.

    Exactly one of ``actions``/``not_actions`` is in use, likewise for resources: the
    unused positive set is empty, the unused negative one None.  Sets in use are never
    empty, so every statement serializes to something MinIO accepts.  ``condition`` may
    be given as the IAM mapping; it is stored canonically (see `Condition`).
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
            if bool(pos) == (neg is not None) or neg == frozenset():
                raise PolicyError(f"a statement needs exactly one of {name} and Not{name}")
            object.__setattr__(self, positive, pos)
            object.__setattr__(self, negative, neg)
        object.__setattr__(self, "condition", _canonical_condition(self.condition))


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "statements", tuple(self.statements))
        if self.version not in _VERSIONS:
            raise PolicyError(f"unsupported Version {_short(self.version)}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Parsers disagree on which duplicate wins; refuse rather than guess.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise PolicyError("duplicate key in policy JSON")
    return result


def _no_constant(name: str) -> object:
    raise PolicyError(f"{name} is not valid JSON")


def _string_list(value: object, what: str) -> Iterable[object]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value:
        return value
    raise PolicyError(f"{what} must be a string or a non-empty list of strings")


def _parse_statement(raw: object) -> Statement:
    if not isinstance(raw, Mapping):
        raise PolicyError("each Statement must be an object")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError("Principal is not allowed in a session policy")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyError(f"unknown Statement key {_short(sorted(map(str, unknown))[0])}")
    if "Effect" not in raw:
        raise PolicyError("a Statement needs an Effect")
    sides = {}
    for name, attr in (("Action", "actions"), ("Resource", "resources")):
        if (name in raw) == ("Not" + name in raw):
            raise PolicyError(f"a Statement needs exactly one of {name} and Not{name}")
        sides[attr] = _string_list(raw[name], name) if name in raw else ()
        if "Not" + name in raw:
            sides["not_" + attr] = _string_list(raw["Not" + name], "Not" + name)
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyError("Sid must be a string")
    return Statement(raw["Effect"], condition=raw.get("Condition"), sid=sid, **sides)


def parse_policy(document: str | bytes | Mapping[str, object]) -> Policy:
    """Parse and validate an IAM policy document; raise `PolicyError` if it is not one.

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
    unknown = set(document) - _POLICY_KEYS
    if unknown:
        raise PolicyError(f"unknown policy key {_short(sorted(map(str, unknown))[0])}")
    if "Statement" not in document:
        raise PolicyError("policy has no Statement")
    statements = document["Statement"]
    if isinstance(statements, Mapping):
        statements = [statements]
    elif not isinstance(statements, (list, tuple)):
        raise PolicyError("Statement must be an object or a list of objects")
    version = document.get("Version", DEFAULT_VERSION)  # Policy refuses other versions
    return Policy(tuple(_parse_statement(s) for s in statements), version)


def _glob(pattern: str, text: str, hole: str) -> bool:
    """Whether *pattern* matches all of *text*; ``?`` matches one character except *hole*.

    The greedy single-backtrack algorithm is O(len(pattern) * len(text)) at worst, where
    a regular expression could backtrack exponentially on a hostile ``*a*a*a*b``.
    """
    wild = _WILDCARD.search(pattern)
    if wild is None:
        return pattern == text
    # Literal head and tail must match outright: rejects most pairs without the loop.
    tail = pattern[max(pattern.rfind("*"), pattern.rfind("?")) + 1:]
    if not (text.startswith(pattern[:wild.start()]) and text.endswith(tail)):
        return False
    p = t = mark = wild.start()
    star, n, m = -1, len(pattern), len(text)
    while t < m:
        if p < n and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < n and (text[t] != hole if pattern[p] == "?" else pattern[p] == text[t]):
            p += 1
            t += 1
        elif star >= 0:  # let the last * absorb one more character, retry after it
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    return not pattern[p:].strip("*")


def pattern_matches(pattern: str, value: str, *, case_insensitive: bool = False) -> bool:
    """IAM glob match of a concrete *value*: ``*`` any sequence, ``?`` one character."""
    if case_insensitive:
        pattern, value = pattern.casefold(), value.casefold()
    return _glob(pattern, value, hole="")


@functools.lru_cache(maxsize=1 << 16)
def pattern_contains(outer: str, inner: str, *, case_insensitive: bool = False) -> bool:
    """Whether every string *inner* matches is matched by *outer*.

    Sound, not complete: *outer* is matched against *inner* read symbolically (an outer
    ``*`` absorbs any inner tokens, an outer ``?`` one inner character or ``?``), so an
    answer of True is always right and False may mean "unsure".  Policy variables
    (``${aws:username}``) expand to unknown text: in *inner* everything from the first
    ``${`` on is read as ``*``; an *outer* with a variable contains only itself.
    """
    if case_insensitive:
        outer, inner = outer.casefold(), inner.casefold()
    if "${" in outer:
        return outer == inner
    variable = inner.find("${")
    if variable >= 0:
        inner = inner[:variable] + "*"
    return _glob(outer, inner, hole="*")


def _action_contains(outer: str, inner: str) -> bool:
    # IAM reads actions case-insensitively, MinIO case-sensitively: be right under both.
    return pattern_contains(outer, inner) and pattern_contains(outer, inner, case_insensitive=True)


def _applies(statement: Statement, action: str, resource: str) -> bool:
    def hit(patterns: frozenset[str], value: str, ci: bool) -> bool:
        return any(pattern_matches(p, value, case_insensitive=ci) for p in patterns)

    if statement.not_actions is None:
        action_ok = hit(statement.actions, action, True)
    else:
        action_ok = not hit(statement.not_actions, action, True)
    if statement.not_resources is None:
        return action_ok and hit(statement.resources, resource, False)
    return action_ok and not hit(statement.not_resources, resource, False)


def allows(policy: Policy, action: str, resource: str) -> bool:
    """Whether *policy* allows *action* on *resource*: an explicit Deny wins, else any
    matching Allow, else no.

    Conditions are not evaluated: an Allow with a Condition never matches and a Deny
    with one always does.  That errs towards "denied", which is what the safety property
    tests need (a result that this evaluator allows is allowed whatever the context).
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


def _narrower(outer: frozenset[str], inner: frozenset[str],
              contains: Callable[[str, str], bool]) -> frozenset[str]:
    # Of each pair, the pattern the other contains; overlapping pairs where neither
    # contains the other (s3:Get* and s3:*Object) are dropped: grant less.
    result = set()
    for a in outer:
        for b in inner:
            if contains(a, b):
                result.add(b)
            elif contains(b, a):
                result.add(a)
    return frozenset(result)


def _service(action: str) -> str:
    return action.split(":", 1)[0]


def _meet(a: Statement, b: Statement) -> list[Statement]:
    """Allows granting what both plain Allows grant: one statement per action service,
    since MinIO refuses a statement mixing e.g. ``admin:`` and ``s3:`` actions."""
    conditions: dict[tuple[str, str], tuple[str, str, tuple[str, ...]]] = {}
    for triple in (a.condition or ()) + (b.condition or ()):
        # One map cannot AND two value sets for one operator and key (compared
        # case-insensitively, as IAM may): drop the pair.
        if conditions.setdefault((triple[0].casefold(), triple[1].casefold()), triple) != triple:
            return []
    resources = _narrower(a.resources, b.resources, pattern_contains)
    actions = _narrower(a.actions, b.actions, _action_contains) if resources else frozenset()
    return [
        Statement("Allow", frozenset(x for x in actions if _service(x) == service),
                  resources, condition=tuple(conditions.values()))
        for service in sorted({_service(x) for x in actions})
    ]


def _plain_allow(s: Statement) -> bool:
    return s.effect == "Allow" and s.not_actions is None and s.not_resources is None


def intersect(bound: Policy, session: Policy) -> Policy:
    """What both *bound* and *session* allow, compacted.

    Each pair of plain Allows meets (see `_narrower`; the Conditions of both apply).  An
    Allow with NotAction or NotResource, on either side, contributes nothing: its meet is
    not expressible as an Allow, so we grant less.  Every Deny of either side is kept.
    """
    bound, session = compact(bound), compact(session)  # fewer pairs to meet
    denies = [s for s in bound.statements + session.statements if s.effect == "Deny"]
    grants = [
        grant
        for a in filter(_plain_allow, bound.statements)
        for b in filter(_plain_allow, session.statements)
        for grant in _meet(a, b)
    ]
    return compact(Policy((*denies, *grants)))


def _minimal(patterns: frozenset[str] | None,
             contains: Callable[[str, str], bool]) -> frozenset[str] | None:
    """*patterns* without those another one contains (their union is unchanged)."""
    if patterns is None:
        return None
    kept = set(patterns)
    for p in sorted(patterns, key=lambda x: (-len(x), x)):  # of equivalents keep the shortest
        if any(q != p and contains(q, p) for q in kept):
            kept.discard(p)
    return frozenset(kept)


def _reduce(s: Statement) -> Statement:
    return replace(
        s,
        actions=_minimal(s.actions, _action_contains),
        not_actions=_minimal(s.not_actions, _action_contains),
        resources=_minimal(s.resources, pattern_contains),
        not_resources=_minimal(s.not_resources, pattern_contains),
    )


def _merge_along(statements: Iterable[Statement], field: str) -> set[Statement]:
    """Union the positive *field* ("actions"/"resources") of statements equal in all else.

    Not* sets are never unioned: the union of two complements is not the complement of
    the union.  Actions are merged only within one service (see `_meet`).
    """
    groups: dict[tuple[Statement, frozenset[str]], frozenset[str]] = {}
    result = set()
    for s in statements:
        values: frozenset[str] = getattr(s, field)
        if not values:
            result.add(s)
            continue
        services = frozenset(map(_service, values)) if field == "actions" else frozenset()
        key = (replace(s, **{field: frozenset({"*"})}), services)  # "*": placeholder
        groups[key] = groups.get(key, frozenset()) | values
    result.update(replace(s, **{field: values}) for (s, _), values in groups.items())
    return result


def _subsumes(big: Statement, small: Statement) -> bool:
    """Whether plain Allow *big* allows whenever plain Allow *small* does."""
    return (
        big.condition in (None, small.condition)
        and all(any(_action_contains(b, x) for b in big.actions) for x in small.actions)
        and all(any(pattern_contains(b, x) for b in big.resources) for x in small.resources)
    )


def _prune_allows(statements: set[Statement]) -> set[Statement]:
    plain = set(filter(_plain_allow, statements))
    for s in sorted(plain, key=_sort_key):
        if any(o != s and _subsumes(o, s) for o in plain):
            plain.discard(s)
    return plain | {s for s in statements if not _plain_allow(s)}


def compact(policy: Policy) -> Policy:
    """An equivalent, smaller policy in canonical order.

    Drops Sids, duplicates, patterns contained in another of the same set, and Allows
    another unconditioned (or equally conditioned) Allow covers; merges statements
    that differ only in their actions or only in their resources.  A Deny is never
    dropped for being covered by another.  Every step preserves what is allowed, under
    any evaluation of the Conditions.
    """
    current = {_reduce(replace(s, sid=None)) for s in policy.statements}
    while True:
        merged = _merge_along(_merge_along(current, "resources"), "actions")
        reduced = _prune_allows({_reduce(s) for s in merged})
        if reduced == current:  # each step only shrinks the policy, so this terminates
            return Policy(tuple(sorted(current, key=_sort_key)), policy.version)
        current = reduced


def _one_or_list(values: Iterable[object]) -> object:
    items = list(values)
    return items[0] if len(items) == 1 else items


def _statement_json(s: Statement) -> dict[str, object]:
    out: dict[str, object] = {} if s.sid is None else {"Sid": s.sid}
    out["Effect"] = s.effect
    for name, positive, negative in (("Action", s.actions, s.not_actions),
                                     ("Resource", s.resources, s.not_resources)):
        if negative is None:
            out[name] = _one_or_list(sorted(positive))
        else:
            out["Not" + name] = _one_or_list(sorted(negative))
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
