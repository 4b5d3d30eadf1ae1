"""
The shipped set is the tested set: the image installs requirements.lock;
CI installs requirements-test.lock, which is constrained by it. Every
package of this test environment that either lock names must be at the
locked version, and the two locks must agree with each other and with
setup.py.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-c ")):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.!+-]+", version), f"{path.name}: not a pin: {line}"
        key = canonicalize_name(name)
        assert key not in found, f"{path.name}: {name} pinned twice"
        found[key] = version
    return found


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version
            for d in importlib.metadata.distributions()}


class LockTests(SynchronousTestCase):
    def test_test_lock_is_constrained_by_the_runtime_lock(self) -> None:
        lines = [line.strip() for line in TEST_LOCK.read_text(encoding="utf-8").splitlines()]
        assert "-c requirements.lock" in lines
        assert not set(pins(TEST_LOCK)) & set(pins(LOCK)), "a package pinned in both locks"

    def test_environment_has_the_locked_versions(self) -> None:
        """Run .ci/run's install (pip install -r requirements-test.lock -e '.[test]') if this fails."""
        have = installed()
        wrong = {
            name: f"locked {version}, installed {have[name]}"
            for lock in (LOCK, TEST_LOCK)
            for name, version in pins(lock).items()
            if name in have and have[name] != version
        }
        assert not wrong, wrong
        # What the suite imports is all there: no test silently ran on a missing extra.
        missing = [name for name in (*pins(LOCK), *pins(TEST_LOCK)) if name not in have]
        assert not missing, missing

    def test_test_extras_are_pinned(self) -> None:
        test_pins = pins(TEST_LOCK)
        extras = importlib.metadata.metadata("stsd").get_all("Requires-Dist") or []
        for line in extras:
            requirement = Requirement(line)
            if requirement.marker is None or not requirement.marker.evaluate({"extra": "test"}):
                continue
            name = canonicalize_name(requirement.name)
            assert name in test_pins, f"{requirement.name} (extra 'test') not in {TEST_LOCK.name}"
            assert requirement.specifier.contains(test_pins[name], prereleases=True), line

    def test_twisted_is_bounded_to_the_locked_series(self) -> None:
        requirement = next(
            Requirement(line) for line in importlib.metadata.requires("stsd") or []
            if canonicalize_name(Requirement(line).name) == "twisted")
        locked = pins(LOCK)["twisted"]
        assert requirement.specifier.contains(locked)
        major = int(locked.split(".")[0])
        assert not requirement.specifier.contains(f"{major + 1}.1.0"), "no upper bound"
