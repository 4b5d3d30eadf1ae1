"""
The suite's own settings: hypothesis runs derandomized, with no example
database, under .ci/run (tests/conftest.py registers the profile).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci",
                    reason="another hypothesis profile was asked for")
def test_hypothesis_is_deterministic() -> None:
    current = settings.default
    assert current.derandomize is True
    assert current.database is None
    assert current.deadline is None
    assert HealthCheck.too_slow in current.suppress_health_check


def test_ci_runs_the_ci_profile() -> None:
    ci = open(os.path.join(os.path.dirname(__file__), "..", ".ci", "run")).read()
    assert "HYPOTHESIS_PROFILE=ci " in ci
