"""
End-to-end start-up checks of the real daemon: C{twistd -n --pidfile= stsd
--config FILE} with a bad configuration, a kubeconfig or CA file it cannot
use, or a port it cannot bind must stop at once with exit status 1 and
exactly one line on stderr naming the setting and the cause: no Python
traceback, no usage text.

These run real processes (no reactor is needed here), without PYTHONPATH:
the installed plugin is what starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stsd.testing.pki import TestPKI
from stsd.testing.world import free_port, twistd_command
from tests._trial import pytest_only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


def write_kubeconfig(path: Path, ca: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }))
    return path


def valid_config(tmp_path: Path, pki: TestPKI) -> dict[str, Any]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", pki.ca_path)
    return {
        "server": {"interface": "127.0.0.1", "port": free_port(),
                   "tls_cert": str(pki.cert_path), "tls_key": str(pki.key_path)},
        "kubernetes": {"kubeconfig": str(kubeconfig), "timeout_seconds": 5},
        "metrics": {"interface": "127.0.0.1", "port": free_port()},
    }


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    config = tmp_path / "stsd.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


def start(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [*twistd_command(), "-n", "--pidfile=", "stsd", "--config", str(config)]
    # The timeout only stops a daemon that did not refuse (it would run forever).
    return subprocess.run(argv, env=env, cwd=config.parent, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)


def assert_refused(config: Path, line: str) -> str:
    """Exit status 1, and C{line} is all of stderr; returns all the output."""
    done = start(config)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    assert "Usage:" not in output and "--log-format" not in output, output
    assert done.stderr == line + "\n", output
    return output


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_refused(missing, f"stsd: {missing}: cannot read config file (No such file or directory)")


def test_unknown_key(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    document["kubernetes"]["timeout"] = 5
    assert_refused(write(tmp_path, document),
                   "stsd: kubernetes.timeout: unknown key (known: audience, kubeconfig, "
                   "resync_seconds, timeout_seconds, token_cache_seconds, token_verification, "
                   "watch)")


def test_negative_timeout(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    document["kubernetes"]["timeout_seconds"] = -1
    assert_refused(write(tmp_path, document),
                   "stsd: kubernetes.timeout_seconds: must be a positive number of seconds, got -1")


@pytest.mark.parametrize("unreadable", ["missing", "directory"])
def test_unreadable_certificate(tmp_path: Path, pki: TestPKI, unreadable: str) -> None:
    document = valid_config(tmp_path, pki)
    path = tmp_path / "tls.crt"
    if unreadable == "directory":
        path.mkdir()
    document["server"]["tls_cert"] = str(path)
    cause = "No such file or directory" if unreadable == "missing" else "Is a directory"
    assert_refused(write(tmp_path, document), f"stsd: server.tls_cert: cannot read {path} ({cause})")


def test_sts_port_in_use(tmp_path: Path, pki: TestPKI, busy_port: int) -> None:
    document = valid_config(tmp_path, pki)
    document["server"]["port"] = busy_port
    assert_refused(write(tmp_path, document),
                   f"stsd: server.port: cannot listen on 127.0.0.1:{busy_port} "
                   "(Address already in use)")


def test_metrics_port_in_use(tmp_path: Path, pki: TestPKI, busy_port: int) -> None:
    document = valid_config(tmp_path, pki)
    document["metrics"]["port"] = busy_port
    assert_refused(write(tmp_path, document),
                   f"stsd: metrics.port: cannot listen on 127.0.0.1:{busy_port} "
                   "(Address already in use)")


def test_kubeconfig_not_yaml(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    kubeconfig = tmp_path / "kubeconfig"
    # The token must not be quoted back: a kubeconfig holds credentials.
    kubeconfig.write_text("users: [{name: u, user: {token: s3cret-t0ken}\nclusters: [\n")
    output = assert_refused(write(tmp_path, document),
                            f"stsd: kubernetes.kubeconfig: {kubeconfig} is not valid YAML "
                            "(line 2, column 1: expected ',' or '}', but got '<scalar>')")
    assert "s3cret-t0ken" not in output


def test_kubeconfig_certificate_authority_not_pem(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", ca)
    assert_refused(write(tmp_path, document),
                   f"stsd: kubernetes.kubeconfig: the cluster CA certificate of {kubeconfig} "
                   f"is not PEM ({ca})")


def test_tenants_ca_file_not_pem(tmp_path: Path, pki: TestPKI) -> None:
    document = valid_config(tmp_path, pki)
    ca = tmp_path / "tenants-ca.crt"
    ca.write_bytes(b"\x30\x82\x01\x0a not a PEM file")
    document["tenants"] = {"ca_file": str(ca)}
    assert_refused(write(tmp_path, document),
                   f"stsd: tenants.ca_file: no PEM certificate found ({ca})")


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "starts the daemon as a process; run under pytest")
