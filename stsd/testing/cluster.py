# -*- test-case-name: tests.test_testing_kit -*-
"""
The test kit's one object: L{Cluster}, a simulated cluster (L{World}: a
fake Kubernetes API server and fake MinIO tenants over loopback TLS) with
the real stsd daemon running against it, and the few things an
application's own tests do with it: bind a ServiceAccount to policies,
mint its token, and know where stsd and each tenant's S3 API listen.

The pytest plugin (L{stsd.testing.pytest_plugin}) and the trial base class
(L{stsd.testing.trial}) both hand out a L{Cluster}; it is independent of
either runner.

The fakes run in the test's own reactor, so a blocking client (boto3,
minio-py) must be called from a thread (C{deferToThread}), never on the
reactor thread, or it waits forever for an answer the reactor cannot give.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from stsd.testing.fake_minio import FakeMinIO
from stsd.testing.world import Daemon, World

__all__ = ["APP_NAMESPACE", "APP_SERVICEACCOUNT", "Cluster", "DEFAULT_CONFIG", "ROLE_ARN", "TENANT"]

#: The tenant namespaces of a new cluster: C{tenant-1} (region C{us-east-1},
#: canned policies C{readwrite}, C{readonly}, C{photos}) and C{tenant-2}
#: (C{eu-west-1}, C{readonly}).
TENANT = "tenant-1"
#: A ServiceAccount a new cluster already binds: C{apps/photo-sa} gets
#: C{readwrite} in C{tenant-1} and C{readonly} in C{tenant-2}.
APP_NAMESPACE = "apps"
APP_SERVICEACCOUNT = "photo-sa"
#: SDKs require a role ARN; stsd ignores it.
ROLE_ARN = "arn:aws:iam::000000000000:role/stsd"
#: The daemon's configuration sections the kit sets on top of
#: L{World.config}: parent-user mode, as a real deployment runs by default.
DEFAULT_CONFIG: Mapping[str, Mapping[str, Any]] = {"tenants": {"authorization": "parent-user"}}

_BINDINGS = re.compile(r'^stsd_index_objects\{resource="bindings"\} ([0-9.e+]+)$', re.MULTILINE)


@dataclass
class Cluster:
    """
    A simulated cluster and the stsd daemon serving it. Create with
    L{Cluster.start}; L{Cluster.stop} stops the daemon and the fakes.

    @ivar world: the fakes, for what the helpers below do not cover (faults,
        deleting bindings, users MinIO holds: see L{World}).
    @ivar daemon: the running C{twistd stsd} process (its log: C{daemon.log_text()}).
    """

    world: World
    daemon: Daemon

    @classmethod
    async def start(cls, directory: Path, reactor: Any = None,
                    config: Mapping[str, Mapping[str, Any]] = {}) -> Cluster:
        """
        Start the fakes on loopback and the daemon against them, and wait
        until the daemon answers C{/readyz}.

        @param directory: where the throwaway CA, the kubeconfig, the
            daemon's configuration and its log are written.
        @param config: configuration sections merged key by key over the
            kit's (L{DEFAULT_CONFIG} over L{World.config}), e.g.
            C{{"sts": {"max_duration_seconds": 3600}}}.
        """
        sections: dict[str, Any] = {name: {**DEFAULT_CONFIG.get(name, {}), **config.get(name, {})}
                    for name in {*DEFAULT_CONFIG, *config}}
        world = World.start(directory, reactor)
        try:
            daemon = await world.start_daemon("stsd", **sections)
        except BaseException:
            await world.stop()
            raise
        return cls(world, daemon)

    async def stop(self) -> None:
        """
        Stop the daemon (SIGTERM, waiting for it to exit) and the fakes, and
        close the connections clients left open to them.
        """
        await self.world.stop()
        await self.world.close_connections()

    # -- where things are -------------------------------------------------------

    @property
    def ca_file(self) -> str:
        """The throwaway CA that signed every server's certificate (C{verify=} for boto3)."""
        return str(self.world.pki.ca_path)

    def sts_url(self, tenant: str = TENANT) -> str:
        """stsd's endpoint for C{tenant} (C{AWS_ENDPOINT_URL_STS} in a pod)."""
        return self.daemon.sts_url(tenant)

    def s3_url(self, tenant: str = TENANT) -> str:
        """The fake MinIO's path-style S3 API of C{tenant}."""
        return f"{self.world.minio_url}/{tenant}"

    def region(self, tenant: str = TENANT) -> str:
        return self.world.tenants[tenant].region

    def minio(self, tenant: str = TENANT) -> FakeMinIO:
        """The fake MinIO of C{tenant}: buckets, objects, canned policies, users."""
        return self.world.tenants[tenant].minio

    # -- what a test sets up ----------------------------------------------------

    def token(self, namespace: str = APP_NAMESPACE, serviceaccount: str = APP_SERVICEACCOUNT,
              **claims: Any) -> str:
        """
        A projected ServiceAccount token (audience C{sts.min.io}, one hour)
        for C{namespace/serviceaccount}, which the fake API server accepts
        in TokenReview. Keyword arguments go to L{TokenIssuer.mint}
        (C{lifetime}, C{audiences}, C{pod}, ...).
        """
        if not self.world.kubernetes.has_serviceaccount(namespace, serviceaccount):
            self.world.kubernetes.create_serviceaccount(namespace, serviceaccount)
        return self.world.mint(namespace, serviceaccount, **claims)

    def add_policy(self, name: str, document: Mapping[str, Any], tenant: str = TENANT) -> None:
        """Create or replace the canned policy C{name} in C{tenant}'s MinIO."""
        self.minio(tenant).set_policy(name, dict(document))

    async def bind(self, name: str, *, policies: list[str], tenant: str = TENANT,
                   namespace: str = APP_NAMESPACE, serviceaccount: str = APP_SERVICEACCOUNT,
                   timeout: float = 30.0) -> None:
        """
        Create the ServiceAccount if it does not exist and a PolicyBinding
        C{name} in C{tenant}'s namespace granting it C{policies}; wait until
        the daemon holds every PolicyBinding the API server has (its
        C{stsd_index_objects} metric), so an exchange right after sees it.
        """
        kubernetes = self.world.kubernetes
        if not kubernetes.has_serviceaccount(namespace, serviceaccount):
            kubernetes.create_serviceaccount(namespace, serviceaccount)
        kubernetes.add_policybinding(tenant, name, app_namespace=namespace,
                                     serviceaccount=serviceaccount, policies=policies)
        await self.wait_for_bindings(timeout)

    async def unbind(self, name: str, *, tenant: str = TENANT, timeout: float = 30.0) -> None:
        """Delete the PolicyBinding C{name} and wait until the daemon has let it go."""
        self.world.kubernetes.delete_policybinding(tenant, name)
        await self.wait_for_bindings(timeout)

    async def wait_for_bindings(self, timeout: float = 30.0) -> None:
        """Wait until the daemon holds as many PolicyBindings as the API server."""
        reactor = self.world.reactor
        wanted = self.world.kubernetes.object_count("policybindings")
        deadline = reactor.seconds() + timeout
        while True:
            held = await self._held_bindings()
            if held == wanted:
                return
            if reactor.seconds() > deadline:
                raise RuntimeError(f"stsd holds {held} PolicyBindings, not {wanted}, after {timeout}s")
            await deferLater(reactor, 0.05, lambda: None)

    async def _held_bindings(self) -> int | None:
        import treq
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        # A pool of its own without persistent connections: nothing is left
        # open for trial's clean-reactor check.
        client = HTTPClient(Agent(self.world.reactor, pool=HTTPConnectionPool(
            self.world.reactor, persistent=False)))
        try:
            response = await client.get(self.daemon.metrics_url + "/metrics", timeout=5)
            text = (await treq.content(response)).decode()
        except Exception:
            return None
        found = _BINDINGS.search(text)
        return int(float(found.group(1))) if found else None

    # -- after the test ---------------------------------------------------------

    def leaked_secrets(self) -> list[str]:
        """Names of the daemon logs in which a token or a secret key of this cluster appears."""
        return self.world.scan_logs()[2]

