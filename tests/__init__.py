"""
The test suite, run by pytest (C{python -m pytest -q}) and by trial
(C{python -m twisted.trial tests}: every test that needs no spawned daemon).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Hypothesis: the same examples on every run (derandomize: each test's seed comes from its
# own code), no example database carried between runs, nothing timed by the wall clock
# (deadline, too_slow), so a run's verdict does not depend on the run or the machine's load.
# HYPOTHESIS_PROFILE=explore draws new random examples (to look for bugs, not for CI).
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
