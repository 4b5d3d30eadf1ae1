# -*- test-case-name: tests.test_logs -*-
"""
Log output for C{twistd stsd}: text, or JSON lines a log pipeline can read
(one flat object per line, no record separator), filtered by level, on
stdout or appended to twistd's C{--logfile}.

A JSON line is C{time} (RFC 3339, UTC, milliseconds), C{level},
C{logger} (the event's namespace), C{message} (the formatted text), then
the event's own fields, once: JSON values as they are, anything else as
its C{repr} (stsd's records that hold secrets hide them in their
C{repr}). Twisted's C{log_*} bookkeeping is left out. A failure adds a
C{traceback}. An audit event (L{stsd.ops.audit}) carries its fields, not its
JSON text again.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

FORMATS = ("text", "json")
AUDIT_FORMAT = "{audit_json}"  # stsd.ops.audit.emit's message
LEVELS = ("debug", "info", "warn", "error", "critical")

# The keys of a JSON line; an event field of the same name is written as
# "field_<name>".
RESERVED = frozenset({"time", "level", "logger", "message", "traceback"})
# What twisted.python.log's (legacy) events carry besides their fields:
# already in time/level/logger/message/traceback.
_LEGACY_KEYS = frozenset({"message", "time", "system", "format", "isError", "printed",
                          "why", "failure", "logLevel"})


def observer_factory(
    fmt: str, level: str, stream: IO[str] | None = None, path: str | None = None
) -> Callable[[], ILogObserver]:
    """
    A factory for twistd's C{logger} setting (it calls it once, at start).

    @param stream: where to write (tests); else C{path}, else stdout.
    @param path: a file to append to (twistd's C{--logfile}).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, got {level!r}")

    def make() -> ILogObserver:
        # The daemon's output coalesces the lines of a reactor turn; a given
        # stream (tests) gets each line as it is logged.
        if stream is not None:
            writer: Any = _Immediate(stream)
        elif path is not None:
            writer = _TurnWriter(open(path, "a", encoding="utf-8"))  # noqa: SIM115 - for life
        else:
            writer = _TurnWriter(sys.stdout)
        observer = _LineObserver(_json_line() if fmt == "json" else _text_line(), writer)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        return FilteringLogObserver(observer, [predicate])

    return make


def factory_name(fmt: str, level: str, path: str | None = None) -> str:
    """
    The dotted name of the observer factory for C{fmt}, C{level} and the
    log file C{path} (C{None}: stdout): twistd takes its C{logger} setting
    as a name to import, resolved by the module L{__getattr__} below (so no
    state is kept between parsing and use). The path is hex-encoded: a
    dotted name has no room for dots or slashes.
    """
    observer_factory(fmt, level)  # validates
    name = f"{__name__}.observe_{fmt}_{level}"
    if path is not None:
        name += "_" + path.encode("utf-8").hex()
    return name


def log_file(twistd_options: Any) -> str | None:
    """
    Where twistd's own options say to log, honoured (stsd's observer takes
    the place of twistd's, which would have read them): C{--logfile FILE}
    appends to FILE (no rotation: rotate it with copytruncate), C{-} or none
    with C{--nodaemon} is stdout, none without it is C{twistd.log} as with
    twistd. C{--syslog} is refused.

    @param twistd_options: twistd's options (a mapping), or C{None}.
    @return: the file's absolute path, or C{None} for stdout.
    @raise ValueError: C{--syslog}, or a file that cannot be opened; the
        message is one line naming the option.
    """
    if twistd_options is None:
        return None
    if twistd_options.get("syslog"):
        raise ValueError("--syslog: not supported by stsd; log to stdout or to --logfile FILE")
    path = twistd_options.get("logfile")
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        return None
    path = os.path.abspath(path or "twistd.log")
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ValueError(f"--logfile {path}: cannot append to it: {e.strerror}") from None
    return path


def __getattr__(name: str) -> Callable[[], ILogObserver]:
    prefix, _, rest = name.partition("_")
    fmt, _, rest = rest.partition("_")
    level, _, encoded = rest.partition("_")
    if prefix != "observe" or fmt not in FORMATS or level not in LEVELS:
        raise AttributeError(name)
    path = None
    if encoded:
        try:
            path = bytes.fromhex(encoded).decode("utf-8")
        except ValueError:
            raise AttributeError(name) from None
    return observer_factory(fmt, level, path=path)


def _json_line() -> Callable[[dict[str, Any]], str | None]:
    # The stamp up to the seconds is formatted once per second.
    stamp: list[Any] = [None, ""]

    def format_time(when: Any) -> str | None:
        if not isinstance(when, (int, float)):
            return None
        second, millis = divmod(round(when * 1000), 1000)
        if second != stamp[0]:
            stamp[0], stamp[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{stamp[1]}.{millis:03d}Z"

    def format_line(event: dict[str, Any]) -> str | None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": format_time(event.get("log_time")),
            "level": getattr(level, "name", None),
            "logger": event.get("log_namespace"),
        }
        failure = event.get("log_failure")
        audit = event.get("audit")
        if event.get("log_format") == AUDIT_FORMAT and isinstance(audit, dict):
            # stsd.ops.audit.emit: its fields, once; the message a short summary.
            record["message"] = f"{audit.get('event')} {audit.get('outcome')}"
            fields: dict[str, Any] = audit
        else:
            if failure is None and event.get("isError") and isinstance(
                    event.get("failure"), Failure):
                # A legacy log.err: its text would repeat the traceback.
                failure = event["failure"]
                record["message"] = str(event.get("why") or "Unhandled Error")
            else:
                record["message"] = formatEvent(event)
            legacy = "log_legacy" in event or event.get("log_namespace") == "log_legacy"
            fields = {k: v for k, v in event.items()
                      if not k.startswith("log_") and not (legacy and k in _LEGACY_KEYS)}
        for key, value in fields.items():
            record[f"field_{key}" if key in RESERVED else key] = value
        if isinstance(failure, Failure):
            record["traceback"] = failure.getTraceback()
        return _dumps(record) + "\n"

    return format_line


def _dumps(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, default=repr, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        # A value JSON cannot hold (a dict with tuple keys, NaN, a cycle):
        # that one as its repr.
        plain = {}
        for key, value in record.items():
            try:
                json.dumps(value, default=repr, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                value = repr(value)
            plain[key] = value
        return json.dumps(plain, default=repr, allow_nan=False)


def _text_line() -> Callable[[dict[str, Any]], str | None]:
    # Twisted's classic text format; its timestamp has whole seconds, so it
    # is formatted once per second rather than once per line.
    stamp: list[Any] = [None, ""]

    def format_time(when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != stamp[0]:
            stamp[0], stamp[1] = second, formatTime(second)
        return stamp[1]

    def format_line(event: dict[str, Any]) -> str | None:
        if (event.get("log_format") == AUDIT_FORMAT and "log_failure" not in event
                and "log_system" not in event):
            # An audit event (one per request): its message is its JSON,
            # already made, on one line; the same line as the general path.
            level = event.get("log_level")
            return (f"{format_time(event.get('log_time'))} "
                    f"[{event.get('log_namespace', '-')}#{level.name if level else '-'}] "
                    f"{event['audit_json']}\n")
        return formatEventAsClassicLogText(event, formatTime=format_time)

    return format_line


@implementer(ILogObserver)
class _LineObserver:
    def __init__(self, format_line: Callable[[dict[str, Any]], str | None], writer: Any) -> None:
        self._format = format_line
        self._writer = writer

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if text:
            self._writer.write(text)


class _Immediate:
    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class _TurnWriter:
    """
    The lines logged during one reactor turn, written and flushed once at
    its end: a write system call per line was a visible share of a busy
    daemon's CPU. With no reactor running (start-up, shutdown) each line is
    written at once, with whatever is pending; and anything left at exit.
    """

    MAX_PENDING = 256

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._pending: list[str] = []
        self._scheduled = False
        atexit.register(self.flush)

    def write(self, text: str) -> None:
        self._pending.append(text)
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not getattr(reactor, "running", False):
            # Also what the last turn left: its end never comes once the
            # reactor has stopped, and twistd may end the process by
            # re-raising SIGTERM, when no atexit handler runs.
            self.flush()
            return
        if self._scheduled:
            if len(self._pending) >= self.MAX_PENDING:
                self.flush()
            return
        self._scheduled = True
        reactor.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._out.write(text)
            self._out.flush()
