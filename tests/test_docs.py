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
