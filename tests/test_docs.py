"""
The README documents what users rely on: every configuration key of the
schema, every error Code stsd answers with, and the two set-up commands
that CI runs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import get_type_hints
from twisted.trial.unittest import SynchronousTestCase

from stsd.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def schema_keys() -> list[str]:
    sections = get_type_hints(Config)
    return [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
            for key in dataclasses.fields(sections[section.name])]


class DocsTests(SynchronousTestCase):
    def test_every_config_key_in_the_reference_table(self) -> None:
        documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", README, re.MULTILINE))
        keys = set(schema_keys())
        assert len(keys) > 20
        assert keys - documented == set(), "undocumented keys"
        assert documented - keys == set(), "documented keys that do not exist"

    def test_every_error_code_in_the_error_table(self) -> None:
        codes = set(re.findall(r'"([A-Z][A-Za-z]+)"', (ROOT / "stsd" / "errors.py").read_text()))
        codes |= {"Throttling", "NotFound", "MethodNotAllowed"}
        table = README.split("## The wire contract", 1)[1].split("### Troubleshooting", 1)[0]
        assert codes - {"Sender", "Receiver"} <= set(re.findall(r"\b[A-Z][A-Za-z]+\b", table))

    def test_ci_runs_the_readme_set_up_commands(self) -> None:
        """.ci/run runs the README's two commands: install + demo, then the tests."""
        ci = [line.replace(" --quiet", "") for line in (ROOT / ".ci" / "run").read_text().splitlines()]
        block = README.split("## Set-up: two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
        commands = [line for line in block.splitlines() if line and not line.startswith("#")]
        assert len(commands) == 2, commands
        install_and_demo, tests = commands
        steps = install_and_demo.split(" && ")
        assert steps[0] == "python3 -m venv .venv" and steps[-1] == ".venv/bin/python -m stsd.demo"
        for step in steps:
            assert step in ci, step
        assert tests == ".venv/bin/python -m pytest -q"
        # Run as is, or with the hypothesis profile named (the default one).
        assert any(line == tests or line.endswith(" " + tests) for line in ci)
        assert ci.index(steps[-1]) < next(i for i, line in enumerate(ci) if line.endswith(tests))

    def test_ci_runs_trial_after_pytest(self) -> None:
        """.ci/run runs trial over the suite once pytest has passed; the README says so."""
        ci = (ROOT / ".ci" / "run").read_text().splitlines()
        pytest_at = next(i for i, line in enumerate(ci) if line.endswith(" -m pytest -q"))
        trial_at = next(i for i, line in enumerate(ci) if line.endswith(" -m twisted.trial tests"))
        assert pytest_at < trial_at
        assert "python -m twisted.trial tests" in README.split("## Tests", 1)[1]


# -- the design document ----------------------------------------------------------------------

DESIGN_DOC = ROOT / "docs" / "design.md"
# The files that may refer to the design document.
REFERRING = [ROOT / "README.md", *sorted((ROOT / "stsd").rglob("*.py")),
             *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*")),
             *sorted((ROOT / "etc").rglob("*")), *sorted((ROOT / "examples").rglob("*.py")),
             ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "setup.py"]


def referring_texts() -> dict[Path, str]:
    return {path: path.read_text(errors="replace") for path in REFERRING
            if path.is_file() and path != Path(__file__).resolve() and "__pycache__" not in path.parts}


def error_table_codes(text: str) -> set[str]:
    rows = re.findall(r"^\| [^|\n]+ \| ([^|\n]+) \| [0-9 /]+ \|$", text, re.MULTILINE)
    return {code for row in rows for code in re.findall(r"\b[A-Z][A-Za-z]+\b", row)}


class DesignDocumentTests(SynchronousTestCase):
    def test_references_to_the_design_document_resolve(self) -> None:
        """Every mention names docs/design.md, and every section it names is a heading there."""
        headings = set(re.findall(r"^#+ (.+?)\s*$", DESIGN_DOC.read_text(), re.MULTILINE))
        referenced = sections = 0
        for path, text in referring_texts().items():
            # The old name of a document that was never in the repository.
            assert not re.search(r"\bDESIGN\b", text), f"{path} refers to DESIGN, not docs/design.md"
            for match in re.finditer(r'docs/design\.md(?:,\s*"([^"]+)")?', text):
                referenced += 1
                if match.group(1) is not None:
                    sections += 1
                    # A name wrapped over comment lines reads as one line.
                    name = re.sub(r"\s*\n\s*#?\s*", " ", match.group(1))
                    assert name in headings, f"{path}: no section {name!r}"
        assert referenced >= 5 and sections >= 3, (referenced, sections)

    def test_the_design_documents_error_table_is_the_readmes(self) -> None:
        design = error_table_codes(DESIGN_DOC.read_text())
        assert design == error_table_codes(README)
        assert {"AccessDenied", "STSNotInitialized", "PackedPolicyTooLarge", "Throttling"} <= design

    def test_the_design_document_knows_what_the_code_does(self) -> None:
        """The points it once got wrong: Secrets, ServiceAccounts, the mode, the order of checks."""
        from stsd.config import TenantsConfig
        from stsd.ops.rbac import PERMISSIONS

        text = DESIGN_DOC.read_text()
        verbs = {p.resource: p.verbs for p in PERMISSIONS}
        assert verbs["secrets"] == ("get",) and "`get` on `secrets`, and nothing else" in text
        assert verbs["serviceaccounts"] == ("list", "watch")
        assert "`list`, `watch` on `serviceaccounts`" in text
        assert TenantsConfig().authorization == "parent-user" and "**parent-user (default).**" in text
        assert "identity, the per-ServiceAccount limit, tenant, bindings, policy, MinIO" in text


# -- the test kit's README section ------------------------------------------------------------


class KitSectionTests(SynchronousTestCase):
    def test_the_readme_shows_the_example_tests_as_they_are(self) -> None:
        section = README.split("## Testing your application against stsd", 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
        assert len(blocks) == 2
        for block, name in zip(blocks, ["test_app_pytest.py", "test_app_trial.py"]):
            assert block.strip() in (ROOT / "examples" / name).read_text(), name
