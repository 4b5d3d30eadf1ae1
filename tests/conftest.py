"""
Shared fixtures: the simulated cluster on loopback and the real daemon.

The daemon is a C{twistd} process; the fakes run in this process's
reactor (pytest-twisted), so blocking SDK clients (boto3, minio-py) are
run in threads with C{deferToThread}.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from stsd.testing.world import Daemon, World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = World.start(tmp_path_factory.mktemp("world"), reactor)
    yield w
    pytest_twisted.blockon(Deferred.fromCoroutine(w.stop()))


@pytest.fixture(scope="module")
def daemon(world: World) -> Daemon:
    return pytest_twisted.blockon(Deferred.fromCoroutine(world.start_daemon()))
