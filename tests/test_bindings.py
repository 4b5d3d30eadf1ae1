"""
Tests for L{stsd.state.bindings}: parsing PolicyBindings, the index the exchange
looks grants up in, and its gradual replacement.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from stsd.model import Binding
from stsd.state.bindings import BindingIndex, parse_binding


def binding_obj(ns: str, name: str, app_ns: str, sa: str, policies: list[str]) -> dict:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"application": {"namespace": app_ns, "serviceaccount": sa},
                     "policies": policies}}


class BindingIndexTests(SynchronousTestCase):
    def test_lookup_unions_policies_of_all_bindings(self) -> None:
        index = BindingIndex()
        index.replace([
            Binding("t", "b1", "apps", "sa", ("readonly", "photos")),
            Binding("t", "b2", "apps", "sa", ("readonly",)),
            Binding("t", "b3", "apps", "other", ("admin",)),
            Binding("u", "b4", "apps", "sa", ("admin",)),
        ])
        grant = index.lookup("t", "apps", "sa")
        assert grant is not None
        self.assertEqual(grant.policies, ("photos", "readonly"))
        self.assertEqual(grant.bindings, ("b1", "b2"))
        self.assertIsNone(index.lookup("t", "apps", "nobody"))
        self.assertIsNone(index.lookup("v", "apps", "sa"))

    def test_events(self) -> None:
        index = BindingIndex()
        index.apply("ADDED", Binding("t", "b1", "apps", "sa", ("readonly",)))
        self.assertEqual(index.lookup("t", "apps", "sa").policies, ("readonly",))
        # A MODIFIED binding may move to another ServiceAccount.
        index.apply("MODIFIED", Binding("t", "b1", "apps", "sa2", ("readwrite",)))
        self.assertIsNone(index.lookup("t", "apps", "sa"))
        self.assertEqual(index.lookup("t", "apps", "sa2").policies, ("readwrite",))
        index.apply("DELETED", Binding("t", "b1", "apps", "sa2", ()))
        self.assertIsNone(index.lookup("t", "apps", "sa2"))
        self.assertEqual(len(index), 0)

    def test_parse_rejects_malformed(self) -> None:
        self.assertIsNone(parse_binding({"metadata": {"namespace": "t", "name": "b"}}))
        self.assertIsNone(parse_binding(binding_obj("t", "b", "", "sa", ["p"])))
        b = parse_binding(binding_obj("t", "b", "apps", "sa", ["p", 3, ""]))
        self.assertEqual(b, Binding("t", "b", "apps", "sa", ("p",)))


class GradualReplaceTests(SynchronousTestCase):
    def test_gradual_replace_swaps_at_once_after_yielding(self) -> None:
        from twisted.internet.defer import Deferred as D

        index = BindingIndex()
        index.replace([Binding("t", "old", "apps", "sa", ("p",))])
        new = [Binding("t", f"b{i}", "apps", f"sa{i % 7}", ("p",)) for i in range(25)]
        pauses: list[D] = []

        def pause() -> D:
            pauses.append(D())
            return pauses[-1]

        done = D.fromCoroutine(index.replace_gradually(new, pause, chunk=10))
        # Two pauses (after 10 and 20): the old index serves until the swap.
        assert len(pauses) == 1 and not done.called
        assert index.lookup("t", "apps", "sa") is not None and len(index) == 1
        pauses[0].callback(None)
        assert len(pauses) == 2 and len(index) == 1
        pauses[1].callback(None)
        assert done.called and len(index) == 25
        assert index.lookup("t", "apps", "sa") is None
        assert index.lookup("t", "apps", "sa3").bindings == ("b10", "b17", "b24", "b3")
