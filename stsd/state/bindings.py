# -*- test-case-name: tests.test_bindings -*-
"""
PolicyBindings held in memory, indexed by (tenant namespace, application
namespace, ServiceAccount) so that a request's lookup costs the same with
ten bindings or a hundred thousand.

The index is fed either by a full list (L{BindingIndex.replace}) or by
single watch events (L{BindingIndex.apply}); both keep it consistent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from sys import intern
from typing import Any, TypeGuard

from twisted.logger import Logger

from stsd.model import AppKey, Binding, Grant

log = Logger()

ObjectKey = tuple[str, str]  # (namespace, name) of the PolicyBinding
REPLACE_CHUNK = 5_000
#: Where the API server serves PolicyBindings (listed and watched).
BINDINGS_PATH = "/apis/sts.min.io/v1beta1/policybindings"




def parse_binding(obj: Mapping[str, Any]) -> Binding | None:
    """
    A PolicyBinding object as the API server returns it; C{None} (and a
    warning) when it lacks what a binding needs.
    """
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    application = spec.get("application") if isinstance(spec, dict) else None
    policies = spec.get("policies") if isinstance(spec, dict) else None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(application, dict) or not isinstance(policies, list):
        log.warn("ignoring PolicyBinding {namespace}/{name}: no spec.application or spec.policies",
                 namespace=namespace, name=name)
        return None
    app_ns, sa = application.get("namespace"), application.get("serviceaccount")
    # Interned: with 10^5 bindings the same few namespaces, ServiceAccount
    # and policy names repeat, and the index keys compare by identity first.
    names = tuple(intern(p) for p in policies if isinstance(p, str) and p)
    if not (_name(namespace) and _name(name) and _name(app_ns) and _name(sa)):
        log.warn("ignoring malformed PolicyBinding {namespace}/{name}", namespace=namespace, name=name)
        return None
    return Binding(intern(namespace), name, intern(app_ns), intern(sa), names)


def _name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _add_all(
    bindings: Iterable[Binding],
    objects: dict[ObjectKey, Binding],
    by_app: dict[AppKey, dict[str, Binding]],
) -> None:
    for b in bindings:
        objects[(b.namespace, b.name)] = b
        by_app.setdefault(b.app_key, {})[b.name] = b


def _policies_of(group: Mapping[str, Binding] | None) -> frozenset[str]:
    return frozenset(p for b in group.values() for p in b.policies) if group else frozenset()


def _changed_keys(
    old: Mapping[AppKey, Mapping[str, Binding]], new: Mapping[AppKey, Mapping[str, Binding]]
) -> set[AppKey]:
    # The ServiceAccounts whose set of bound policies differs between two indexes.
    return {key for key in old.keys() | new.keys()
            if _policies_of(old.get(key)) != _policies_of(new.get(key))}


class BindingIndex:
    def __init__(self) -> None:
        self._objects: dict[ObjectKey, Binding] = {}
        self._by_app: dict[AppKey, dict[str, Binding]] = {}
        self._grants: dict[AppKey, Grant] = {}
        self._listeners: list[Callable[[set[AppKey]], object]] = []

    def add_listener(self, listener: Callable[[set[AppKey]], object]) -> None:
        """
        Call C{listener} with the app keys whose bound policies changed,
        after each change (watch event or full list) is in place.
        """
        self._listeners.append(listener)

    def _report(self, keys: set[AppKey]) -> None:
        if not keys:
            return
        for listener in self._listeners:
            try:
                listener(keys)
            except Exception:
                # A listener's bug must not stop the index from following Kubernetes.
                log.failure("a PolicyBinding change listener failed")

    def app_keys(self) -> list[AppKey]:
        """Every (tenant namespace, app namespace, ServiceAccount) with a binding."""
        return list(self._by_app)

    def __len__(self) -> int:
        return len(self._objects)

    def replace(self, bindings: Iterable[Binding]) -> None:
        """
        Swap in the full set (from a list); built aside, then swapped, so a
        lookup never sees half of it.
        """
        objects: dict[ObjectKey, Binding] = {}
        by_app: dict[AppKey, dict[str, Binding]] = {}
        _add_all(bindings, objects, by_app)
        old = self._by_app
        self._objects, self._by_app, self._grants = objects, by_app, {}
        if self._listeners:
            self._report(_changed_keys(old, by_app))

    async def replace_gradually(
        self,
        bindings: Sequence[Binding],
        pause: Callable[[], Awaitable[object]],
        chunk: int = REPLACE_CHUNK,
    ) -> None:
        """
        L{replace}, building the new index C{chunk} bindings at a time and
        calling C{pause} (a turn of the reactor) in between: with 10^5
        bindings a one-go build would hold every request for a quarter of
        a second. Lookups see the old index until the swap.
        """
        objects: dict[ObjectKey, Binding] = {}
        by_app: dict[AppKey, dict[str, Binding]] = {}
        for start in range(0, len(bindings), chunk):
            if start:
                await pause()
            _add_all(bindings[start:start + chunk], objects, by_app)
        old = self._by_app
        self._objects, self._by_app, self._grants = objects, by_app, {}
        if self._listeners:
            self._report(_changed_keys(old, by_app))

    def apply(self, event: str, binding: Binding) -> None:
        """
        Apply one watch event (C{ADDED}, C{MODIFIED} or C{DELETED}).
        """
        key = (binding.namespace, binding.name)
        old = self._objects.pop(key, None)
        if old is not None:
            self._forget(old)
        if event != "DELETED":
            self._objects[key] = binding
            self._by_app.setdefault(binding.app_key, {})[binding.name] = binding
            self._grants.pop(binding.app_key, None)
        if self._listeners:
            # A deletion may name only the object (the watch's tombstones do).
            keys = {old.app_key} if old is not None else set()
            if event != "DELETED":
                keys.add(binding.app_key)
            self._report(keys)

    def _forget(self, binding: Binding) -> None:
        group = self._by_app.get(binding.app_key)
        if group is not None:
            group.pop(binding.name, None)
            if not group:
                del self._by_app[binding.app_key]
        self._grants.pop(binding.app_key, None)

    def lookup(self, tenant_namespace: str, app_namespace: str, serviceaccount: str) -> Grant | None:
        """
        The grant of a ServiceAccount in a tenant namespace, or C{None}.
        """
        key = (tenant_namespace, app_namespace, serviceaccount)
        grant = self._grants.get(key)
        if grant is None:
            group = self._by_app.get(key)
            if not group:
                return None
            grant = Grant(
                bindings=tuple(sorted(group)),
                policies=tuple(sorted({p for b in group.values() for p in b.policies})),
            )
            self._grants[key] = grant
        return grant
