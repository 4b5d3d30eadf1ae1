# -*- test-case-name: tests.test_testing_kit -*-
"""
The test kit for trial: L{ClusterMixin} gives a trial C{TestCase} a
simulated cluster (fake Kubernetes and fake MinIO tenants over loopback TLS)
with the real stsd daemon running against it, started in C{setUp} and
stopped by C{addCleanup}; L{ClusterTestCase} is a C{TestCase} that does so.

Tests call blocking SDKs (boto3, minio-py) with C{deferToThread}: the fakes
answer from the reactor trial runs the test in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from stsd.testing.cluster import Cluster

__all__ = ["ClusterMixin", "ClusterTestCase"]


class ClusterMixin:
    """
    Mix into a trial C{TestCase}; call L{startCluster} from C{setUp} and
    return its Deferred. The cluster is stopped (daemon and fakes) by a
    cleanup, after the test whatever its outcome.

    @cvar stsd_config: configuration sections merged key by key over the
        kit's (which run parent-user mode).
    @ivar cluster: the started L{Cluster}.
    """

    stsd_config: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    cluster: Cluster

    # Provided by TestCase.
    mktemp: Any
    addCleanup: Any

    def startCluster(self) -> Deferred[Cluster]:
        from twisted.internet import reactor

        def started(cluster: Cluster) -> Cluster:
            self.cluster = cluster
            self.addCleanup(lambda: Deferred.fromCoroutine(cluster.stop()))
            return cluster

        # Absolute: the daemon reads the paths in its configuration from its own cwd.
        directory = Path(self.mktemp()).resolve()
        return Deferred.fromCoroutine(
            Cluster.start(directory, reactor, self.stsd_config)).addCallback(started)


class ClusterTestCase(ClusterMixin, TestCase):
    """A trial C{TestCase} whose every test has its own L{Cluster} (C{self.cluster})."""

    # trial waits for the Deferred setUp returns (unittest's stubs say None).
    def setUp(self) -> Deferred[Cluster]:  # type: ignore[override]
        return self.startCluster()
