# -*- test-case-name: tests.test_testing_kit -*-
"""
The public test kit (C{stsd.testing}): its pytest plugin is installed with
stsd and stays out of the way of suites that do not ask for it, and the two
example tests of the README (C{examples/}) pass when run as an application
would run them, each by its own runner in a subprocess.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

from typing import Any

import pytest
import pytest_twisted
import yaml
from twisted.trial.unittest import SynchronousTestCase

from stsd.testing import pytest_plugin
from stsd.testing.cluster import ROLE_ARN
from tests._trial import pytest_only

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def plugin_fixtures() -> dict[str, object]:
    return {name: value for name, value in vars(pytest_plugin).items()
            if hasattr(value, "_fixture_function_marker") or hasattr(value, "_pytestfixturefunction")
            or type(value).__name__ == "FixtureFunctionDefinition"}


class EntryPointTests(SynchronousTestCase):
    def test_the_plugin_is_a_pytest11_entry_point(self) -> None:
        # Every stsd distribution found, as pytest (pluggy) looks: a stale stsd.egg-info in the
        # source tree may come first on sys.path.
        installed = {ep.value for dist in distributions() if dist.metadata["Name"] == "stsd"
                     for ep in dist.entry_points if ep.group == "pytest11" and ep.name == "stsd"}
        assert installed == {"stsd.testing.pytest_plugin"}, "reinstall: pip install -e ."
        setup = (ROOT / "setup.py").read_text()
        assert '"pytest11": ["stsd = stsd.testing.pytest_plugin"]' in setup


def test_the_plugin_is_loaded_here_and_its_fixtures_are_opt_in(
        request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    assert manager.get_plugin("stsd") is pytest_plugin
    fixtures = plugin_fixtures()
    assert set(fixtures) == {"stsd_config", "stsd_cluster", "stsd_world", "stsd_daemon"}
    # None is autouse: this test names none, and none is among its fixtures.
    assert not set(fixtures) & set(request.fixturenames)
    # No clash with this suite's own fixtures (tests/conftest.py).
    conftest = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    ours = {node.name for node in conftest.body if isinstance(node, ast.FunctionDef)}
    assert {"world", "daemon", "http"} <= ours
    assert not ours & set(fixtures)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=dict(os.environ), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)


def test_the_pytest_example_passes(tmp_path: Path) -> None:
    """As an application runs it: plain pytest, the plugin found by its entry point."""
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--basetemp", str(tmp_path / "base"), str(EXAMPLES / "test_app_pytest.py")],
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout


def test_the_trial_example_passes(tmp_path: Path) -> None:
    """As an application runs it: trial, with a clean reactor after the cluster's cleanup."""
    done = run([sys.executable, "-m", "twisted.trial", "--temp-directory",
                str(tmp_path / "_trial_temp"), "test_app_trial"], cwd=EXAMPLES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED (successes=1)" in done.stdout, done.stdout


# -- the fixtures, used here as an application would use them ---------------------------------


@pytest.fixture(scope="module")
def stsd_config():  # type: ignore[no-untyped-def]
    """Overridden as the plugin's docstring says; merged over the kit's defaults."""
    return {"sts": {"max_duration_seconds": 7200}}


async def exchange_code(cluster: Any, token: str, **extra: Any) -> str:
    """C{"ok"} or the STS error Code of boto3's AssumeRoleWithWebIdentity (in a thread)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from twisted.internet.threads import deferToThread

    def call() -> str:
        sts = boto3.client("sts", endpoint_url=cluster.sts_url(), region_name=cluster.region(),
                           verify=cluster.ca_file,
                           config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
        try:
            sts.assume_role_with_web_identity(RoleArn=ROLE_ARN, RoleSessionName="kit",
                                              WebIdentityToken=token, **extra)
        except ClientError as e:
            return str(e.response["Error"]["Code"])
        return "ok"

    return await deferToThread(call)  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_the_cluster_fixture_binds_unbinds_and_takes_the_config(stsd_cluster: Any) -> None:
    config = yaml.safe_load(stsd_cluster.daemon.config_path.read_text())
    assert config["tenants"]["authorization"] == "parent-user"
    assert config["sts"]["max_duration_seconds"] == 7200
    assert stsd_cluster.world is not None and stsd_cluster.daemon.url.startswith("https://127.0.0.1:")

    token = stsd_cluster.token("kit", "kit-sa")
    assert await exchange_code(stsd_cluster, token) == "AccessDenied"
    await stsd_cluster.bind("kit", policies=["readonly"], namespace="kit", serviceaccount="kit-sa")
    assert await exchange_code(stsd_cluster, token) == "ok"
    assert await exchange_code(stsd_cluster, token, DurationSeconds=7201) == "InvalidParameterValue"
    await stsd_cluster.unbind("kit")
    assert await exchange_code(stsd_cluster, token) == "AccessDenied"
    assert stsd_cluster.leaked_secrets() == []


# For trial: these need pytest itself (its plugin manager, the kit's fixtures, which spawn
# the daemon) or spawn a test runner; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "needs pytest (its plugin manager, the stsd_cluster fixture's daemon) "
               "or spawns a test runner; run under pytest")
