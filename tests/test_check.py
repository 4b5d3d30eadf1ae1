"""
C{stsd check} against the simulated cluster: all green, then a missing
permission, an unreachable tenant and a bad config turn it red.
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest_twisted
import yaml
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from stsd.ops.check import run_check
from stsd.ops.rbac import PERMISSIONS
from stsd.testing.world import World, free_port
from tests._trial import pytest_only, pytest_twisted_functions, temporary_directory

# config, TLS, API server, one SelfSubjectAccessReview per permission,
# list Tenants, the two tenants.
CHECKS = 3 + sum(len(p.verbs) for p in PERMISSIONS) + 1 + 2


def write_config(world: World, path: Path, **overrides) -> str:
    path.write_text(yaml.safe_dump(world.config(free_port(), **overrides)))
    return str(path)


def rows(output: str) -> dict[str, str]:
    table = {}
    for line in output.splitlines()[1:-1]:
        name, _, rest = line.partition("  ")
        table[name.strip()] = rest.strip()
    return table


class CheckTests(TestCase):
    """C{stsd check}, in this process, against a test world on loopback (no daemon)."""

    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.world = World.start(self.directory / "world", reactor)

    async def tearDown(self) -> None:
        await self.world.stop()

    async def test_check_passes_on_the_demo_cluster(self) -> None:
        out = StringIO()
        assert await run_check(reactor, write_config(self.world, self.directory / "c.yaml"), out)
        text = out.getvalue()
        assert text.splitlines()[-1] == f"verdict: OK (all {CHECKS} checks passed)", text
        table = rows(text)
        assert table["RBAC create tokenreviews.authentication.k8s.io"].startswith("ok")
        assert table["RBAC get secrets"].startswith("ok")
        assert "region us-east-1" in table["tenant tenant-1/storage"]
        assert "region eu-west-1" in table["tenant tenant-2/archive"]
        assert self.world.client_token not in text

    async def test_check_reports_a_missing_permission(self) -> None:
        self.world.kubernetes.revoke("sts.min.io", "policybindings", "watch")
        try:
            out = StringIO()
            assert not await run_check(reactor, write_config(self.world, self.directory / "c.yaml"), out)
        finally:
            self.world.kubernetes.granted.add(("sts.min.io", "policybindings", "watch"))
        text = out.getvalue()
        assert rows(text)["RBAC watch policybindings.sts.min.io"].startswith("FAIL")
        assert text.splitlines()[-1] == f"verdict: FAILED (1 of {CHECKS} checks failed)", text

    async def test_check_asks_only_for_get_on_secrets(self) -> None:
        # Least privilege: stsd check asks for get on Secrets and nothing more,
        # and a missing get is a failure (the tenants' credentials are read by name).
        self.world.kubernetes.revoke("", "secrets", "get")
        try:
            out = StringIO()
            assert not await run_check(reactor, write_config(self.world, self.directory / "c.yaml"), out)
        finally:
            self.world.kubernetes.granted.add(("", "secrets", "get"))
        table = rows(out.getvalue())
        assert table["RBAC get secrets"].startswith("FAIL")
        assert "RBAC list secrets" not in table and "RBAC watch secrets" not in table
        assert table["tenant tenant-1/storage"].startswith("FAIL")

    async def test_check_reads_the_users_in_parent_user_mode(self) -> None:
        minio = self.world.tenants["tenant-1"].minio
        minio.add_user("stsd-aaaaaaaaaaaaaaa", "s" * 40, ["readonly"])
        minio.add_user("alice", "a" * 40)
        try:
            out = StringIO()
            path = write_config(self.world, self.directory / "c.yaml", tenants={"authorization": "parent-user"})
            assert await run_check(reactor, path, out)
            table = rows(out.getvalue())
            assert table["tenant tenant-1/storage"].endswith("list-users ok (1 parent users)")
            minio.fail("list-users", "500", times=1)
            out = StringIO()
            assert not await run_check(reactor, path, out)
            assert rows(out.getvalue())["tenant tenant-1/storage"].startswith("FAIL")
        finally:
            minio.remove_user("stsd-aaaaaaaaaaaaaaa")
            minio.remove_user("alice")
            minio.clear_faults()

    async def test_check_reports_an_unreachable_tenant(self) -> None:
        self.world.tenants["tenant-2"].minio.fail("info", "500")
        try:
            out = StringIO()
            assert not await run_check(reactor, write_config(self.world, self.directory / "c.yaml"), out)
        finally:
            self.world.tenants["tenant-2"].minio.clear_faults()
        table = rows(out.getvalue())
        assert table["tenant tenant-2/archive"].startswith("FAIL")
        assert table["tenant tenant-1/storage"].startswith("ok")

    async def test_check_says_a_tenants_secret_is_missing(self) -> None:
        tenant = self.world.tenants["tenant-2"]
        name = f"{tenant.name}-env-configuration"
        self.world.kubernetes.delete_secret(tenant.namespace, name)
        try:
            out = StringIO()
            assert not await run_check(reactor, write_config(self.world, self.directory / "c.yaml"), out)
        finally:
            self.world.kubernetes.config_env_secret(
                tenant.namespace, name, tenant.minio.access_key, tenant.minio.secret_key)
        table = rows(out.getvalue())
        assert table["tenant tenant-2/archive"] == f"FAIL    Secret {name} not found"
        assert table["tenant tenant-1/storage"].startswith("ok")


globals().update(pytest_twisted_functions(CheckTests))


@pytest_twisted.ensureDeferred
async def test_check_command_exit_codes(world: World, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    good = write_config(world, tmp_path / "good.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 0}\n")

    def run(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stsd", "check", "--config", path],
                              capture_output=True, text=True, timeout=60, env=env)

    ok = await deferToThread(run, good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verdict: OK" in ok.stdout
    failed = await deferToThread(run, str(bad))
    assert failed.returncode == 1
    assert "server.port" in failed.stdout and "verdict: FAILED" in failed.stdout


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(globals(), "runs stsd check as a process; run under pytest")
