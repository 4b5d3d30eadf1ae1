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

from stsd.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def schema_keys() -> list[str]:
    sections = get_type_hints(Config)
    return [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
            for key in dataclasses.fields(sections[section.name])]


def test_every_config_key_in_the_reference_table() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", README, re.MULTILINE))
    keys = set(schema_keys())
    assert len(keys) > 20
    assert keys - documented == set(), "undocumented keys"
    assert documented - keys == set(), "documented keys that do not exist"


def test_every_error_code_in_the_error_table() -> None:
    codes = set(re.findall(r'"([A-Z][A-Za-z]+)"', (ROOT / "stsd" / "errors.py").read_text()))
    codes |= {"Throttling", "NotFound", "MethodNotAllowed"}
    table = README.split("## The wire contract", 1)[1].split("### Troubleshooting", 1)[0]
    assert codes - {"Sender", "Receiver"} <= set(re.findall(r"\b[A-Z][A-Za-z]+\b", table))


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(\.venv/bin/python -m pytest[^\n]*)$", README, re.MULTILINE)
    assert commands == [".venv/bin/python -m pytest -q"]
    assert commands[0] in ci.splitlines()
