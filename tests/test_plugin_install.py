"""
The README's start command after the README's install: C{twistd stsd} must
find the plugin from the installed environment alone, with no PYTHONPATH
and from a directory that is not the source tree, for an editable install
(the environment running these tests, as the README and .ci/run make it)
and for a normal C{pip install .} (as the image does).

The normal install goes into a throwaway virtual environment that reaches
this environment's packages (Twisted and the rest) through a C{.pth} line,
built with this environment's setuptools and no network (C{--no-deps
--no-build-isolation --no-index}).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from stsd.testing.world import twistd_command
from tests._trial import pytest_only

ROOT = Path(__file__).resolve().parents[1]
USAGE = "Usage: twistd [options] stsd --config FILE"
TWISTD = "from twisted.scripts.twistd import run; run()"


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the source tree on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)


def test_this_environment_finds_the_plugin(tmp_path: Path) -> None:
    done = run([*twistd_command(), "stsd", "--help"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(USAGE), done.stdout
    assert "Unknown command" not in done.stdout + done.stderr


def test_stsd_check_help(tmp_path: Path) -> None:
    """The console script of the install: help, not a usage error."""
    script = Path(sys.executable).parent / "stsd"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "stsd"]
    done = run([*argv, "check", "--help"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Usage: stsd check --config FILE\n"), done.stdout
    assert "--config=" in done.stdout and "verdict" in done.stdout
    assert done.stderr == ""


def test_normal_install_finds_the_plugin(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    for package in ("stsd", "twisted"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    (site / "_tested_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                "--no-deps", "--no-build-isolation", "--no-index", str(source)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The plugin is the installed copy: the source tree is not on the path.
    assert (site / "twisted" / "plugins" / "stsd_plugin.py").is_file()
    where = run([str(python), "-c",
                 "import stsd, twisted.plugins.stsd_plugin as p; print(stsd.__file__, p.__file__)"],
                tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(site)) for path in where.stdout.split()), where.stdout

    done = run([str(python), "-c", TWISTD, "stsd", "--help"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(USAGE), done.stdout


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "installs the package and runs twistd as a process; run under pytest")
