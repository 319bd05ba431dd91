"""The sans-IO line codec."""

from __future__ import annotations

import json

import pytest

from hearth_adaptersdk import FrameTooLarge, LineDecoder, Malformed, MessageTooLarge, encode


def test_messages_split_across_chunks_are_reassembled() -> None:
    decoder = LineDecoder()
    data = encode({"jsonrpc": "2.0", "id": 1, "method": "status"}) + encode([1, 2])
    items = [item for byte in data for item in decoder.feed(bytes([byte]))]
    assert items == [{"jsonrpc": "2.0", "id": 1, "method": "status"}, [1, 2]]
    assert decoder.pending == 0


def test_blank_lines_are_ignored_and_partial_lines_wait() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"\n  \n{\"a\"") == []
    assert decoder.feed(b": 1}\n") == [{"a": 1}]


def test_a_line_that_is_not_json_is_reported_with_its_first_bytes() -> None:
    [item] = LineDecoder().feed(b"hello world\n")
    assert isinstance(item, Malformed)
    assert item.raw == b"hello world"
    [scalar] = LineDecoder().feed(b"42\n")
    assert isinstance(scalar, Malformed)


def test_invalid_utf8_is_malformed_not_an_exception() -> None:
    [item] = LineDecoder().feed(b"\xff\xfe{}\n")
    assert isinstance(item, Malformed)


def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_breaks() -> None:
    limit = 1000
    body = json.dumps({"x": "y" * (limit - 9)}).encode()
    assert len(body) == limit
    assert LineDecoder(limit).feed(body + b"\n") == [json.loads(body)]
    with pytest.raises(FrameTooLarge):
        LineDecoder(limit).feed(b" " + body + b"\n")


def test_an_endless_line_breaks_before_it_is_complete() -> None:
    decoder = LineDecoder(1000)
    decoder.feed(b"x" * 900)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"x" * 200)


def test_encoding_never_puts_a_raw_newline_inside_a_message() -> None:
    data = encode({"text": "two\nlines", "unicode": "é"})
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert LineDecoder().feed(data) == [{"text": "two\nlines", "unicode": "é"}]


def test_encoding_refuses_a_message_over_the_limit() -> None:
    with pytest.raises(MessageTooLarge):
        encode({"x": "y" * 2000}, limit=1000)
