"""
The README's command 1 (C{python -m stsd.demo}), as a process: it exits 0,
says truthfully how the daemon stopped, and the log it names is there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from stsd.demo import DemoFailed, stopped
from tests._trial import pytest_only


class StoppedTests(SynchronousTestCase):
    def test_stop_reported_truthfully(self) -> None:
        assert stopped(0) == "stsd stopped cleanly (exit status 0)"
        assert "SIGTERM" in stopped(-signal.SIGTERM)
        for code in (1, -signal.SIGKILL, None):
            with self.assertRaises(DemoFailed):
                stopped(code)


def test_demo_runs_and_keeps_its_log(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "stsd.demo", str(log)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "refused: " in done.stdout and "AccessDenied" in done.stdout
    # The default mode, its credentials used against S3, narrowed, then revoked.
    assert "tenants.authorization: parent-user" in done.stdout
    assert "PutObject photos/dog.jpg: allowed; GetObject photos/cat.jpg: allowed" in done.stdout
    assert ("PutObject photos/bird.jpg: refused (AccessDenied); GetObject photos/cat.jpg: allowed"
            in done.stdout)
    assert "the credentials of step 1 stopped working" in done.stdout
    assert lines[-1].startswith("stsd stopped cleanly"), done.stdout
    assert lines[-1].endswith(f"; its log: {log}")
    assert "exit code -15" not in done.stdout
    text = log.read_text()
    assert "starting stsd with configuration" in text
    assert "sts.AssumeRoleWithWebIdentity" in text


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "runs the demo as a process; run under pytest")
