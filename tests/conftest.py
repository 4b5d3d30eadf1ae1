"""
Shared fixtures: the simulated cluster on loopback and the real daemon.

The daemon is a C{twistd} process; the fakes run in this process's
reactor (pytest-twisted), so blocking SDK clients (boto3, minio-py) are
run in threads with C{deferToThread}.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from stsd.testing.world import Daemon, World
from stsd.upstream.http import close_connections

# The hypothesis profiles are registered in tests/__init__.py, for trial too.

# The secrets scan of each module's world is appended here (for the record).
SCAN_REPORT = os.path.join(tempfile.gettempdir(), "stsd-secret-scan.txt")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    w = World.start(tmp_path_factory.mktemp("world"), reactor)
    yield w
    pytest_twisted.blockon(Deferred.fromCoroutine(w.stop()))
    # Every secret of the test world, searched for in every daemon log line.
    count, lines, leaks = w.scan_logs()
    with open(SCAN_REPORT, "a") as report:
        report.write(f"{request.module.__name__}: {count} secrets, {lines} log lines, "
                     f"leaks: {leaks or 'none'}\n")
    assert not leaks, f"secrets found in {leaks}"


@pytest.fixture(scope="module")
def daemon(world: World) -> Daemon:
    return pytest_twisted.blockon(Deferred.fromCoroutine(world.start_daemon()))


@pytest.fixture(scope="module")
def http(world: World):
    """A treq client trusting only the test world's CA."""
    client = world.https_client()
    yield client
    pytest_twisted.blockon(close_connections(client))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many hypothesis examples each test of tests/test_hostile.py ran, when it ran."""
    hostile = sys.modules.get("tests.test_hostile")
    examples = getattr(hostile, "EXAMPLES", None)
    if not examples:
        return
    # Names with a colon count a subset of their test's examples.
    total = sum(n for name, n in examples.items() if ":" not in name)
    terminalreporter.write_line(f"hypothesis examples run in tests/test_hostile.py: {total}")
    for name, count in sorted(examples.items()):
        terminalreporter.write_line(f"  {name}: {count}")
