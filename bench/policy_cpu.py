"""CPU of the session-policy algebra per request: worst case against a typical Policy.

    .venv/bin/python -m bench.policy_cpu [--rounds N] [--algebra FILE]

Times what the daemon does on the reactor for every distinct caller Policy: wire.py's
parse (and session limits), then exchange.py's intersection with the compacted bound
policies and the compaction of the result.  Each input is timed --rounds times and the
median reported, side by side with a typical Policy, as a ratio.  ``--algebra`` loads
another version of stsd/core/policy.py (e.g. ``git show main:stsd/core/policy.py > /tmp/p.py``)
to compare; its caches are cleared before every run so that each one is a fresh Policy,
as an attacker varying the text would make it.

The worst cases are the most hostile inputs found while fixing issue 9 (finding 4): a
long near-miss pair, many near-miss runs that make a character-by-character matcher retry everywhere, ``?``-heavy
patterns, and as many wildcard patterns as the limits allow against a larger bound set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType

S3 = "arn:aws:s3:::"


def _doc(*statements: dict[str, object]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(actions: object, resources: object) -> dict[str, object]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


BOUND = _doc(
    _allow("s3:*", [S3 + "photos", S3 + "photos/*"]),
    _allow(["s3:GetObject", "s3:ListBucket"], [S3 + f"shared-{i}/*" for i in range(10)]),
    {"Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": S3 + "*"},
    _allow("s3:GetObject", [S3 + "*" + "a" * 40 + "*", S3 + "a" * 60 + "*"]),
)
TYPICAL = _doc(_allow(["s3:GetObject", "s3:PutObject"], S3 + "photos/public/*"))


def _near_miss() -> str:
    inners = [S3 + ("a" * 7 + "b") * 8 + f"{i}z" for i in range(16)]
    outers = [S3 + "*" + "a" * (8 + j) + "*z" for j in range(15)]
    return _doc(_allow("s3:GetObject", inners + outers))


def _long_pair() -> str:
    # One star then 900 a's and a b, against 1,000 a's: a matcher that retries after
    # the star compares ~900 characters at each of ~100 offsets, both ways round.
    return _doc(_allow("s3:GetObject", [S3 + "*" + "a" * 900 + "b*", S3 + "a" * 1000]))


def _question_marks() -> str:
    resources = [S3 + "a?" * 4 + "a" * 60 + f"{i}*" for i in range(8)]
    resources += [S3 + "?a" * 4 + "*" + "a" * 60 + f"{i}" for i in range(6)]
    resources += [S3 + "a" * 70 + f"{i}" for i in range(8)]
    return _doc(_allow(["s3:GetObject", "s3:?etObject"], resources))


def _many_globs() -> str:
    resources = [S3 + f"*{c}*a*a*a*a*a*" for c in "bcdefghijklmn"]
    return _doc(_allow(["s3:Get*", "s3:*Object", "s3:*"], resources))


def _many_prefixes() -> str:
    # As many patterns as 2,048 characters hold: 91 bucket prefixes and three actions.
    return _doc(_allow(["s3:Get*", "s3:Put*", "s3:List*"], [S3 + f"{i:x}/*" for i in range(91)]))


WORST = {"94 prefix patterns": _many_prefixes(),"long near-miss pair": _long_pair(), "near-miss runs": _near_miss(), "? everywhere": _question_marks(),
         "16 wildcard-heavy patterns": _many_globs()}


def _load(path: str | None) -> ModuleType:
    if path is None:
        import stsd.core.policy
        return stsd.core.policy
    spec = importlib.util.spec_from_file_location("algebra_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _request(algebra: ModuleType, bound: object, text: str) -> Callable[[], object]:
    def run() -> object:
        for cached in ("pattern_contains",):  # the old algebra's process-wide cache
            clear = getattr(getattr(algebra, cached, None), "cache_clear", None)
            if clear is not None:
                clear()
        try:
            caller = algebra.parse_policy(text)
            getattr(algebra, "check_session_limits", lambda p: None)(caller)
        except algebra.PolicyError:
            return None  # refused by wire.py: MalformedPolicyDocument, no algebra work
        return algebra.compact(algebra.intersect(bound, caller))
    return run


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--algebra", help="a stsd/core/policy.py to load instead of the installed one")
    args = parser.parse_args(argv)
    algebra = _load(args.algebra)
    bound = algebra.compact(algebra.merge([algebra.parse_policy(BOUND)]))
    typical = _median_ms(_request(algebra, bound, TYPICAL), args.rounds)
    print(f"algebra: {args.algebra or 'stsd.core.policy'}; median of {args.rounds} rounds")
    print(f"{'input':24} {'chars':>5} {'ms':>8} {'x typical':>10}")
    print(f"{'typical Policy':24} {len(TYPICAL):5d} {typical:8.3f} {1:10.1f}")
    worst = 0.0
    for name, text in WORST.items():
        ms = _median_ms(_request(algebra, bound, text), args.rounds)
        worst = max(worst, ms)
        print(f"{name:24} {len(text):5d} {ms:8.3f} {ms / typical:10.1f}")
    print(f"worst/typical: {worst / typical:.1f}x ({worst:.3f} ms vs {typical:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
