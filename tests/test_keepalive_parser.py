# -*- test-case-name: tests.test_keepalive_parser -*-
"""
L{stsd.upstream.keepalive.ResponseParser} and L{stsd.upstream.keepalive.parse_response}
without I/O: fixed cases, and hypothesis over answers of every framing
(Content-Length, chunked with extensions and trailers, delimited by the
close, HTTP/1.0, after interim answers) split at random, and over random
bytes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from stsd.upstream.keepalive import (
    MAX_HEAD_BYTES, ResponseError, ResponseParser, parse_response,
)
from tests._trial import cases, expand


def feed_pieces(data: bytes, cuts: list[int], max_body: int, closed: bool) -> object:
    """Feed C{data} cut at C{cuts}; the answer (C{None}: incomplete)."""
    parser = ResponseParser(max_body)
    answer = None
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[last:cut]
        last = cut
        if answer is None:
            answer = parser.feed(piece)
        # Bytes after a whole answer are the next answer's; not used here.
    if answer is None and closed:
        answer = parser.close()
    return answer


# -- valid answers -----------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name.lower() not in {"content-length", "transfer-encoding", "connection"})
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20)


# (wire bytes, status, body, keep, ends with the close) of one valid answer.
Answer = tuple[bytes, int, bytes, bool, bool]


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """(wire bytes, status, body, keep, ends with the close) of one valid answer."""
    framing = draw(st.sampled_from(["length", "chunked", "close", "http10", "empty"]))
    status = draw(st.sampled_from([200, 201, 400, 403, 404, 500, 503]))
    body = draw(st.binary(max_size=300))
    extra = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))
    close_header = draw(st.booleans()) if framing in ("length", "chunked") else False
    head = b""
    for _ in range(draw(st.integers(0, 2))):
        head += b"HTTP/1.1 100 Continue\r\n\r\n"
    version = b"HTTP/1.0" if framing == "http10" else b"HTTP/1.1"
    if framing == "empty":
        status = draw(st.sampled_from([204, 304]))
        body = b""
    head += b"%s %d Reason\r\n" % (version, status)
    for name, value in extra:
        head += b"%s:%s%s\r\n" % (name.encode(), draw(st.sampled_from([b"", b" ", b"\t "])),
                                   value.encode())
    if close_header:
        head += b"Connection: close\r\n"
    keep = not close_header
    ends_with_close = False
    if framing == "length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n"
        rest = body
        while rest:
            size = draw(st.integers(1, len(rest)))
            extension = draw(st.sampled_from([b"", b";name=value"]))
            wire += b"%x%s\r\n%s\r\n" % (size, extension, rest[:size])
            rest = rest[size:]
        wire += b"0\r\n"
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=2)):
            wire += b"%s: %s\r\n" % (name.encode(), value.encode())
        wire += b"\r\n"
    elif framing == "http10":
        alive = draw(st.booleans())
        head += b"Connection: keep-alive\r\n" if alive else b""
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        keep = alive
    elif framing == "empty":
        wire = head + b"\r\n"
    else:
        wire = head + b"\r\n" + body
        keep = False
        ends_with_close = True
    return wire, status, body, keep, ends_with_close


@expand
class ParserTests(SynchronousTestCase):
    """The parser over valid answers split anywhere, and over hostile bytes."""

    @given(answers(), st.lists(st.integers(0, 2000), max_size=12))
    def test_any_split_gives_the_answer_of_one_piece(self, answer: Answer, cuts: list[int]) -> None:
        wire, status, body, keep, closed = answer
        whole = parse_response(wire, closed=closed)
        assert whole is not None
        response, kept = whole
        assert (response.status, response.body, kept) == (status, body, keep)
        cuts = [c for c in cuts if c < len(wire)]
        assert feed_pieces(wire, cuts, 16 * 1024 * 1024, closed) == whole

    @given(answers(), st.integers(0, len(b"HTTP/1.1 200 OK\r\n")))
    def test_a_truncated_answer_needs_more(self, answer: Answer, short: int) -> None:
        wire, _, _, _, closed = answer
        if closed:
            return  # its end is the close
        for end in range(0, len(wire) - 1, max(1, short)):
            assert parse_response(wire[:end]) is None

    @given(answers(), st.binary(min_size=1, max_size=20))
    def test_bytes_after_the_answer_forbid_reuse(self, answer: Answer, more: bytes) -> None:
        wire, status, body, _, closed = answer
        if closed:
            return
        result = parse_response(wire + more)
        assert result is not None
        assert (result[0].status, result[0].body, result[1]) == (status, body, False)

    @given(answers(), answers())
    def test_the_parser_reads_the_next_answer_after_one(self, first: Answer, second: Answer) -> None:
        parser = ResponseParser()
        for wire, status, body, _, closed in (first, second):
            if closed:
                return
            answer = parser.feed(wire)
            assert answer is not None and (answer[0].status, answer[0].body) == (status, body)

    # -- hostile bytes -------------------------------------------------------------------

    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6), st.booleans())
    def test_random_bytes_raise_only_the_parsers_error(self, data: bytes, cuts: list[int], closed: bool) -> None:
        try:
            feed_pieces(data, [c for c in cuts if c < len(data)], 1000, closed)
        except ResponseError:
            pass

    @given(answers(), st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
    def test_a_corrupted_answer_raises_only_the_parsers_error(self, answer: Answer, at: int, junk: bytes) -> None:
        wire = answer[0]
        at %= len(wire)
        corrupted = wire[:at] + junk + wire[at + len(junk):]
        try:
            parse_response(corrupted, 1000, closed=answer[4])
        except ResponseError:
            pass

    @given(st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nX: "]),
           st.integers(1, 4))
    def test_the_head_is_bounded(self, start: bytes, pieces: int) -> None:
        parser = ResponseParser()
        filler = b"a" * (MAX_HEAD_BYTES // pieces + 1)
        with self.assertRaisesRegex(ResponseError, "headers too large"):
            parser.feed(start)
            for _ in range(pieces + 1):
                parser.feed(filler)

    @given(answers(), st.integers(0, 299), st.lists(st.integers(0, 2000), max_size=8))
    def test_the_body_is_bounded(self, answer: Answer, max_body: int, cuts: list[int]) -> None:
        wire, _, body, _, closed = answer
        cuts = [c for c in cuts if c < len(wire)]
        if len(body) <= max_body:
            result = feed_pieces(wire, cuts, max_body, closed)
            assert result is not None and result[0].body == body
        else:
            with self.assertRaisesRegex(ResponseError, f"larger than {max_body} bytes"):
                feed_pieces(wire, cuts, max_body, closed)

    @cases("reply, message", [
        (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "malformed chunk"),
    ])
    def test_broken_answers(self, reply: bytes, message: str) -> None:
        with self.assertRaisesRegex(ResponseError, message):
            parse_response(reply)
