"""
The suite's own settings: hypothesis runs derandomized, with no example
database, under .ci/run and under trial (tests/__init__.py registers the
profile).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from twisted.trial.unittest import SkipTest, SynchronousTestCase


class SuiteSettingsTests(SynchronousTestCase):
    def test_hypothesis_is_deterministic(self) -> None:
        if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci":
            raise SkipTest("another hypothesis profile was asked for")
        current = settings.default
        assert current.derandomize is True
        assert current.database is None
        assert current.deadline is None
        assert HealthCheck.too_slow in current.suppress_health_check

    def test_ci_runs_the_ci_profile(self) -> None:
        ci = open(os.path.join(os.path.dirname(__file__), "..", ".ci", "run")).read()
        assert "HYPOTHESIS_PROFILE=ci " in ci
