"""
What operators see: the Prometheus metrics scraped after real exchanges,
the probes on the metrics port, JSON logs (one object per line) and the
audit event of every request — with no secret anywhere in them.
"""

from __future__ import annotations

import json
import re
import time
from io import StringIO

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from stsd.ops import logs
from stsd.testing.world import Daemon, World
from tests.test_e2e import params, post
from tests._trial import pytest_only, pytest_twisted_functions, temporary_directory


@pytest.fixture(scope="module")
def json_daemon(world: World) -> Daemon:
    # Writing its log itself, to twistd's --logfile.
    return pytest_twisted.blockon(Deferred.fromCoroutine(world.start_daemon(
        "json", args=["--log-format", "json", "--log-level", "info"], logfile=True)))


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await treq.get(daemon.metrics_url + "/metrics")
    text = (await treq.content(response)).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_exchanges(world: World, json_daemon: Daemon, http) -> None:
    before = await scrape(json_daemon)
    ok = await post(http, json_daemon.sts_url("tenant-1"), params(world.mint()))
    denied = await post(http, json_daemon.sts_url("tenant-1"),
                        params(world.mint("apps", "unbound-sa")))
    nowhere = await post(http, json_daemon.sts_url("not-a-tenant-ns"), params(world.mint()))
    # A namespace without a Tenant is refused before bindings are looked at.
    assert (ok.status, denied.code, nowhere.code) == (200, "AccessDenied", "InvalidParameterValue")
    after = await scrape(json_daemon)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("stsd_requests_total", code="Success", namespace="tenant-1") == 1
    assert moved("stsd_requests_total", code="AccessDenied", namespace="tenant-1") == 1
    # A namespace without a Tenant is not a label value of its own.
    assert moved("stsd_requests_total", code="InvalidParameterValue", namespace="other") == 1
    assert moved("stsd_request_duration_seconds_count", outcome="success") == 1
    assert moved("stsd_cache_requests_total", cache="credentials", result="miss") == 1
    assert value(after, "stsd_index_objects", resource="bindings") >= 2
    assert value(after, "stsd_index_objects", resource="tenants") == 2
    # Below 3 x resync_seconds (10 in the test world), where /readyz would turn 503.
    assert 0 <= value(after, "stsd_seconds_since_last_sync", resource="bindings") < 30
    assert value(after, "stsd_ready") == 1
    assert moved("stsd_upstream_requests_total", target="assumerole", result="ok") == 1
    assert moved("stsd_cache_requests_total", cache="tokenreview", result="miss") == 3
    assert moved("stsd_upstream_requests_total", target="tokenreview", result="ok") == 3
    assert value(after, "stsd_upstream_requests_total", target="list", result="ok") >= 2
    assert value(after, "stsd_tls_certificate_expiry_timestamp_seconds") > time.time() + 86400
    labels = {dict(k[1]).get("namespace") for k in after if k[0] == "stsd_requests_total"}
    assert "not-a-tenant-ns" not in labels


@pytest_twisted.ensureDeferred
async def test_probes_on_metrics_port(json_daemon: Daemon) -> None:
    for path in ("/healthz", "/readyz"):
        response = await treq.get(json_daemon.metrics_url + path)
        assert response.code == 200, path
        await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_json_logs_and_audit_events(world: World, json_daemon: Daemon, http) -> None:
    token = world.mint()
    answer = await post(http, json_daemon.sts_url("tenant-1"), params(token))
    assert answer.status == 200
    request_id = answer.headers["x-amz-request-id"][0]
    await deferLater(reactor, 0.3, lambda: None)
    lines = json_daemon.log_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert lines and all(isinstance(e, dict) for e in events)
    assert json_daemon.output_text() == "", "--logfile honoured: nothing on stdout"
    for e in events:
        assert {"time", "level", "logger", "message"} <= e.keys(), e
        assert not [k for k in e if k.startswith("log_")], e
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]), e
    startup = [e for e in events if e["message"].startswith("starting stsd with configuration")]
    assert len(startup) == 1 and startup[0]["logger"] == "stsd.tap"
    assert startup[0]["config"]["server"]["port"] == int(json_daemon.url.rsplit(":", 1)[1])
    audits = [e for e in events if e["logger"] == "stsd.ops.audit"]
    mine = [a for a in audits if a["request_id"] == request_id]
    assert len(mine) == 1
    event = mine[0]
    # The audit fields once, flat: not again as a JSON string or a nested copy.
    assert "audit" not in event and "audit_json" not in event
    assert event["level"] == "info" and event["event"] == "sts.AssumeRoleWithWebIdentity"
    assert json_daemon.log_text().count(request_id) == 1
    assert event["outcome"] == "Success" and event["status"] == 200
    assert event["serviceaccount"] == "system:serviceaccount:apps:photo-sa"
    assert event["pod"] == "pod-1"
    assert event["tenant_namespace"] == "tenant-1"
    assert event["tenant"] == "tenant-1/storage"
    assert event["bindings"] == ["photo-readwrite"]
    assert event["policies"] == ["readwrite"]
    assert event["requested_duration_seconds"] == 3600
    assert event["granted_duration_seconds"] == 3600
    assert event["client"] == "127.0.0.1"
    assert event["latency_ms"] > 0
    minted = world.tenants["tenant-1"].minio.minted[-1]
    assert event["access_key_id"] == minted.access_key
    text = json_daemon.log_text()
    assert token not in text and minted.secret_key not in text and minted.session_token not in text
    # Refusals are audited too, with how far they got.
    denied = await post(http, json_daemon.sts_url("tenant-1"),
                        params(world.mint("apps", "unbound-sa")))
    await deferLater(reactor, 0.3, lambda: None)
    events = [json.loads(line) for line in json_daemon.log_text().splitlines()]
    [refusal] = [e for e in events if e["logger"] == "stsd.ops.audit"
                 and e["request_id"] == denied.headers["x-amz-request-id"][0]]
    assert refusal["outcome"] == "AccessDenied" and refusal["status"] == 403
    assert refusal["serviceaccount"] == "system:serviceaccount:apps:unbound-sa"
    assert refusal["bindings"] == [] and "access_key_id" not in refusal


class LogObserverTests(SynchronousTestCase):
    def test_log_observer_json_and_level(self) -> None:
        out = StringIO()
        observer = logs.observer_factory("json", "warn", out)()
        log = Logger(namespace="t", observer=observer)
        log.info("hidden {x}", x=1)
        log.warn("shown {x}", x=2)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["x"] == 2
        out = StringIO()
        observer = logs.observer_factory("text", "debug", out)()
        Logger(namespace="t", observer=observer).debug("plain {x}", x=3)
        assert "plain 3" in out.getvalue()
        with self.assertRaises(ValueError):
            logs.observer_factory("xml", "info")
        assert logs.factory_name("json", "info") == "stsd.ops.logs.observe_json_info"
        from twisted.python.reflect import namedAny

        assert callable(namedAny(logs.factory_name("text", "error")))

    def test_audit_line_same_as_twisted_classic_text(self) -> None:
        # The audit fast path of the text observer writes what Twisted's own
        # classic formatting would.
        from twisted.logger import formatEventAsClassicLogText, formatTime

        from stsd.ops import audit
        captured: list[dict] = []
        log = Logger(namespace="stsd.ops.audit", observer=captured.append)
        log.info(logs.AUDIT_FORMAT, audit_json=json.dumps({"a": 1, "b": "x y"}), audit={"a": 1})
        [event] = captured
        fast = logs._text_line()(event)
        assert fast == formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(int(t)))
        assert fast.endswith(' [stsd.ops.audit#info] {"a": 1, "b": "x y"}\n')
        # And audit.emit's events take that path.
        captured.clear()
        original = audit.log.observer
        audit.log.observer = captured.append
        try:
            audit.emit({"event": "x"})
        finally:
            audit.log.observer = original
        assert logs._text_line()(captured[0]).endswith(' [stsd.ops.audit#info] {"event": "x"}\n')


class _Recorded:
    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        self.flushes += 1


class GlobalReactorTests(TestCase):
    """A test world on loopback, and the end of a reactor turn."""

    async def test_secret_scan_finds_a_leak(self) -> None:
        """The scan that guards every end-to-end module can fail."""
        from stsd.testing.world import Daemon as DaemonRecord

        tmp_path = temporary_directory(self)
        other = World.start(tmp_path / "w", reactor)
        try:
            token = other.mint()
            log_path = tmp_path / "leaky.log"
            log_path.write_text(f"line one\nPOST /sts/x?WebIdentityToken={token}\n")
            other._daemons.append(DaemonRecord("https://x", tmp_path / "c", log_path, None, None))
            count, lines, leaks = other.scan_logs()
            assert leaks == [str(log_path)] and lines == 2 and count >= 4
            log_path.write_text("line one\nPOST /sts/x\n")
            assert other.scan_logs()[2] == []
            other._daemons.clear()
        finally:
            await other.stop()

    async def test_log_lines_of_a_reactor_turn_are_written_once(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0, lambda: None)  # (trial calls a test before its reactor runs)
        out = _Recorded()
        writer = logs._TurnWriter(out)  # type: ignore[arg-type]
        writer.write("one\n")
        writer.write("two\n")
        assert out.writes == [], "held until the turn ends"
        await deferLater(reactor, 0, lambda: None)
        assert (out.writes, out.flushes) == (["one\ntwo\n"], 1)
        # A flood within one turn is written in bounded pieces, nothing lost.
        for i in range(logs._TurnWriter.MAX_PENDING + 10):
            writer.write(f"{i}\n")
        await deferLater(reactor, 0, lambda: None)
        written = "".join(out.writes[1:]).splitlines()
        assert written == [str(i) for i in range(logs._TurnWriter.MAX_PENDING + 10)]
        assert len(out.writes) == 3
        writer.write("at exit\n")
        writer.flush()  # what atexit calls
        assert out.writes[-1] == "at exit\n"


globals().update(pytest_twisted_functions(GlobalReactorTests))

# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "drives the daemon as a process (pytest fixtures); run under pytest")
