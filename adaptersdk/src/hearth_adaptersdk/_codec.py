"""Sans-IO line codec: bytes in, messages out; messages in, bytes out.

No I/O happens here, so the stdio server, the subprocess transport and the in-memory
connection all frame messages in exactly the same way (as h11 does for HTTP).

JSON is parsed and written by pydantic-core (``from_json`` / ``to_json``), which pydantic
already brings. Its parser refuses nesting deeper than about 200 levels, so ``encode``
refuses to write such a message too: any object or array ``encode`` writes, ``decode_line``
reads back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from .codes import MAX_MESSAGE_BYTES


class FrameTooLarge(Exception):
    """A line grew past the message limit: the connection is broken, the reader is not."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of at least {size} bytes exceeds the {limit // (1024 * 1024)} MiB limit")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that is not a JSON object or array; ``raw`` keeps its first bytes for errors."""

    raw: bytes
    reason: str


Message = dict[str, Any] | list[Any]
Decoded = Message | Malformed


class LineDecoder:
    """Splits a byte stream into JSON messages, one per ``\\n``-terminated line."""

    __slots__ = ("_buffer", "_limit")

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()  # the start of a line whose newline has not come yet
        self._limit = limit

    def feed(self, data: bytes) -> list[Decoded]:
        """Add bytes; return every complete message. Raises FrameTooLarge past the limit."""
        lines = data.split(b"\n")
        tail = lines.pop()
        buffer = self._buffer
        suspect = False
        if lines and buffer:
            buffer += lines[0]
            lines[0] = bytes(buffer)
            buffer.clear()
            suspect = _may_overflow(lines[0])
        buffer += tail
        limit = self._limit
        longest = max(map(len, lines), default=0)
        if longest > limit:
            raise FrameTooLarge(longest, limit)
        if len(buffer) > limit:
            raise FrameTooLarge(len(buffer), limit)
        if not lines:
            return []
        # One look over the whole chunk clears every line in it of an overflowing literal.
        suspect = suspect or _may_overflow(data)
        return [_decode(line, suspect) for line in lines if line.strip()]

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete line."""
        return len(self._buffer)


# Deepest nesting of objects and arrays a message may have: pydantic-core's parser refuses
# more (its limit lets an empty innermost object or array be the 201st level).
_MAX_DEPTH = 200

# The parser reads a float literal too large for a float (``1e999``) as an infinity. Such a
# literal needs an exponent of three digits or more, or (JSON has no leading zeros) at least
# 210 digits before its point: with every digit read as 0 and ``+`` dropped, it contains
# ``0e000`` or a run of 200 zeros. Only the rare line with either is searched for infinities.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_LONG_RUN = b"0" * 200
_EXPONENT = re.compile(rb"e000")  # finds it faster than ``in`` does among many zeros
_FLOAT_LITERAL = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_REFUSED = "(non-finite numbers are refused)"


def decode_line(line: bytes) -> Decoded:
    """Parse one line (without its newline) into a message or a Malformed record.

    Never raises: anything the JSON parser refuses (including invalid UTF-8 and lone surrogate
    escapes), nesting past about 200 levels, and the non-finite numbers JSON does not have
    (``NaN``, ``Infinity``, ``-Infinity``, or a literal such as ``1e999`` that overflows to
    infinity) are Malformed. Integers stay ``int`` of any size; of a key repeated in one
    object, the last value wins (as with ``json.loads``).
    """
    return _decode(line, _may_overflow(line))


def _may_overflow(data: bytes) -> bool:
    """False when no float literal in ``data`` can overflow to infinity (see _DIGITS_AS_ZERO)."""
    translated = data.translate(_DIGITS_AS_ZERO, b"+")
    return (_EXPONENT.search(translated) is not None and b"0e000" in translated) or (
        len(translated) >= 200 and _LONG_RUN in translated
    )


def _decode(line: bytes, may_overflow: bool) -> Decoded:
    try:
        value = from_json(line, allow_inf_nan=False)
    except ValueError as exc:
        return Malformed(bytes(line[:200]), _parse_error(line, exc))
    except Exception as exc:  # not expected from the parser, but decode_line never raises
        return Malformed(bytes(line[:200]), f"not JSON: {exc}")
    if may_overflow and _non_finite(value) is not None:
        return Malformed(
            bytes(line[:200]), f"not JSON: {_overflowing_literal(line)} overflows to infinity {_REFUSED}"
        )
    if not isinstance(value, dict | list):
        return Malformed(bytes(line[:200]), "not a JSON object")
    return value


def _parse_error(line: bytes, exc: ValueError) -> str:
    text = str(exc)
    if text.startswith("recursion limit exceeded"):
        return "not JSON: nested too deeply"
    if b"NaN" in line or b"Infinity" in line:  # refused by allow_inf_nan=False? Say so.
        try:
            bad = _non_finite(from_json(line, allow_inf_nan=True, cache_strings=False))
        except ValueError:
            bad = None  # something else is wrong too: report the parser's first complaint
        if bad is not None:
            name = "NaN" if math.isnan(bad) else "Infinity" if bad > 0 else "-Infinity"
            return f"not JSON: {name} is not a JSON number {_REFUSED}"
    return f"not JSON: {text}"


def _non_finite(value: object) -> float | None:
    """The first NaN or infinity in a parsed value, in document order, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return item
    return None


def _overflowing_literal(line: bytes) -> str:
    for match in _FLOAT_LITERAL.finditer(line):
        if not math.isfinite(float(match[0])):
            literal = match[0].decode()
            return literal if len(literal) <= 40 else f"{literal[:20]}…{literal[-12:]}"
    return "a number"


class Unencodable(ValueError):
    """Refused to encode a message (nothing was sent): it cannot be put on the wire.

    Raised for NaN or an infinity anywhere in the message (JSON has no such numbers), for
    nesting past about 200 levels or a circular reference, for a string that is not valid
    Unicode (a lone surrogate), and, as the subclass ``MessageTooLarge``, for a message past
    the size limit. Catch this to cover every case. (An object of a type with no JSON form is a
    programming error: TypeError, as before. Types pydantic knows, such as ``datetime``,
    ``UUID``, ``Enum`` or a model, are written in their pydantic JSON form.)
    """


class MessageTooLarge(Unencodable):
    """Refused to encode a message past the size limit (nothing was sent)."""


def encode(message: Message, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """One message as one line; compact JSON (UTF-8, non-ASCII kept) never has a raw newline.

    Raises ``Unencodable`` (a ValueError) when the message cannot be sent: NaN or an infinity
    in it, nesting too deep, a circular reference, a lone surrogate, or (``MessageTooLarge``) a
    message past ``limit`` bytes. Whatever it returns for an object or an array,
    ``decode_line`` accepts.
    """
    try:
        data = to_json(message)
    except PydanticSerializationError as exc:
        raise _unencodable(str(exc)) from None
    if len(data) > limit:
        raise MessageTooLarge(
            f"a message of {len(data)} bytes exceeds the {limit // (1024 * 1024)} MiB limit"
        )
    # to_json writes NaN and infinities as the constants NaN and Infinity, and nests deeper
    # than from_json reads. A line that may hold either (more brackets than _MAX_DEPTH, or the
    # text of a constant) is read back: from_json then says which, if either, it holds.
    if (
        (len(data) > 2 * _MAX_DEPTH and data.count(b"[") + data.count(b"{") > _MAX_DEPTH)
        or b"NaN" in data
        or b"Infinity" in data
    ):
        try:
            from_json(data, allow_inf_nan=False, cache_strings=False)
        except ValueError as exc:
            if str(exc).startswith("recursion limit exceeded"):
                raise Unencodable("the message is nested too deeply to encode") from None
            if b"NaN" in data or b"Infinity" in data:
                raise Unencodable(
                    "the message cannot be encoded as JSON: it contains NaN or an "
                    "infinity, which JSON cannot represent"
                ) from None
            raise Unencodable(f"the message cannot be encoded as JSON: {exc}") from None
    return data + b"\n"


def _unencodable(text: str) -> Exception:
    text = text.removeprefix("Error serializing to JSON: ")
    if "Unable to serialize unknown type" in text:
        return TypeError(
            f"the message cannot be encoded as JSON: an object of {text.rpartition(': ')[2]} has no JSON form"
        )
    if "Maximum serialization depth exceeded" in text:
        return Unencodable("the message is nested too deeply to encode")
    if "Circular reference detected" in text:
        return Unencodable("the message cannot be encoded as JSON: it contains a circular reference")
    if text.startswith("UnicodeEncodeError"):
        return Unencodable(
            "the message cannot be encoded as JSON: a string in it is not valid "
            f"Unicode ({text.partition(': ')[2]})"
        )
    return Unencodable(f"the message cannot be encoded as JSON: {text}")


def preview(raw: bytes, size: int = 80) -> str:
    """The first bytes of a line, printable, for error messages."""
    text = raw[:size].decode("utf-8", "replace")
    return repr(text) + ("…" if len(raw) > size else "")
