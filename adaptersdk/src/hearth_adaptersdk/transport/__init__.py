"""Transports and the request engine: what a protocol peer (a host, a test kit) needs to talk
to an adapter. Adapter authors need none of it; ``serve`` and ``testing`` use it for them.

``MemoryConnection`` runs a driver in this process and so loads the server side (jsonrpcserver);
it is imported only when asked for.
"""

import typing

from .._codec import (
    Decoded,
    FrameTooLarge,
    LineDecoder,
    Malformed,
    MessageTooLarge,
    Unencodable,
    decode_line,
    encode,
    preview,
)
from .._connection import Closed, Connection, OnClosed, OnMessage, WriteCoalescer
from .._engine import RequestEngine, SessionState
from .._subprocess import SubprocessConnection, child_environment

if typing.TYPE_CHECKING:
    from .._memory import MemoryConnection

__all__ = [
    "Closed",
    "Connection",
    "Decoded",
    "FrameTooLarge",
    "LineDecoder",
    "Malformed",
    "MemoryConnection",
    "MessageTooLarge",
    "OnClosed",
    "OnMessage",
    "RequestEngine",
    "SessionState",
    "SubprocessConnection",
    "Unencodable",
    "WriteCoalescer",
    "child_environment",
    "decode_line",
    "encode",
    "preview",
]


def __getattr__(name: str) -> typing.Any:
    if name == "MemoryConnection":
        from .._memory import MemoryConnection

        return MemoryConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
