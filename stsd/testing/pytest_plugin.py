# -*- test-case-name: tests.test_testing_kit -*-
"""
stsd's pytest plugin, for applications' own test suites: a simulated
cluster (fake Kubernetes and fake MinIO tenants over loopback TLS) with the
real stsd daemon running against it.

Installed with stsd (the C{pytest11} entry point C{stsd}); it needs
pytest-twisted (C{pip install stsd[test]} brings it), whose reactor runs the
fakes. Every fixture is opt-in and named C{stsd_*}; none is autouse.

    - C{stsd_config}: the daemon's configuration sections over the kit's
      defaults (parent-user mode); override it in a module or conftest.
    - C{stsd_cluster} (module scope): a started L{Cluster}: C{sts_url()},
      C{s3_url()}, C{ca_file}, C{token()}, C{bind()}, C{add_policy()},
      C{minio()}, and its C{world} and C{daemon}.
    - C{stsd_world}, C{stsd_daemon}: that cluster's L{World} and L{Daemon}.

Test functions using them are coroutines under
C{@pytest_twisted.ensureDeferred} and call blocking SDKs with
C{deferToThread}: the fakes answer from this process's reactor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from stsd.testing.cluster import Cluster
    from stsd.testing.world import Daemon, World

# Nothing from stsd or Twisted is imported here at module level: pytest loads
# this plugin in every run of an environment where stsd is installed, before
# pytest-twisted has installed its reactor.


@pytest.fixture(scope="module")
def stsd_config() -> Mapping[str, Mapping[str, Any]]:
    """
    Configuration sections merged key by key over the kit's, which run
    parent-user mode (a real deployment's default). Override it to run
    another configuration, e.g. C{{"tenants": {"authorization":
    "session-policy"}}} or C{{"sts": {"max_duration_seconds": 3600}}}.
    """
    return {}


@pytest.fixture(scope="module")
def stsd_cluster(tmp_path_factory: pytest.TempPathFactory,
                 stsd_config: Mapping[str, Mapping[str, Any]]) -> Iterator[Cluster]:
    """
    The fakes on loopback TLS and a running C{twistd stsd} process, ready
    (C{/readyz} answered 200); stopped after the module's last test.
    """
    import pytest_twisted
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from stsd.testing.cluster import Cluster

    cluster = pytest_twisted.blockon(Deferred.fromCoroutine(
        Cluster.start(tmp_path_factory.mktemp("stsd"), reactor, stsd_config)))
    yield cluster
    pytest_twisted.blockon(Deferred.fromCoroutine(cluster.stop()))


@pytest.fixture(scope="module")
def stsd_world(stsd_cluster: Cluster) -> World:
    """The fakes of C{stsd_cluster} (the API server, each tenant's MinIO, the CA)."""
    return stsd_cluster.world


@pytest.fixture(scope="module")
def stsd_daemon(stsd_cluster: Cluster) -> Daemon:
    """The daemon of C{stsd_cluster}: C{url}, C{sts_url(ns)}, C{metrics_url}, C{log_text()}."""
    return stsd_cluster.daemon
