"""
Tests for L{stsd.auth.jose}: the one decoder of JWT segments, canonical for
verification and lenient for the readers that only look.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from stsd.auth.jose import json_segment, number, segment


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SegmentTests(SynchronousTestCase):
    @given(st.binary(max_size=200))
    def test_round_trip(self, data: bytes) -> None:
        self.assertEqual(segment(b64url(data)), data)
        self.assertEqual(segment(b64url(data), canonical=False), data)

    @given(st.binary(min_size=1, max_size=200).filter(lambda d: len(d) % 3))
    def test_only_the_canonical_spelling(self, data: bytes) -> None:
        text = b64url(data)
        padded = base64.urlsafe_b64encode(data).decode("ascii")
        self.assertRaises(ValueError, segment, padded)
        self.assertEqual(segment(padded, canonical=False), data)
        # The last character's unused low bits set: the same bytes, another spelling.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(text[-1])
        sibling = alphabet[last | (0b1111 if len(data) % 3 == 1 else 0b11)]
        if sibling != text[-1]:
            self.assertRaises(ValueError, segment, text[:-1] + sibling)
            self.assertEqual(segment(text[:-1] + sibling, canonical=False), data)

    def test_not_base64(self) -> None:
        for text in ("a", "ab!c", "é"):
            self.assertRaises(ValueError, segment, text)
            self.assertRaises(ValueError, segment, text, canonical=False)


class JSONSegmentTests(SynchronousTestCase):
    def test_an_object(self) -> None:
        self.assertEqual(json_segment(b64url(b'{"alg":"RS256"}')), {"alg": "RS256"})

    def test_refused(self) -> None:
        for raw in (b"[1]", b"1", b"{", b"\xff{}", b"[" * 100_000 + b"]" * 100_000):
            self.assertRaises(ValueError, json_segment, b64url(raw))
            self.assertRaises(ValueError, json_segment, b64url(raw), canonical=False)

    def test_only_utf8_when_canonical(self) -> None:
        utf16 = b64url('{"alg":"RS256"}'.encode("utf-16"))
        self.assertRaises(ValueError, json_segment, utf16)
        self.assertEqual(json_segment(utf16, canonical=False), {"alg": "RS256"})


class NumberTests(SynchronousTestCase):
    def test_numbers(self) -> None:
        self.assertEqual(number(1700000000), 1700000000.0)
        self.assertEqual(number(1.5), 1.5)
        for value in (True, None, "1", float("inf"), float("nan"), 10**400, [1]):
            self.assertIsNone(number(value), value)
