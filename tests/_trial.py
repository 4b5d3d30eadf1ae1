"""
What lets one test module serve both runners, pytest and trial.

A test method is a C{SynchronousTestCase} method, which pytest also runs;
L{cases} is C{pytest.mark.parametrize} for such a method (pytest does not
parametrize C{unittest} methods): L{expand} turns it into one method per
case, so both runners count each case. L{pytest_only} names, for trial,
the tests of a module that need what only pytest gives (a spawned daemon
behind a pytest fixture): trial reports each as skipped, with the reason,
and pytest does not see them. L{pytest_twisted_functions} is the other way
round, for the tests of a trial C{TestCase} that need the global reactor:
pytest runs each as a pytest-twisted function (trial runs them as it runs
any C{TestCase}, its janitor checking that the reactor is left clean);
L{serve_loopback} listens on loopback for such a test and closes every
connection when it ends.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolNegotiationFactory
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import alsoProvides

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


def temporary_directory(case: SynchronousTestCase) -> Path:
    """
    A new directory, removed when C{case} ends: pytest's C{tmp_path} for a
    test method (C{case.mktemp} is relative to the working directory, which
    only trial moves to C{_trial_temp}).
    """
    path = Path(tempfile.mkdtemp(prefix="stsd-test-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def cases(names: str | Sequence[str], values: Iterable[Any],
          ids: Sequence[str] | Callable[[Any], Any] | None = None) -> Callable[[F], F]:
    """
    Run the decorated test method once per value, as
    C{pytest.mark.parametrize(names, values, ids=ids)} would (its class
    decorated with L{expand}); stacked, once per combination.
    """
    def mark(method: F) -> F:
        listed = names.split(",") if isinstance(names, str) else names
        stacked = getattr(method, "__cases__", [])
        method.__cases__ = [([n.strip() for n in listed], list(values), ids)] + stacked  # type: ignore[attr-defined]
        return method
    return mark


def _case_id(value: Any) -> str:
    text = re.sub(r"\W+", "_", str(value)).strip("_")
    return text[:40] if text else "case"


def _labelled(names: list[str], values: list[Any], ids: Any) -> list[tuple[dict[str, Any], str]]:
    labelled = []
    for index, value in enumerate(values):
        args = value if len(names) > 1 else (value,)
        if callable(ids):
            label = ids(args[0])
        else:
            label = ids[index] if ids is not None else args[0] if len(names) == 1 else ""
        labelled.append((dict(zip(names, args)), f"{index}" + (f"_{_case_id(label)}" if label != "" else "")))
    return labelled


def expand(cls: C) -> C:
    """One method per case (per combination of stacked cases) of each L{cases} method of C{cls}."""
    for name, method in list(vars(cls).items()):
        marked = getattr(method, "__cases__", None)
        if marked is None:
            continue
        delattr(cls, name)
        for combination in itertools.product(*(_labelled(*each) for each in marked)):
            kwargs: dict[str, Any] = {}
            for part, _ in combination:
                kwargs.update(part)

            def test(self: Any, _method: Any = method, _kwargs: dict[str, Any] = kwargs) -> Any:
                return _method(self, **_kwargs)

            test.__name__ = f"{name}_" + "_".join(label for _, label in combination)
            test.__doc__ = method.__doc__
            setattr(cls, test.__name__, test)
    return cls


def pytest_only(namespace: dict[str, Any], reason: str) -> type[SynchronousTestCase]:
    """
    A test case, for trial only, with one skipped test per module-level test
    function in C{namespace} (those pytest runs with its fixtures), but those
    of L{pytest_twisted_functions} (trial runs their methods).
    """
    tests = {name: (lambda self: None) for name, value in namespace.items()
             if name.startswith("test") and callable(value) and not hasattr(value, "trial_case")}
    return type("PytestOnly", (SynchronousTestCase,),
                {"__test__": False, "skip": reason, "__module__": namespace["__name__"], **tests})


def _raise_failure(outcome: object) -> None:
    if isinstance(outcome, Failure):
        outcome.raiseException()


class _Tracked(ProtocolWrapper):
    """A server connection; C{gone}, when set, fires once it is closed."""

    gone: Deferred[None] | None = None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        gone, self.gone = self.gone, None
        if gone is not None:
            gone.callback(None)


class _Tracking(WrappingFactory):
    """Keeps the server's connections; offers the wrapped factory's protocols (ALPN) as its own."""

    protocol = _Tracked

    def __init__(self, wrappedFactory: Factory) -> None:
        super().__init__(wrappedFactory)
        negotiating = IProtocolNegotiationFactory(wrappedFactory, None)
        if negotiating is not None:
            # Without it TLS would negotiate no protocol, and refuse a client offering one.
            alsoProvides(self, IProtocolNegotiationFactory)
            self.acceptableProtocols = negotiating.acceptableProtocols


@contextlib.asynccontextmanager
async def serve_loopback(factory: Factory, tls: Any = None) -> AsyncIterator[IListeningPort]:
    """
    Listen on 127.0.0.1 (over TLS with C{tls}, a context factory) for the
    block, then, whatever its outcome, stop listening, close every
    connection the server still has, and wait until both are done: the
    reactor is left as it was.
    """
    from twisted.internet import reactor

    tracking = _Tracking(factory)
    port = (reactor.listenSSL(0, tracking, tls, interface="127.0.0.1")  # type: ignore[attr-defined]
            if tls is not None else
            reactor.listenTCP(0, tracking, interface="127.0.0.1"))  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        await port.stopListening()
        still_open = list(tracking.protocols)
        for protocol in still_open:
            protocol.gone = Deferred()
            protocol.transport.abortConnection()
        await gatherResults([p.gone for p in still_open if p.gone is not None])


def in_memory(method: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """
    Run an C{async} test method whose every wait is answered in memory
    (C{StubTreq}, a L{Clock}, a fake called by the test): it has finished
    when the call returns, or the test fails saying it still waits.
    """
    @functools.wraps(method)
    def test(self: SynchronousTestCase, **cases: Any) -> None:
        outcome: list[object] = []
        Deferred.fromCoroutine(method(self, **cases)).addBoth(outcome.append)
        if not outcome:
            self.fail("the test still waits: something it awaits is not answered in memory")
        _raise_failure(outcome[0])
    return test


def pytest_twisted_functions(case: type[TestCase]) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """
    For pytest, each test method of C{case} (a trial C{TestCase}, for tests
    that need the global reactor: real loopback connections, threads) as a
    pytest-twisted test function, to put in the module's namespace; pytest
    no longer collects C{case} itself (it would run it as trial does, by
    spinning the reactor that pytest-twisted already runs).

    A function runs what trial would, in trial's order, waiting for each
    Deferred or coroutine: C{setUp}, the test, the cleanups (last added
    first), then C{tearDown} if C{setUp} passed.
    """
    case.__test__ = False  # type: ignore[attr-defined]

    def function(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def test() -> None:
            instance = case(name)
            cleanups: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
            instance.addCleanup = lambda f, *a, **kw: cleanups.append((f, a, kw))  # type: ignore[method-assign]
            set_up = False
            try:
                try:
                    await maybeDeferred(instance.setUp)
                    set_up = True
                    await maybeDeferred(getattr(instance, name))
                finally:
                    while cleanups:
                        f, args, kwargs = cleanups.pop()
                        await maybeDeferred(f, *args, **kwargs)
            finally:
                if set_up:
                    await maybeDeferred(instance.tearDown)
        test.__name__ = test.__qualname__ = name
        test.__doc__ = getattr(case, name).__doc__
        test.trial_case = case  # type: ignore[attr-defined]  # (trial runs it: not pytest_only)
        return pytest_twisted.ensureDeferred(test)  # type: ignore[no-any-return]

    return {name: function(name) for name in dir(case)
            if name.startswith("test") and callable(getattr(case, name))}
