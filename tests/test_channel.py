"""
Tests for L{stsd.http.channel}: the STS port's connections, in memory. (The
deadlines, bounds and refusals under hostile input are in test_hostile.py,
the graceful stop in test_drain.py, the metrics port in test_metrics_port.py.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_resource import StandInExchange, post_through_site


class ChannelTests(SynchronousTestCase):
    def test_one_write_per_response(self) -> None:
        protocol, transport = post_through_site(StandInExchange())
        response = transport.inner.value()
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert b"<AccessKeyId>AKID</AccessKeyId>" in response
        assert transport.writes == 1
        protocol.connectionLost(None)
