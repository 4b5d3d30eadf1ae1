"""
Tests for L{stsd.ops.logs}: the JSON lines (one flat object per line, exact key
sets for a normal event, an audit event, a failure and a legacy event; no
secret through a C{repr}), twistd's C{--logfile} honoured and C{--syslog}
refused, and the per-turn writer once the reactor has stopped.

The end-to-end side (a real daemon's JSON log file parsed line by line) is
in C{tests/test_observability.py}.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from stsd.model import RootCredentials, Tenant
from stsd.ops import audit, logs
from stsd.testing.pki import TestPKI
from stsd.testing.world import twistd_command
from tests._trial import pytest_twisted_functions, temporary_directory

ROOT = Path(__file__).resolve().parents[1]
T = 1_800_000_000.123  # 2027-01-15T08:00:00.123Z
STAMP = "2027-01-15T08:00:00.123Z"
BASE = {"time", "level", "logger", "message"}
PASSWORD = "root-password-that-must-not-leak-7Qx"


def captured_event(emit: Any) -> dict[str, Any]:
    """The event a Logger call makes, at time C{T}."""
    events: list[dict[str, Any]] = []
    emit(Logger(namespace="stsd.test", observer=events.append))
    [event] = events
    event["log_time"] = T
    return event


def line_of(event: dict[str, Any]) -> dict[str, Any]:
    text = logs._json_line()(event)
    assert text is not None and text.endswith("\n") and text.count("\n") == 1
    record = json.loads(text)
    assert isinstance(record, dict)
    return record


# -- twistd's --logfile and --syslog -------------------------------------------------------


@functools.cache
def shared_config_file() -> Path:
    """One configuration for the module's tests (they only read it), removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="stsd-logs-"))
    atexit.register(shutil.rmtree, directory, True)
    pki = TestPKI.create(directory / "pki")
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority": str(pki.ca_path)}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }))
    config = directory / "stsd.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"interface": "127.0.0.1", "port": 4223,
                   "tls_cert": str(pki.cert_path), "tls_key": str(pki.key_path)},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
    }))
    return config


class TwistdLogFileTests(TestCase):
    async def test_factory_name_carries_the_log_file(self) -> None:
        await deferLater(reactor, 0, lambda: None)  # (trial calls a test before its reactor runs)
        target = temporary_directory(self) / "dir.with.dots" / "stsd.log"
        target.parent.mkdir()
        name = logs.factory_name("json", "info", str(target))
        observer = namedAny(name)()
        Logger(namespace="t", observer=observer).info("to the file {x}", x=1)
        await deferLater(reactor, 0, lambda: None)  # the end of the reactor turn
        [line] = target.read_text().splitlines()
        assert json.loads(line)["message"] == "to the file 1"
        with self.assertRaises(AttributeError):
            namedAny("stsd.ops.logs.observe_json_info_zz")

    async def test_twistd_logfile_option_is_honoured(self) -> None:
        await deferLater(reactor, 0, lambda: None)  # (trial calls a test before its reactor runs)
        target, config_file = temporary_directory(self) / "stsd.log", shared_config_file()
        options = ServerOptions()
        options.parseOptions(["-n", "--pidfile=", "-l", str(target), "stsd", "--config",
                              str(config_file), "--log-format", "text"])
        observer = options["logger"]()  # what twistd calls to begin logging
        Logger(namespace="t", observer=observer).info("in the file")
        await deferLater(reactor, 0, lambda: None)
        assert "[t#info] in the file" in target.read_text()


# -- the per-turn writer -------------------------------------------------------------------


class _Recorded:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


class _StoppingReactor:
    def __init__(self) -> None:
        self.running = True
        self.calls: list[Any] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> None:
        self.calls.append(f)


class LogsTests(SynchronousTestCase):
    def test_normal_event_is_one_flat_object_with_its_fields_once(self) -> None:
        record = line_of(captured_event(
            lambda log: log.info("Tenants: listed {count} at resourceVersion {version}",
                                 count=2, version="17")))
        assert record == {"time": STAMP, "level": "info", "logger": "stsd.test",
                          "message": "Tenants: listed 2 at resourceVersion 17",
                          "count": 2, "version": "17"}

    def test_time_is_rfc3339_utc_with_milliseconds(self) -> None:
        format_line = logs._json_line()
        for when, stamp in ((T, STAMP), (1_800_000_000.0, "2027-01-15T08:00:00.000Z"),
                            (1_800_000_000.9996, "2027-01-15T08:00:01.000Z"),  # nearest ms
                            (1_800_000_000.0004, "2027-01-15T08:00:00.000Z"),
                            (1_800_000_001.5, "2027-01-15T08:00:01.500Z")):
            event = captured_event(lambda log: log.warn("x"))
            event["log_time"] = when
            record = json.loads(format_line(event) or "")
            assert record["time"] == stamp and record["level"] == "warn"

    def test_audit_event_carries_its_fields_once(self) -> None:
        fields = {"event": "sts.AssumeRoleWithWebIdentity", "request_id": "ABC123",
                  "client": "127.0.0.1", "tenant_namespace": "tenant-1",
                  "serviceaccount": "system:serviceaccount:apps:photo-sa", "pod": "pod-1",
                  "bindings": ["b"], "policies": ["readonly"], "tenant": "tenant-1/storage",
                  "requested_duration_seconds": 3600, "outcome": "Success", "status": 200,
                  "latency_ms": 1.5}
        events: list[dict[str, Any]] = []
        original = audit.log.observer
        audit.log.observer = events.append
        try:
            audit.emit(fields)
        finally:
            audit.log.observer = original
        [event] = events
        event["log_time"] = T
        text = logs._json_line()(event) or ""
        record = json.loads(text)
        assert set(record) == BASE | set(fields)
        assert {k: record[k] for k in fields} == fields
        assert (record["time"], record["level"], record["logger"], record["message"]) == (
            STAMP, "info", "stsd.ops.audit", "sts.AssumeRoleWithWebIdentity Success")
        # Once: not also as the message, an "audit_json" string or a nested "audit".
        assert text.count("ABC123") == 1

    def test_failure_has_message_and_traceback(self) -> None:
        def fail(log: Logger) -> None:
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                log.failure("refreshing {what} failed", what="tenants")

        record = line_of(captured_event(fail))
        assert set(record) == BASE | {"what", "traceback"}
        assert record["message"] == "refreshing tenants failed"
        assert record["level"] == "critical"
        assert record["traceback"].startswith("Traceback (most recent call last):")
        assert "ZeroDivisionError: division by zero" in record["traceback"]

    def test_failure_passed_explicitly(self) -> None:
        record = line_of(captured_event(lambda log: log.failure(
            "unexpected error answering a request", failure=Failure(ValueError("bad")),
            level=LogLevel.error)))
        assert set(record) == BASE | {"traceback"}
        assert record["level"] == "error" and "ValueError: bad" in record["traceback"]

    def test_objects_are_their_repr_and_secrets_stay_hidden(self) -> None:
        credentials = RootCredentials("root", PASSWORD)
        tenant = Tenant("tenant-1", "storage", True, "storage-env", {"MINIO_ROOT_PASSWORD": PASSWORD})
        text = logs._json_line()(captured_event(lambda log: log.info(
            "using {tenant}", tenant=tenant, credentials=credentials,
            nested={"creds": [credentials]}, raw=b"\x00bytes", odd={(1, 2): "tuple key"},
            nan=math.nan, ok={"a": [1, None, True]}))) or ""
        assert PASSWORD not in text
        record = json.loads(text)
        assert record["credentials"] == "RootCredentials(<hidden>)"
        assert record["nested"] == {"creds": ["RootCredentials(<hidden>)"]}
        assert record["tenant"] == "Tenant(tenant-1/storage, tls=True, secret=storage-env)"
        assert record["raw"] == repr(b"\x00bytes")
        assert record["odd"] == repr({(1, 2): "tuple key"})
        assert record["nan"] == "nan"
        assert record["ok"] == {"a": [1, None, True]}

    def test_fields_named_like_the_keys_do_not_replace_them(self) -> None:
        # (Logger takes "level" itself: it cannot be a field.)
        record = line_of(captured_event(lambda log: log.info(
            "m {message}", message="field", time="field", logger="field", traceback="field")))
        assert (record["message"], record["level"], record["time"], record["logger"]) == (
            "m field", "info", STAMP, "stsd.test")
        assert set(record) == BASE | {"field_message", "field_time", "field_logger",
                                      "field_traceback"}
        assert {record[f"field_{k}"] for k in ("message", "time", "logger", "traceback")} == {
            "field"}

    def test_legacy_events(self) -> None:
        records: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            records.append(json.loads(logs._json_line()(event) or ""))

        publishToNewObserver(observe, {"message": ("Site starting on 9090",), "isError": 0,
                                       "system": "-", "time": T}, legacy_log.textFromEventDict)
        publishToNewObserver(observe, {"message": (), "format": "fmt %(a)s", "a": 5, "isError": 0,
                                       "system": "-", "time": T}, legacy_log.textFromEventDict)
        publishToNewObserver(observe, {"message": (), "isError": 1, "why": "while x",
                                       "failure": Failure(KeyError("k")), "system": "-", "time": T},
                             legacy_log.textFromEventDict)
        plain, formatted, error = records
        assert plain == {"time": STAMP, "level": "info", "logger": "log_legacy",
                         "message": "Site starting on 9090"}
        assert formatted == {"time": STAMP, "level": "info", "logger": "log_legacy",
                             "message": "fmt 5", "a": 5}
        assert set(error) == BASE | {"traceback"}
        assert error["message"] == "while x" and error["level"] == "critical"
        assert "KeyError" in error["traceback"]

    def test_level_filter_and_names(self) -> None:
        out = StringIO()
        observer = logs.observer_factory("json", "warn", out)()
        log = Logger(namespace="t", observer=observer)
        log.info("hidden {x}", x=1)
        log.warn("shown {x}", x=2)
        [line] = out.getvalue().splitlines()
        assert set(json.loads(line)) == BASE | {"x"}
        with pytest.raises(ValueError):
            logs.observer_factory("json", "loud")
        assert logs.factory_name("json", "info") == "stsd.ops.logs.observe_json_info"

    def test_log_file_from_twistd_options(self) -> None:
        tmp_path = temporary_directory(self)
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        monkeypatch.chdir(tmp_path)
        target = tmp_path / "stsd.log"
        assert logs.log_file({"logfile": str(target), "nodaemon": True}) == str(target)
        assert target.exists()
        assert logs.log_file({"logfile": "relative.log", "nodaemon": True}) == str(
            tmp_path / "relative.log")
        assert logs.log_file({"logfile": "-", "nodaemon": True}) is None
        assert logs.log_file({"logfile": None, "nodaemon": True}) is None
        assert logs.log_file(None) is None
        # Daemonized without --logfile: twistd.log, as twistd itself does.
        assert logs.log_file({"logfile": None, "nodaemon": False}) == str(tmp_path / "twistd.log")
        with pytest.raises(ValueError) as raised:
            logs.log_file({"syslog": True, "nodaemon": True})
        assert str(raised.value) == (
            "--syslog: not supported by stsd; log to stdout or to --logfile FILE")
        with pytest.raises(ValueError) as raised:
            logs.log_file({"logfile": str(tmp_path / "missing" / "x.log"), "nodaemon": True})
        assert str(raised.value) == (
            f"--logfile {tmp_path / 'missing' / 'x.log'}: cannot append to it: "
        "No such file or directory")

    def test_twistd_syslog_option_is_refused(self) -> None:
        config_file = shared_config_file()
        with pytest.raises(usage.UsageError) as raised:
            ServerOptions().parseOptions(["-n", "--syslog", "stsd", "--config", str(config_file)])
        assert str(raised.value).startswith("--syslog: not supported by stsd")

    def test_unwritable_logfile_is_refused_by_the_daemon(self) -> None:
        tmp_path = temporary_directory(self)
        config_file = shared_config_file()
        target = tmp_path / "missing" / "stsd.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        done = subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", "-l", str(target), "stsd", "--config",
             str(config_file), "--log-format", "json"],
            env=env, cwd=tmp_path, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        assert done.returncode != 0, output
        assert "Traceback" not in output, output
        last = [line for line in output.splitlines() if line.strip()][-1]
        assert f"--logfile {target}: cannot append to it: No such file or directory" in last, output

    def test_lines_of_the_last_turn_are_written_once_the_reactor_stops(self) -> None:
        # twistd may end the process by re-raising SIGTERM, when atexit
        # handlers do not run: what the last turn held must not wait for them.
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        fake = _StoppingReactor()
        monkeypatch.setitem(__import__("sys").modules, "twisted.internet.reactor", fake)
        out = _Recorded()
        writer = logs._TurnWriter(out)  # type: ignore[arg-type]
        writer.write("Received SIGTERM\n")
        writer.write("Stopping factory\n")
        assert out.writes == [] and len(fake.calls) == 1
        fake.running = False  # the turn's end never comes
        writer.write("Server Shut Down.\n")
        assert "".join(out.writes) == "Received SIGTERM\nStopping factory\nServer Shut Down.\n"

    def test_json_line_ends_each_record(self) -> None:
        tmp_path = temporary_directory(self)
        out = StringIO()
        observer = logs.observer_factory("json", "debug", out)()
        log = Logger(namespace="t", observer=observer)
        for i in range(3):
            log.debug("line {i}\nwith a newline inside", i=i)
        lines = out.getvalue().splitlines()
        assert len(lines) == 3
        assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]
        assert all(re.fullmatch(r"\{.*\}", line) for line in lines)


# For pytest: the tests that wait for the end of a reactor turn, on pytest-twisted's reactor.
globals().update(pytest_twisted_functions(TwistdLogFileTests))
