# -*- test-case-name: tests.test_gctuning -*-
"""
Garbage-collector tuning for a long-running stsd (C{server.gc_tuning},
on by default): once the initial sync is done, everything alive is frozen
out of the collector's reach and young collections are spaced out.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()

GC_YOUNG_THRESHOLD = 20_000


def freeze_heap_when_ready(sync: Any, clock: Any) -> TimerService:
    """
    Once the initial sync is done, move everything alive (modules, config,
    the indexes) out of the garbage collector's reach: full collections then
    scan only what requests allocate, and stop pausing the reactor for tens
    of milliseconds (the benchmark's p99 tail). Then collect the young
    generation every L{GC_YOUNG_THRESHOLD} allocations instead of Python's
    700: a request allocates hundreds of objects, and the collections were
    about a tenth of a fresh credential's CPU; the cyclic garbage waiting
    for them stays a few MB.

    @param sync: has C{ready}, true once the initial list is done.
    @param clock: the reactor, checked every second until then.
    """
    def freeze() -> None:
        if sync.ready and not frozen:
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
            frozen.append(True)
            log.debug("froze {count} objects after the initial sync",
                      count=gc.get_freeze_count())

    frozen: list[bool] = []
    timer = TimerService(1.0, freeze)
    timer.clock = clock
    return timer
