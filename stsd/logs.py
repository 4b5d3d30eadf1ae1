# -*- test-case-name: tests.test_logs -*-
"""
Log output for C{twistd stsd}: text or JSON (one object per line, no
record separator, for log shippers), filtered by level.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

FORMATS = ("text", "json")
AUDIT_FORMAT = "{audit_json}"  # stsd.audit.emit's message
LEVELS = ("debug", "info", "warn", "error", "critical")


def observer_factory(
    fmt: str, level: str, stream: IO[str] | None = None
) -> Callable[[], ILogObserver]:
    """
    A factory for twistd's C{logger} setting (it calls it once, at start).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, got {level!r}")

    def make() -> ILogObserver:
        # The daemon's stdout coalesces the lines of a reactor turn; a given
        # stream (tests) gets each line as it is logged.
        writer = _TurnWriter(sys.stdout) if stream is None else _Immediate(stream)
        observer = _LineObserver(_json_line if fmt == "json" else _text_line(), writer)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        return FilteringLogObserver(observer, [predicate])

    return make


def factory_name(fmt: str, level: str) -> str:
    """
    The dotted name of the observer factory for C{fmt} and C{level}: twistd
    takes its C{logger} setting as a name to import, resolved by the module
    L{__getattr__} below (so no state is kept between parsing and use).
    """
    observer_factory(fmt, level)  # validates
    return f"{__name__}.observe_{fmt}_{level}"


def __getattr__(name: str) -> Callable[[], ILogObserver]:
    prefix, _, rest = name.partition("_")
    fmt, _, level = rest.partition("_")
    if prefix != "observe" or fmt not in FORMATS or level not in LEVELS:
        raise AttributeError(name)
    return observer_factory(fmt, level)


def _json_line(event: dict[str, Any]) -> str:
    return eventAsJSON(event) + "\n"


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
    written at once; whatever is pending is written at exit.
    """

    MAX_PENDING = 256

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._pending: list[str] = []
        self._scheduled = False
        atexit.register(self.flush)

    def write(self, text: str) -> None:
        self._pending.append(text)
        if self._scheduled and len(self._pending) < self.MAX_PENDING:
            return
        reactor = sys.modules.get("twisted.internet.reactor")
        if self._scheduled or reactor is None or not getattr(reactor, "running", False):
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
