"""The sans-IO line codec."""

from __future__ import annotations

import json
import math
import random
import struct
import sys

import pytest

from hearth_adaptersdk import FrameTooLarge, LineDecoder, Malformed, MessageTooLarge, Unencodable, encode
from hearth_adaptersdk._codec import decode_line


def test_messages_split_across_chunks_are_reassembled() -> None:
    decoder = LineDecoder()
    data = encode({"jsonrpc": "2.0", "id": 1, "method": "status"}) + encode([1, 2])
    items = [item for byte in data for item in decoder.feed(bytes([byte]))]
    assert items == [{"jsonrpc": "2.0", "id": 1, "method": "status"}, [1, 2]]
    assert decoder.pending == 0


def test_blank_lines_are_ignored_and_partial_lines_wait() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b'\n  \n{"a"') == []
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


@pytest.mark.parametrize(
    "deep", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000]
)
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
        encode(deep)


def test_the_wire_format_is_compact_utf8_json_as_before() -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {
            "text": "prêt ✓ \u2028",
            "ctl": "a\tb\r\x00",
            "n": [0.1, 1e300, -0.0, 5e-324, 2**80, None, True],
        },
    }
    data = encode(message)
    assert data == json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert "prêt ✓".encode() in data and b"\r" not in data and b"\x00" not in data
    assert LineDecoder().feed(data) == [message]


def test_integers_stay_integers_of_any_size_and_floats_stay_floats() -> None:
    [message] = LineDecoder().feed(
        b'{"a": 1, "b": -0, "c": 1.0, "d": 1E2, "e": 1e-999, '
        b'"big": 123456789012345678901234567890, "neg": -9223372036854775809}\n'
    )
    assert isinstance(message, dict)
    assert [type(v) for v in message.values()] == [int, int, float, float, float, int, int]
    assert message == {
        "a": 1,
        "b": 0,
        "c": 1.0,
        "d": 100.0,
        "e": 0.0,
        "big": 123456789012345678901234567890,
        "neg": -9223372036854775809,
    }
    assert (
        encode(message) == b'{"a":1,"b":0,"c":1.0,"d":100.0,"e":0.0,'
        b'"big":123456789012345678901234567890,"neg":-9223372036854775809}\n'
    )


def test_floats_round_trip_exactly() -> None:
    rng = random.Random(1729)
    values = [rng.uniform(-1e6, 1e6) for _ in range(500)]
    values += [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(500)]
    values += [v for v in (struct.unpack("<d", rng.randbytes(8))[0] for _ in range(2000)) if math.isfinite(v)]
    values += [sys.float_info.max, -sys.float_info.max, sys.float_info.min, 5e-324, 0.1 + 0.2, 1 / 3]
    [decoded] = LineDecoder().feed(encode(values))
    assert decoded == values
    assert all(type(value) is float for value in decoded)
    assert json.loads(encode(values)) == values  # and any other JSON reader gets the same numbers
    assert decode_line(b"[-0.0]") == [-0.0]
    assert str(decode_line(b"[-0.0]")) == "[-0.0]"  # the sign survives too


def test_a_repeated_key_keeps_its_last_value_as_json_loads_does() -> None:
    line = b'{"id": 1, "method": "status", "id": 2}'
    assert decode_line(line) == json.loads(line) == {"id": 2, "method": "status"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"x": NaN}', "not JSON: NaN is not a JSON number (non-finite numbers are refused)"),
        (b"[Infinity]", "not JSON: Infinity is not a JSON number (non-finite numbers are refused)"),
        (
            b'{"x": {"y": [-Infinity]}}',
            "not JSON: -Infinity is not a JSON number (non-finite numbers are refused)",
        ),
        (b'{"x": 1e999}', "not JSON: 1e999 overflows to infinity (non-finite numbers are refused)"),
        (b'{"x": -1.5E+400}', "not JSON: -1.5E+400 overflows to infinity (non-finite numbers are refused)"),
        (b"[" + b"1" * 400 + b".0]", "overflows to infinity (non-finite numbers are refused)"),
        (b"[" + b"1" * 250 + b"e99]", "overflows to infinity (non-finite numbers are refused)"),
        (b"hello world", "not JSON: expected value at line 1 column 1"),
        (b'{"a": 1} x', "not JSON: trailing characters at line 1 column 10"),
        (b"[1, 2", "not JSON: EOF while parsing a list at line 1 column 5"),
        (b'{"x": NaN', "not JSON: expected value at line 1 column 7"),  # broken besides: as the parser says
        (b'["a\xffb"]', "not JSON: invalid unicode code point"),
        (b'["\\ud800"]', "not JSON: "),  # a lone surrogate is not a string JSON can carry
        (b"42", "not a JSON object"),
        (b'"text"', "not a JSON object"),
    ],
)
def test_malformed_lines_say_why(line: bytes, reason: str) -> None:
    item = decode_line(line)
    assert isinstance(item, Malformed)
    assert item.reason.startswith(reason) or reason in item.reason, item.reason
    assert item.raw == line[:200]


def test_numbers_and_constants_inside_strings_are_only_text() -> None:
    message = {"log": "NaN, Infinity, 1e999, 1E+400 and " + "9" * 300, "sha": "ab1e3456" * 8}
    assert LineDecoder().feed(encode(message)) == [message]
    assert decode_line(b'{"x": 1e308, "y": 1.7976931348623157e+308, "z": 1e-400}') == {
        "x": 1e308,
        "y": 1.7976931348623157e308,
        "z": 0.0,
    }


def test_an_overflowing_number_split_across_chunks_is_still_refused() -> None:
    decoder = LineDecoder()
    good = encode({"jsonrpc": "2.0", "method": "progress", "params": {"fraction": 0.5}})
    assert decoder.feed(good + b'{"x": 1e9') == [
        {"jsonrpc": "2.0", "method": "progress", "params": {"fraction": 0.5}}
    ]
    bad, after = decoder.feed(b"99}\n" + good)
    assert isinstance(bad, Malformed) and "1e999 overflows to infinity" in bad.reason
    assert after == {"jsonrpc": "2.0", "method": "progress", "params": {"fraction": 0.5}}
    batch = decoder.feed(good * 3 + b"[1, 2e400]\n" + good)
    assert [isinstance(item, Malformed) for item in batch] == [False, False, False, True, False]


def _nested(depth: int, kind: str, inner: object) -> object:
    value = inner
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return value


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("inner", [1, [], {}])
@pytest.mark.parametrize("depth", [1, 100, 199, 200, 201, 202, 203, 210, 255, 256, 1000])
def test_encode_writes_exactly_what_decode_reads_back_however_deep(
    kind: str, inner: object, depth: int
) -> None:
    message = _nested(depth, kind, inner)
    middle = json.dumps(inner).encode()
    line = (
        b"[" * depth + middle + b"]" * depth if kind == "array" else b'{"a":' * depth + middle + b"}" * depth
    )
    decoded = decode_line(line)
    if isinstance(decoded, Malformed):
        assert depth >= 200 and "nested too deeply" in decoded.reason
        with pytest.raises(Unencodable, match="nested too deeply"):
            encode(message)  # type: ignore[arg-type]
    else:
        assert decoded == message
        assert encode(decoded) == line + b"\n"


def test_circular_references_and_lone_surrogates_are_unencodable() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(Unencodable, match="circular reference"):
        encode(loop)
    with pytest.raises(Unencodable, match="not valid Unicode"):
        encode({"text": "\ud800"})


def test_an_object_with_no_json_form_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="has no JSON form") as caught:
        encode({"result": object()})
    assert not isinstance(caught.value, ValueError)
    with pytest.raises(TypeError):
        encode({object(): 1})  # type: ignore[dict-item]


def test_only_a_line_that_mentions_nan_or_is_deep_is_read_back() -> None:
    """encode's read-back check must not miss NaN hidden among many brackets, nor refuse text."""
    wide = {"items": [[i, {"v": i}] for i in range(300)]}
    assert LineDecoder().feed(encode(wide)) == [wide]
    with pytest.raises(Unencodable, match="NaN or an infinity"):
        encode({"items": [[i, {"v": i}] for i in range(300)] + [float("nan")]})
