"""The sans-IO line codec."""

from __future__ import annotations

import json

import pytest

from hearth_adaptersdk import FrameTooLarge, LineDecoder, Malformed, MessageTooLarge, Unencodable, encode


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


@pytest.mark.parametrize("deep", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_a_deeply_nested_line_is_malformed_and_consumed(deep: bytes) -> None:
    decoder = LineDecoder()
    after = {"jsonrpc": "2.0", "id": 2, "method": "status"}
    malformed, message = decoder.feed(deep + b"\n" + encode(after))
    assert isinstance(malformed, Malformed) and "nested too deeply" in malformed.reason
    assert message == after
    assert decoder.pending == 0
    assert decoder.feed(encode(after)) == [after]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_non_finite_numbers_are_malformed(number: bytes) -> None:
    [item] = LineDecoder().feed(b'{"x": [1.5, ' + number + b"]}\n")
    assert isinstance(item, Malformed)
    assert "non-finite numbers are refused" in item.reason
    assert LineDecoder().feed(b'{"x": 1e300}\n') == [{"x": 1e300}]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encoding_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(Unencodable, match="NaN or an infinity") as caught:
        encode({"result": {"details": {"load": value}}})
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, MessageTooLarge)


def test_every_refusal_to_encode_is_unencodable() -> None:
    assert issubclass(MessageTooLarge, Unencodable) and issubclass(Unencodable, ValueError)
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(Unencodable, match="nested too deeply"):
        encode(deep)  # type: ignore[arg-type]
