"""
End-to-end start-up checks of the real daemon: C{twistd -n --pidfile= stsd
--config FILE} with a bad configuration must stop at once, non-zero, with
one line naming the offending key and no Python traceback.

These run real processes (no reactor is needed here), so they are few.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stsd.testing.pki import TestPKI
from stsd.testing.world import twistd_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


def valid_config(tmp_path: Path, pki: TestPKI) -> dict[str, Any]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority": str(pki.ca_path)}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }))
    return {
        "server": {"interface": "127.0.0.1", "port": 4223,
                   "tls_cert": str(pki.cert_path), "tls_key": str(pki.key_path)},
        "kubernetes": {"kubeconfig": str(kubeconfig), "timeout_seconds": 5},
    }


def start(config: Path) -> tuple[int, str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [*twistd_command(), "-n", "--pidfile=", "stsd", "--config", str(config)]
    began = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=config.parent, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - began
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    return done.returncode, output, elapsed


def assert_refused(config: Path, key: str) -> str:
    code, output, elapsed = start(config)
    assert code != 0, output
    assert elapsed < 20, f"took {elapsed:.1f}s to refuse the configuration"
    assert "Traceback" not in output, output
    naming = [line for line in output.splitlines() if key in line]
    assert len(naming) == 1, output
    return naming[0]


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    line = assert_refused(missing, str(missing))
    assert "cannot read config file" in line


def test_unknown_key(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    document["kubernetes"]["timeout"] = 5
    config = tmp_path / "stsd.yaml"
    config.write_text(yaml.safe_dump(document))
    line = assert_refused(config, "kubernetes.timeout:")
    assert "unknown key" in line


def test_negative_timeout(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    document["kubernetes"]["timeout_seconds"] = -1
    config = tmp_path / "stsd.yaml"
    config.write_text(yaml.safe_dump(document))
    line = assert_refused(config, "kubernetes.timeout_seconds")
    assert "positive number of seconds" in line


@pytest.mark.parametrize("unreadable", ["missing", "directory"])
def test_unreadable_certificate(tmp_path: Path, pki: TestPKI, unreadable: str) -> None:
    document = valid_config(tmp_path, pki)
    path = tmp_path / "tls.crt"
    if unreadable == "directory":
        path.mkdir()
    document["server"]["tls_cert"] = str(path)
    config = tmp_path / "stsd.yaml"
    config.write_text(yaml.safe_dump(document))
    line = assert_refused(config, "server.tls_cert")
    assert f"cannot read {path}" in line
