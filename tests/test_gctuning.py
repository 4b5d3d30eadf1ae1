# -*- test-case-name: tests.test_gctuning -*-
"""Tests for L{stsd.ops.gctuning} and its setting, C{server.gc_tuning}."""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from stsd import tap
from stsd.ops.gctuning import GC_YOUNG_THRESHOLD, freeze_heap_when_ready
from tests._trial import cases, expand, temporary_directory
from tests.test_tap import config_document, parse, shared_pki, write_config, write_kubeconfig


def _freezers(service: Any) -> list[TimerService]:
    return [s for s in service if isinstance(s, TimerService)
            and s.call[0].__qualname__.startswith("freeze_heap_when_ready.")]


@expand
class GCTuningTests(SynchronousTestCase):
    def test_heap_frozen_and_young_collections_spaced_once_ready(self) -> None:
        class Sync:
            ready = False

        sync, clock = Sync(), Clock()
        before = gc.get_threshold()
        timer = freeze_heap_when_ready(sync, clock)
        timer.startService()
        try:
            clock.advance(1)
            assert gc.get_threshold() == before, "nothing changes before the initial sync"
            sync.ready = True
            clock.advance(1)
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
            assert gc.get_freeze_count() > 0
        finally:
            timer.stopService()
            gc.unfreeze()
            gc.set_threshold(*before)

    @cases("setting, expected", [(None, 1), (True, 1), (False, 0)])
    def test_the_setting_switches_the_tuning(self, setting: bool | None, expected: int) -> None:
        directory, pki = temporary_directory(self), shared_pki()
        kubeconfig = write_kubeconfig(directory / "kubeconfig", pki)
        server = {} if setting is None else {"gc_tuning": setting}
        options = parse(write_config(directory, config_document(pki, kubeconfig, server=server)))
        assert options.config.server.gc_tuning is (setting is not False)
        service = tap.makeService(options, reactor=MemoryReactorClock())
        assert len(_freezers(service)) == expected
