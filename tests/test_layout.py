"""
The tests mirror the modules: every module of C{stsd} names, in its first
line, the test modules that cover it (C{# -*- test-case-name: ... -*-}, as
Twisted's own modules do, so C{trial --testmodule} and editors find them),
and every module it names exists.
"""

from __future__ import annotations

import ast
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


# -- the packages and which way they import ---------------------------------------------

#: What each part of C{stsd} may import of C{stsd}. Upstream clients, the
#: identity checks, the in-memory state and the exchange never reach up into
#: the STS port (C{stsd.http}), operations (C{stsd.ops}) or the wiring; the
#: clients of Kubernetes and MinIO know only the model, the errors and each other.
NEVER_BELOW_THE_PORT = ("stsd.http", "stsd.ops", "stsd.tap", "stsd.demo", "stsd.testing")
RULES: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    # part: (the only stsd modules it may import, or None for any; what it never imports)
    "stsd.model": ((), ()),
    "stsd.errors": ((), ()),
    "stsd.twisted_private": ((), ()),
    "stsd.upstream": (("stsd.model", "stsd.errors", "stsd.twisted_private", "stsd.upstream"), ()),
    "stsd.auth": (None, NEVER_BELOW_THE_PORT),
    "stsd.state": (None, NEVER_BELOW_THE_PORT),
    "stsd.core": (None, NEVER_BELOW_THE_PORT),
    "stsd.http": (None, ("stsd.tap", "stsd.demo", "stsd.testing")),
    "stsd.ops": (None, ("stsd.tap", "stsd.demo", "stsd.testing")),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stsd_imports(source: str) -> set[str]:
    """The C{stsd} modules (and packages) that C{source} imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "stsd")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "stsd":
                found.update(f"stsd.{a.name}" for a in node.names)
            elif node.module.startswith("stsd."):
                found.add(node.module)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def wrong_way(name: str, imported: set[str]) -> list[str]:
    """The imports of module C{name} that its part's rule forbids."""
    for part, (allowed, forbidden) in RULES.items():
        if _within(name, (part,)):
            return sorted(i for i in imported
                          if (allowed is not None and not _within(i, allowed))
                          or _within(i, forbidden))
    return []


class ImportDirectionTests(SynchronousTestCase):
    def test_every_part_imports_only_what_its_rule_allows(self) -> None:
        found = {}
        for path in modules():  # an empty package marker imports nothing
            name = module_name(path)
            bad = wrong_way(name, stsd_imports(path.read_text()))
            if bad:
                found[name] = bad
        self.assertEqual(found, {})

    def test_every_package_has_a_rule(self) -> None:
        packages = {module_name(p.parent) for p in (ROOT / "stsd").glob("*/__init__.py")}
        self.assertEqual(sorted(packages - {"stsd.testing"} - set(RULES)), [])

    def test_a_wrong_way_import_is_seen(self) -> None:
        """The check can fail: an upstream client importing the STS wire format."""
        source = ("from stsd import errors\nfrom stsd.http import wire\n"
                  "import stsd.upstream.kube\nfrom stsd.model import Tenant\n")
        imported = stsd_imports(source)
        self.assertEqual(imported, {"stsd.errors", "stsd.http", "stsd.upstream.kube", "stsd.model"})
        self.assertEqual(wrong_way("stsd.upstream.minio", imported), ["stsd.http"])
        self.assertEqual(wrong_way("stsd.core.exchange", {"stsd.ops.audit"}), ["stsd.ops.audit"])
        self.assertEqual(wrong_way("stsd.model", {"stsd.errors"}), ["stsd.errors"])
        self.assertEqual(wrong_way("stsd.http.wire", {"stsd.core.exchange"}), [])


# -- the README's layout table ---------------------------------------------------------

def layout_rows(readme: str) -> list[list[str]]:
    """The paths named in each row of the README's layout table."""
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [re.findall(r"`([^`]+)`", line.split("|")[1])
            for line in table.splitlines() if line.startswith("| `")]


def unlisted(readme: str, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(paths the table names that do not exist, modules of C{stsd} it does not name)."""
    named = [p for row in layout_rows(readme) for p in row]
    missing = [p for p in named if not (root / p.rstrip("/")).exists()]
    folders = tuple(p for p in named if p.endswith("/"))
    modules = [str(p.relative_to(root)) for p in sorted((root / "stsd").rglob("*.py"))
               if p.name != "__init__.py"]
    absent = [m for m in modules if m not in named and not m.startswith(folders)]
    return missing, absent


class LayoutTableTests(SynchronousTestCase):
    def test_the_readme_table_matches_the_tree(self) -> None:
        self.assertEqual(unlisted((ROOT / "README.md").read_text()), ([], []))

    def test_every_package_has_a_row(self) -> None:
        named = {p for row in layout_rows((ROOT / "README.md").read_text()) for p in row}
        packages = {str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "stsd").glob("*/__init__.py")}
        self.assertEqual(sorted(packages - named), [])

    def test_a_stale_table_is_seen(self) -> None:
        root = temporary_directory(self)
        (root / "stsd" / "auth").mkdir(parents=True)
        (root / "stsd" / "auth" / "__init__.py").write_text("")
        (root / "stsd" / "auth" / "jwt.py").write_text("")
        (root / "stsd" / "model.py").write_text("")
        readme = ("## Layout\n\n| path | what |\n|---|---|\n"
                  "| `stsd/model.py`, `stsd/gone.py` | x |\n| `stsd/auth/` | y |\n\n## Next\n")
        self.assertEqual(unlisted(readme, root), (["stsd/gone.py"], []))
        readme = readme.replace("| `stsd/auth/` | y |\n", "")
        self.assertEqual(unlisted(readme, root), (["stsd/gone.py"], ["stsd/auth/jwt.py"]))
