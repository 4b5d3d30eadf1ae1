# -*- test-case-name: tests.test_check -*-
"""
C{stsd check --config FILE}: a pre-flight check for operators.

Loads the configuration, verifies the TLS files, reaches the API server,
asks it (SelfSubjectAccessReview) about every permission stsd needs, lists
the Tenants and reaches each one's admin API; prints a table and a
verdict, and exits non-zero if anything failed.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python import usage

from stsd import config as configuration
from stsd.model import Tenant, TenantEndpoint
from stsd.ops.certreload import CertificateLoadError, load_certificate
from stsd.ops.rbac import PERMISSIONS, Permission
from stsd.state.parent_users import is_owned
from stsd.state.tenants import TENANTS_PATH
from stsd.state.tenants import EndpointRule, parse_tenant, root_credentials, secret_config_env
from stsd.upstream import kube, tls
from stsd.upstream.http import close_connections, make_client
from stsd.upstream.keepalive import KeepAliveClient
from stsd.upstream.minio import MinIOClient, ThreadedPayloadCrypto

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass
class Row:
    check: str
    ok: bool
    detail: str = ""


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, check: str, ok: bool, detail: str = "") -> bool:
        self.rows.append(Row(check, ok, detail))
        return ok

    def render(self, out: IO[str]) -> None:
        width = max(len(r.check) for r in self.rows) + 2
        out.write(f"{'CHECK':<{width}}RESULT  DETAIL\n")
        for r in self.rows:
            out.write(f"{r.check:<{width}}{'ok' if r.ok else 'FAIL':<8}{r.detail}\n")
        failed = sum(not r.ok for r in self.rows)
        if failed:
            out.write(f"verdict: FAILED ({failed} of {len(self.rows)} checks failed)\n")
        else:
            out.write(f"verdict: OK (all {len(self.rows)} checks passed)\n")

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


async def run_check(reactor: Any, config_path: str, out: IO[str]) -> bool:
    report = Report()
    try:
        config = configuration.load_config(config_path)
    except configuration.ConfigError as e:
        report.add(f"config {config_path}", False, str(e))
        report.render(out)
        return False
    report.add(f"config {config_path}", True)
    try:
        loaded = load_certificate(config.server.tls_cert, config.server.tls_key)
        left = (loaded.not_after.timestamp() - reactor.seconds()) / 86400
        report.add("TLS certificate and key", left > 0,
                   f"expires {loaded.not_after:%Y-%m-%d %H:%M} UTC ({left:.1f} days)")
    except CertificateLoadError as e:
        report.add("TLS certificate and key", False, str(e))
    try:
        access = kube.load_access(config.kubernetes.kubeconfig)
    except kube.KubeAccessError as e:
        report.add("Kubernetes credentials", False, str(e))
        report.render(out)
        return False
    timeout = config.kubernetes.timeout_seconds
    kube_http = make_client(reactor, access.https)
    minio_http = KeepAliveClient(reactor, tls.VerifiedHTTPS(kube.tenant_trust(access, config.tenants.ca_file)))
    client = kube.KubernetesClient(access, kube_http, reactor, timeout)
    try:
        await _check_cluster(report, reactor, config, access, client, minio_http)
    finally:
        await close_connections(kube_http)
        await minio_http.close()
    report.render(out)
    return report.ok


async def _step(report: Report, name: str, call: Callable[[], Awaitable[str]]) -> bool:
    try:
        detail = await call()
    except Exception as e:  # noqa: BLE001 - every failure is a row of the report
        return report.add(name, False, str(e)[:160])
    return report.add(name, True, detail)


async def _check_cluster(
    report: Report, reactor: Any, config: configuration.Config, access: kube.KubeAccess,
    client: kube.KubernetesClient, minio_http: KeepAliveClient,
) -> None:
    async def review(group: str, resource: str, verb: str) -> tuple[bool, str]:
        status = await client.review(SSAR_PATH, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb}},
        }, "SelfSubjectAccessReview")
        return status.get("allowed") is True, str(status.get("reason", ""))[:80]

    try:
        await review("authentication.k8s.io", "tokenreviews", "create")
    except kube.KubernetesError as e:
        report.add(f"Kubernetes API {access.host}", False, str(e)[:160])
        return
    report.add(f"Kubernetes API {access.host}", True, "reached")
    for permission in PERMISSIONS:
        for verb in permission.verbs:
            async def allowed(p: Permission = permission, v: str = verb) -> str:
                ok, reason = await review(p.group, p.resource, v)
                if not ok:
                    raise RuntimeError(f"not allowed ({reason or 'no reason given'})")
                return p.why

            name = f"RBAC {verb} {permission.resource}" + (
                f".{permission.group}" if permission.group else "")
            await _step(report, name, allowed)
    tenants: list[Tenant] = []

    async def list_tenants() -> str:
        found, _ = await client.list(TENANTS_PATH, "Tenants", transform=parse_tenant)
        tenants.extend(found)
        return f"{len(tenants)} found"

    if not await _step(report, "list Tenants", list_tenants):
        return
    rule = EndpointRule(config.tenants.endpoint, config.tenants.cluster_domain)
    parent_user = config.tenants.authorization == "parent-user"
    minio = MinIOClient(minio_http, reactor, config.tenants.timeout_seconds,
                        crypto=ThreadedPayloadCrypto(reactor, reactor.getThreadPool())
                        if parent_user else None)
    for tenant in tenants:
        async def reach(t: Tenant = tenant) -> str:
            env: dict[str, str] = {}
            secret = None
            if t.secret_name:
                # By name, as the daemon reads it (get only on Secrets).
                secret = await client.get(t.secret_path, f"Secret {t.namespace}/{t.secret_name}")
                env = secret_config_env(secret) if secret else {}
            credentials = root_credentials(t, env)
            if credentials is None:
                if t.secret_name and secret is None:
                    raise RuntimeError(f"Secret {t.secret_name} not found")
                raise RuntimeError(f"no root credentials in Secret {t.secret_name}")
            url = rule.url(t)
            endpoint = TenantEndpoint(f"{t.namespace}/{t.name}", url, credentials)
            region = await minio.region(endpoint)
            if not parent_user:
                return f"{url} region {region}"
            # Parent-user mode writes IAM users: at least reading them must work.
            users = await minio.list_users(endpoint, region)
            owned = sum(1 for name in users if is_owned(name))
            return f"{url} region {region}, list-users ok ({owned} parent users)"

        await _step(report, f"tenant {tenant.namespace}/{tenant.name}", reach)


class CheckOptions(usage.Options):
    synopsis = "--config FILE"
    longdesc = (
        "Pre-flight check: loads the configuration, verifies the TLS files, reaches the "
        "API server, asks it (SelfSubjectAccessReview) about every permission stsd "
        "needs, lists the Tenants and reaches each one's admin API. Prints a table and a "
        "verdict; exits 1 if any check failed."
    )
    optParameters = [
        ["config", "c", "/etc/stsd/stsd.yaml", "The stsd configuration file (YAML)."],
    ]


class Options(usage.Options):
    synopsis = "Usage: stsd"
    longdesc = "Tools for stsd, the Security Token Service for MinIO tenants on Kubernetes."
    subCommands = [
        ["check", None, CheckOptions, "Check a configuration against the cluster."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no command given (stsd check --config FILE)")


def main(argv: Sequence[str] | None = None) -> None:
    """
    C{stsd check --config FILE}; C{--help} prints the usage. A wrong command
    line is one line on stderr and exit status 2.
    """
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"stsd: {e} (stsd --help for usage)\n")
        raise SystemExit(2) from None
    config = options.subOptions["config"]

    async def run(reactor: Any) -> None:
        if not await run_check(reactor, config, sys.stdout):
            raise SystemExit(1)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
