# -*- test-case-name: tests.test_parent_users -*-
"""
Which ServiceAccounts exist, followed with list + watch (parent-user mode):
deleting a ServiceAccount removes its parent users, and with them every
credential issued to it, instead of leaving them valid until they expire.

Only the names are kept (a few dozen bytes per ServiceAccount). Until the
first list has succeeded nothing is known, and every ServiceAccount counts
as existing: a missing permission or a slow API server must never make
stsd remove users.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from sys import intern
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stsd.state.listwatch import WATCH_SECONDS, ListWatch, Watcher, object_key

log = Logger()

SERVICEACCOUNTS_PATH = "/api/v1/serviceaccounts"

SAKey = tuple[str, str]  # (namespace, name)


def serviceaccount_key(obj: dict[str, Any]) -> SAKey | None:
    key = object_key(obj) if isinstance(obj, dict) else None
    if key is None or not all(key):
        return None
    return (intern(key[0]), intern(key[1]))


class ServiceAccountIndex(Service):
    """
    The set of ServiceAccounts. Listeners are called with the keys that
    appeared or went away, or with C{None} once the first list is in
    (everything may differ from what was assumed before).
    """

    def __init__(
        self,
        kubernetes: Watcher,
        clock: IReactorTime,
        resync_seconds: float,
        *,
        watch_seconds: int = WATCH_SECONDS,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._names: set[SAKey] = set()
        self._listeners: list[Callable[[set[SAKey] | None], object]] = []
        self.ready = False
        self.watch = ListWatch(
            kubernetes, SERVICEACCOUNTS_PATH, "ServiceAccounts", on_replace=self._replace,
            on_event=self._event, clock=clock, resync_seconds=resync_seconds,
            transform=serviceaccount_key, watch_seconds=watch_seconds, random=random)

    def __len__(self) -> int:
        return len(self._names)

    def startService(self) -> None:
        super().startService()
        self.watch.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.watch.stopService()

    def add_listener(self, listener: Callable[[set[SAKey] | None], object]) -> None:
        self._listeners.append(listener)

    def exists(self, namespace: str, name: str) -> bool:
        """Whether the ServiceAccount exists (C{True} while nothing is known)."""
        return not self.ready or (namespace, name) in self._names

    def _report(self, keys: set[SAKey] | None) -> None:
        for listener in self._listeners:
            try:
                listener(keys)
            except Exception:
                log.failure("a ServiceAccount change listener failed")

    def _replace(self, items: list[SAKey | None], version: str) -> None:
        names = {k for k in items if k is not None}
        first = not self.ready
        changed = None if first else self._names ^ names
        self._names, self.ready = names, True
        if changed is None or changed:
            self._report(changed)

    def _event(self, etype: str, obj: dict[str, Any]) -> None:
        key = serviceaccount_key(obj)
        if key is None:
            return
        had = key in self._names
        if etype == "DELETED":
            self._names.discard(key)
        else:
            self._names.add(key)
        if self.ready and had != (key in self._names):
            self._report({key})
