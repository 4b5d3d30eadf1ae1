# -*- test-case-name: tests.test_logs -*-
"""
Log output for C{twistd stsd}: text or JSON (one object per line, no
record separator, for log shippers), filtered by level.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

FORMATS = ("text", "json")
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
        out = stream if stream is not None else sys.stdout
        observer = (
            jsonFileLogObserver(out, recordSeparator="") if fmt == "json"
            else textFileLogObserver(out)
        )
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
