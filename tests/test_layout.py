"""
The tests mirror the modules: every module of C{stsd} names, in its first
line, the test modules that cover it (C{# -*- test-case-name: ... -*-}, as
Twisted's own modules do, so C{trial --testmodule} and editors find them),
and every module it names exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests._trial import temporary_directory

ROOT = Path(__file__).resolve().parents[1]
HEADER = re.compile(r"^# -\*- test-case-name: (?P<names>[\w.,]+) -\*-$")


def modules() -> list[Path]:
    """Every module of the package, but the empty package markers."""
    return sorted(p for p in (ROOT / "stsd").rglob("*.py") if p.read_text().strip())


def named_test_modules(path: Path) -> list[str] | None:
    first = path.read_text().split("\n", 1)[0]
    match = HEADER.match(first)
    return match.group("names").split(",") if match else None


def dangling(paths: list[Path], root: Path = ROOT) -> list[str]:
    """The test module names, in the headers of C{paths}, with no module under C{root}."""
    found = []
    for path in paths:
        for name in named_test_modules(path) or []:
            if not name.startswith("tests.test_") or not (
                    root / (name.replace(".", "/") + ".py")).is_file():
                found.append(f"{path.name}: {name}")
    return found


class TestCaseNameTests(SynchronousTestCase):
    def test_every_module_names_its_tests(self) -> None:
        paths = modules()
        self.assertGreater(len(paths), 30)
        missing = [str(p.relative_to(ROOT)) for p in paths if named_test_modules(p) is None]
        self.assertEqual(missing, [])

    def test_every_named_test_module_exists(self) -> None:
        self.assertEqual(dangling(modules()), [])

    def test_a_dangling_name_is_seen(self) -> None:
        """The check above can fail: a header naming a module that is not there."""
        root = temporary_directory(self)
        (root / "tests").mkdir()
        (root / "tests" / "test_here.py").write_text("")
        module = root / "module.py"
        module.write_text("# -*- test-case-name: tests.test_here,tests.test_gone -*-\n")
        self.assertEqual(named_test_modules(module), ["tests.test_here", "tests.test_gone"])
        self.assertEqual(dangling([module], root), ["module.py: tests.test_gone"])
        module.write_text('"""No header."""\n')
        self.assertIsNone(named_test_modules(module))
