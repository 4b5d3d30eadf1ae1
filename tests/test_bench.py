"""
Tests for the benchmark's arithmetic (C{bench/run.py}): what C{--versus}
reports is the median of per-round ratios, over rounds both daemons ran
validly and quietly. The benchmark itself needs wrk and a quiet machine and
is run by hand (C{make bench}, C{make bench-versus}).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.run import VERSUS, Round, _versus_first, parse_args, versus_pairs, versus_table


def _round(mode: str, n: int, rate: float, cpu: float, *, valid: bool = True,
           noisy: bool = False) -> Round:
    values: dict[str, Any] = {f.name: 0 for f in fields(Round) if f.name != "problems"}
    values.update(mode=mode, round=n, credentials_per_s=rate, cpu_ms_per_credential=cpu,
                  p99_ms=10.0, valid=valid, noisy=noisy, errors={})
    return Round(**values)


class VersusTests(SynchronousTestCase):
    def test_ratios_pair_rounds_of_the_same_number(self) -> None:
        mode = "jwks-fresh"
        rounds = [
            _round("baseline", 1, 1000, 0.5),
            _round(mode, 1, 400, 2.0), _round(mode + VERSUS, 1, 200, 4.0),
            _round(mode, 2, 300, 3.0), _round(mode + VERSUS, 2, 300, 3.0),
            _round(mode, 3, 900, 1.0), _round(mode + VERSUS, 3, 100, 9.0, noisy=True),
        ]
        [pair] = versus_pairs(rounds, ["baseline", mode, mode + VERSUS])
        # Round 3 is left out (the other side was noisy): ratios 2.0 and 1.0.
        self.assertEqual(pair["pairs"], 2)
        self.assertAlmostEqual(pair["credentials_per_s"], 1.5)
        self.assertAlmostEqual(pair["cpu_ms_per_credential"], 0.75)
        self.assertAlmostEqual(pair["p99_ms"], 1.0)
        self.assertIn("1.500x", versus_table([pair]))

    def test_no_pair_is_not_a_number(self) -> None:
        rounds = [_round("jwks-reused", 1, 400, 2.0), _round("jwks-reused" + VERSUS, 1, 0, 0, valid=False)]
        [pair] = versus_pairs(rounds, ["jwks-reused", "jwks-reused" + VERSUS])
        self.assertEqual(pair["pairs"], 0)
        self.assertTrue(math.isnan(pair["credentials_per_s"]))
        self.assertEqual(versus_table([pair]).splitlines()[-1].split(), ["jwks-reused", "0", "-", "-", "-"])

    def test_versus_is_an_option(self) -> None:
        self.assertIsNone(parse_args([]).versus)
        self.assertEqual(parse_args(["--versus", "/tmp/old"]).versus, "/tmp/old")

    def test_every_other_round_runs_the_other_checkout_first(self) -> None:
        modes = ["baseline", "jwks-reused", "jwks-reused" + VERSUS, "jwks-fresh", "jwks-fresh" + VERSUS]
        self.assertEqual(_versus_first(modes), ["baseline", "jwks-reused" + VERSUS, "jwks-reused",
                                                "jwks-fresh" + VERSUS, "jwks-fresh"])
        self.assertEqual(_versus_first(["baseline", "jwks-fresh"]), ["baseline", "jwks-fresh"])
