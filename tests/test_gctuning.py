# -*- test-case-name: tests.test_gctuning -*-
"""Tests for L{stsd.ops.gctuning} and its setting, C{server.gc_tuning}."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import TimerService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from stsd import tap
from stsd.ops.gctuning import GC_YOUNG_THRESHOLD, freeze_heap_when_ready
from stsd.testing.pki import TestPKI
from tests.test_tap import config_document, parse, shared_pki, write_config, write_kubeconfig


@pytest.fixture
def pki() -> TestPKI:
    return shared_pki()


@pytest.fixture
def kubeconfig(tmp_path: Path, pki: TestPKI) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", pki)


def test_heap_frozen_and_young_collections_spaced_once_ready() -> None:
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


def _freezers(service: Any) -> list[TimerService]:
    return [s for s in service if isinstance(s, TimerService)
            and s.call[0].__qualname__.startswith("freeze_heap_when_ready.")]


@pytest.mark.parametrize("setting, expected", [(None, 1), (True, 1), (False, 0)])
def test_the_setting_switches_the_tuning(tmp_path: Path, pki: TestPKI,  # noqa: F811
                                         kubeconfig: Path, setting: bool | None,  # noqa: F811
                                         expected: int) -> None:
    server = {} if setting is None else {"gc_tuning": setting}
    options = parse(write_config(tmp_path, config_document(pki, kubeconfig, server=server)))
    assert options.config.server.gc_tuning is (setting is not False)
    service = tap.makeService(options, reactor=MemoryReactorClock())
    assert len(_freezers(service)) == expected
