"""Sans-IO line codec: bytes in, messages out; messages in, bytes out.

No I/O happens here, so the stdio server, the subprocess transport and the in-memory
connection all frame messages in exactly the same way (as h11 does for HTTP).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .codes import MAX_MESSAGE_BYTES


class FrameTooLarge(Exception):
    """A line grew past the message limit: the connection is broken, the reader is not."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"a message of at least {size} bytes exceeds the {limit // (1024 * 1024)} MiB limit"
        )
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

    __slots__ = ("_buffer", "_limit", "_scanned")

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._scanned = 0

    def feed(self, data: bytes) -> list[Decoded]:
        """Add bytes; return every complete message. Raises FrameTooLarge past the limit."""
        buffer = self._buffer
        buffer += data
        out: list[Decoded] = []
        start = 0
        search_from = self._scanned
        while True:
            end = buffer.find(b"\n", search_from)
            if end < 0:
                break
            if end - start > self._limit:
                raise FrameTooLarge(end - start, self._limit)
            line = bytes(buffer[start:end])
            start = search_from = end + 1
            if line.strip():
                out.append(decode_line(line))
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._limit:
            raise FrameTooLarge(len(buffer), self._limit)
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete line."""
        return len(self._buffer)


def decode_line(line: bytes) -> Decoded:
    """Parse one line (without its newline) into a message or a Malformed record.

    Never raises: anything ``json.loads`` refuses, a nesting deep enough to exhaust the
    recursion limit, and the non-finite numbers JSON does not have (``NaN``, ``Infinity``,
    ``-Infinity``, or a literal such as ``1e999`` that overflows to infinity) are Malformed.
    """
    try:
        value = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        return Malformed(line[:200], "not JSON: nested too deeply")
    except Exception as exc:  # ValueError, UnicodeDecodeError, or anything else json.loads raises
        return Malformed(line[:200], f"not JSON: {exc}")
    if not isinstance(value, dict | list):
        return Malformed(line[:200], "not a JSON object")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (non-finite numbers are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to infinity (non-finite numbers are refused)")
    return value


class Unencodable(ValueError):
    """Refused to encode a message (nothing was sent): it cannot be put on the wire.

    Raised for NaN or an infinity anywhere in the message (JSON has no such numbers), for
    nesting too deep to encode or a circular reference, and, as the subclass
    ``MessageTooLarge``, for a message past the size limit. Catch this to cover every case.
    (An object of a type JSON has no form for is a programming error: TypeError, as before.)
    """


class MessageTooLarge(Unencodable):
    """Refused to encode a message past the size limit (nothing was sent)."""


def encode(message: Message, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """One message as one line; compact JSON never contains a raw newline.

    Raises ``Unencodable`` (a ValueError) when the message cannot be sent: NaN or an infinity
    in it, nesting too deep, a circular reference, or (``MessageTooLarge``) a message past
    ``limit`` bytes.
    """
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise Unencodable("the message is nested too deeply to encode") from None
    except ValueError as exc:  # json.dumps raises it for NaN, infinities and circular references
        reason = ("it contains NaN or an infinity, which JSON cannot represent"
                  if "Out of range float" in str(exc) else str(exc))
        raise Unencodable(f"the message cannot be encoded as JSON: {reason}") from None
    data = text.encode()
    if len(data) > limit:
        raise MessageTooLarge(
            f"a message of {len(data)} bytes exceeds the {limit // (1024 * 1024)} MiB limit"
        )
    return data + b"\n"


def preview(raw: bytes, size: int = 80) -> str:
    """The first bytes of a line, printable, for error messages."""
    text = raw[:size].decode("utf-8", "replace")
    return repr(text) + ("…" if len(raw) > size else "")
