# -*- test-case-name: tests.test_e2e -*-
"""
A simulated cluster on loopback: a throwaway CA, a ServiceAccount token
signer, a fake Kubernetes API server and fake MinIO tenants, all over TLS,
plus the real stsd daemon started as a C{twistd} process against them.

Used by the demo (C{python -m stsd.demo}), the end-to-end tests and, as a
fixture, by users' own tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from stsd.ops.rbac import PERMISSIONS
from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from stsd.upstream.http import close_connections

READWRITE = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]},
    ],
}
READONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket"],
            "Resource": ["arn:aws:s3:::*"],
        },
    ],
}
PHOTOS = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": ["arn:aws:s3:::photos/*"],
        },
    ],
}


class _FakeSite(Site):
    """
    The fake MinIO's site: it reads its own form bodies (raw, as SigV4 is
    computed over them), so twisted.web need not parse them too, and keeps
    no access log (the fake counts its calls itself). Lighter fakes leave
    the benchmark's load core to the load.
    """

    def __init__(self, resource: Any) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.noisy = False

    def log(self, request: Any) -> None:
        pass


@dataclass
class TenantWorld:
    namespace: str
    name: str
    region: str
    minio: FakeMinIO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd_command() -> list[str]:
    """
    The C{twistd} of the running interpreter's environment.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class _DaemonProtocol(ProcessProtocol):
    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self._log.close()
        # The exit code, or minus the signal that ended the process.
        value = reason.value
        code = getattr(value, "exitCode", None)
        if code is None and getattr(value, "signal", None) is not None:
            code = -value.signal
        self.ended.callback(code)


@dataclass
class Daemon:
    """
    A running C{twistd stsd} process.
    """

    url: str
    config_path: Path
    log_path: Path
    protocol: _DaemonProtocol
    transport: Any
    # Its stdout and stderr, when it writes its log to log_path itself.
    output_path: Path | None = None

    @property
    def metrics_url(self) -> str:
        port = yaml.safe_load(self.config_path.read_text())["metrics"]["port"]
        return f"http://127.0.0.1:{port}"

    def sts_url(self, namespace: str) -> str:
        return f"{self.url}/sts/{namespace}"

    def log_text(self) -> str:
        if not self.log_path.exists():  # written by the daemon itself, not yet opened
            return ""
        return self.log_path.read_text(errors="replace")

    def output_text(self) -> str:
        if self.output_path is None or self.output_path == self.log_path:
            return ""
        return self.output_path.read_text(errors="replace")

    async def stop(self) -> int | None:
        if not self.protocol.ended.called:
            try:
                self.transport.signalProcess("TERM")
            except Exception:
                pass
        return await self.protocol.ended


@dataclass
class World:
    """
    The simulated cluster. Create with L{World.start}.
    """

    directory: Path
    reactor: Any
    pki: TestPKI
    issuer: TokenIssuer
    kubernetes: FakeKubernetes
    tenants: dict[str, TenantWorld]
    kube_url: str
    minio_url: str
    client_token: str
    tokens: list[str] = field(default_factory=list)
    _ports: list[Any] = field(default_factory=list)
    _daemons: list[Daemon] = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path, reactor: Any = None) -> World:
        """
        Generate the CA and keys, populate the fakes with two tenants and
        one bound application, and listen on loopback.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pki = TestPKI.create(directory / "pki")
        issuer = TokenIssuer(clock=reactor)
        client_token = secrets.token_urlsafe(32)
        kubernetes = FakeKubernetes(issuer, client_token=client_token, clock=reactor)

        # Admin payloads are opened off the reactor the fakes share (Argon2id).
        def in_thread(f: Any) -> Deferred[Any]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), f)

        tenants = {
            "tenant-1": TenantWorld("tenant-1", "storage", "us-east-1", FakeMinIO(
                access_key="root-" + secrets.token_hex(4), secret_key=secrets.token_urlsafe(24),
                region="us-east-1", clock=reactor,
                policies={"readwrite": READWRITE, "readonly": READONLY, "photos": PHOTOS},
                run_in_thread=in_thread,
            )),
            "tenant-2": TenantWorld("tenant-2", "archive", "eu-west-1", FakeMinIO(
                access_key="root-" + secrets.token_hex(4), secret_key=secrets.token_urlsafe(24),
                region="eu-west-1", clock=reactor,
                policies={"readonly": READONLY},
                run_in_thread=in_thread,
            )),
        }
        for t in tenants.values():
            kubernetes.config_env_secret(
                t.namespace, f"{t.name}-env-configuration", t.minio.access_key, t.minio.secret_key
            )
            kubernetes.add_tenant(
                t.namespace, t.name, configuration_secret=f"{t.name}-env-configuration"
            )
        # RBAC as in production: exactly the permissions of stsd's ClusterRole.
        kubernetes.grant_only(
            [(p.group, p.resource, verb) for p in PERMISSIONS for verb in p.verbs])
        kubernetes.create_serviceaccount("apps", "photo-sa")
        kubernetes.create_serviceaccount("apps", "unbound-sa")
        kubernetes.add_policybinding(
            "tenant-1", "photo-readwrite", app_namespace="apps", serviceaccount="photo-sa",
            policies=["readwrite"],
        )
        kubernetes.add_policybinding(
            "tenant-2", "photo-archive", app_namespace="apps", serviceaccount="photo-sa",
            policies=["readonly"],
        )
        options = pki.server_options()
        kube_port = reactor.listenSSL(0, Site(kubernetes.resource()), options, interface="127.0.0.1")
        router = FakeMinIORouter({t.namespace: t.minio for t in tenants.values()})
        minio_port = reactor.listenSSL(0, _FakeSite(router), options, interface="127.0.0.1")
        world = cls(
            directory=directory, reactor=reactor, pki=pki, issuer=issuer,
            kubernetes=kubernetes, tenants=tenants,
            kube_url=f"https://127.0.0.1:{kube_port.getHost().port}",
            minio_url=f"https://127.0.0.1:{minio_port.getHost().port}",
            client_token=client_token,
        )
        world._ports += [kube_port, minio_port]
        world.write_kubeconfig()
        return world

    def mint(self, namespace: str = "apps", serviceaccount: str = "photo-sa", **kw: Any) -> str:
        """
        A fresh token: a random C{jti} (as recent API servers add) makes two
        tokens minted in the same second differ.
        """
        kw.setdefault("jti", secrets.token_hex(8))
        token = self.issuer.mint(namespace, serviceaccount, **kw)
        self.tokens.append(token)
        return token

    def secrets(self) -> set[str]:
        """
        Every secret this world holds: the API client token, tokens minted,
        tenant root secret keys, MinIO users' secret keys, and the secret
        keys and session tokens MinIO minted.
        """
        found = {self.client_token, *self.tokens}
        for tenant in self.tenants.values():
            found.add(tenant.minio.secret_key)
            found.update(tenant.minio.user_secrets)
            for minted in tenant.minio.minted:
                found.update((minted.secret_key, minted.session_token))
        return {s for s in found if s}

    def scan_logs(self) -> tuple[int, int, list[str]]:
        """
        Look for every secret in every line of every daemon's log.

        @return: (secrets, lines scanned, names of logs with a leak).
        """
        secret_set = self.secrets()
        lines = 0
        leaks = []
        for daemon in self._daemons:
            text = daemon.log_text() + daemon.output_text()
            lines += text.count("\n")
            if any(s in text for s in secret_set):
                leaks.append(str(daemon.log_path))
        return len(secret_set), lines, leaks

    @property
    def kubeconfig_path(self) -> Path:
        return self.directory / "kubeconfig"

    def write_kubeconfig(self) -> None:
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sim", "cluster": {
                "server": self.kube_url, "certificate-authority": str(self.pki.ca_path)}}],
            "users": [{"name": "stsd", "user": {"token": self.client_token}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "stsd"}}],
            "current-context": "sim",
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(document))
        os.chmod(self.kubeconfig_path, 0o600)

    def config(self, port: int, **overrides: Mapping[str, Any]) -> dict[str, Any]:
        """
        An stsd configuration for this world (sections may be overridden).
        """
        document: dict[str, Any] = {
            "server": {"interface": "127.0.0.1", "port": port,
                       "tls_cert": str(self.pki.cert_path), "tls_key": str(self.pki.key_path),
                       # No load balancer to wait for on loopback: SIGTERM stops
                       # listening at once (tests of the drain set their own).
                       "shutdown_delay_seconds": 0},
            "kubernetes": {"kubeconfig": str(self.kubeconfig_path), "audience": "sts.min.io",
                           "resync_seconds": 10, "timeout_seconds": 2,
                           "token_cache_seconds": 2},
            # Session-policy mode unless a test asks for parent-user mode
            # (the default of a real deployment).
            "tenants": {"endpoint": self.minio_url + "/{namespace}",
                        "ca_file": str(self.pki.ca_path), "timeout_seconds": 2,
                        "authorization": "session-policy"},
            "sts": {"default_duration_seconds": 3600, "max_duration_seconds": 43200},
            "metrics": {"interface": "127.0.0.1", "port": free_port()},
        }
        for section, values in overrides.items():
            document.setdefault(section, {}).update(values)
        return document

    async def start_daemon(
        self,
        name: str = "stsd",
        *,
        wait: bool = True,
        args: Sequence[str] = (),
        logfile: bool = False,
        **overrides: Mapping[str, Any],
    ) -> Daemon:
        """
        Start C{twistd -n --pidfile= stsd --config FILE} and (unless told
        not to) wait until it answers C{/readyz}.

        @param logfile: the daemon writes its log itself (twistd's
            C{--logfile}) to C{log_path}; its stdout and stderr go to
            C{output_path}.
        """
        port = free_port()
        config_path = self.directory / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(self.config(port, **overrides)))
        log_path = output_path = self.directory / f"{name}.log"
        twistd_args = ["-n", "--pidfile="]
        if logfile:
            output_path = self.directory / f"{name}.out"
            twistd_args += ["--logfile", str(log_path)]
        protocol = _DaemonProtocol(output_path)
        argv = [*twistd_command(), *twistd_args, "stsd", "--config", str(config_path), *args]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        transport = self.reactor.spawnProcess(protocol, argv[0], argv, env=env)
        daemon = Daemon(f"https://127.0.0.1:{port}", config_path, log_path, protocol, transport,
                        output_path)
        self._daemons.append(daemon)
        await self.wait_ready(daemon, status=200 if wait else 503)
        return daemon

    def https_client(self) -> Any:
        """
        A treq client that trusts only this world's CA (close its pool's
        cached connections when done).
        """
        from stsd.upstream import tls
        from stsd.upstream.http import make_client

        return make_client(self.reactor, tls.VerifiedHTTPS(
            tls.trust_from_files([str(self.pki.ca_path)], system=False)))

    async def wait_ready(self, daemon: Daemon, timeout: float = 30.0, status: int = 200) -> None:
        """
        Wait until C{/readyz} answers C{status} (503: listening, not ready).
        """
        import treq

        client = self.https_client()
        deadline = self.reactor.seconds() + timeout
        try:
            while True:
                if daemon.protocol.ended.called:
                    raise RuntimeError(f"stsd exited during start-up:\n"
                                       f"{daemon.log_text()}{daemon.output_text()}")
                try:
                    response = await client.get(daemon.url + "/readyz")
                    await treq.content(response)
                    if response.code == status:
                        return
                except Exception:
                    pass
                if self.reactor.seconds() > deadline:
                    raise RuntimeError(f"stsd not ready after {timeout}s:\n"
                                       f"{daemon.log_text()}{daemon.output_text()}")
                await deferLater(self.reactor, 0.1, lambda: None)
        finally:
            await close_connections(client)

    async def close_connections(self, timeout: float = 10.0) -> None:
        """
        Abort the connections the fakes still hold (an SDK's keep-alive
        connections), and wait until they are gone: after L{stop} and this,
        nothing of the world is left in the reactor (what trial checks).
        """
        ports = set(self._ports)

        def held() -> list[Any]:
            selectables = {*self.reactor.getReaders(), *self.reactor.getWriters()}
            return [s for s in selectables if getattr(s, "server", None) in ports]

        for connection in held():
            connection.abortConnection()
        deadline = self.reactor.seconds() + timeout
        while held() and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.01, lambda: None)

    async def stop(self) -> None:
        for daemon in self._daemons:
            await daemon.stop()
        self.kubernetes.shutdown()
        for t in self.tenants.values():
            t.minio.clear_faults()
        for port in self._ports:
            await port.stopListening()
