"""The interface every transport offers to a protocol peer (the host's client, the kit).

A connection pushes decoded messages to a handler as they arrive and reports its end
once, with what is known about why it ended; ``send`` writes one encoded line.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from ._codec import Decoded


@dataclass(frozen=True)
class Closed:
    """The peer's end of the connection: exit code and stderr tail where there is a process."""

    returncode: int | None = None
    stderr_tail: list[str] = field(default_factory=list)
    #: Set when the stream broke (e.g. a line over the size limit) rather than ended.
    error: Exception | None = None


OnMessage = Callable[[Decoded], None]
OnClosed = Callable[[Closed], None]


class Connection(ABC):
    """One byte stream to one adapter, framed by the line codec."""

    #: A short name for messages and logs (the adapter's executable name).
    name: str = "adapter"

    @abstractmethod
    def start(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        """Begin delivering incoming messages; ``on_closed`` is called exactly once."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write one encoded line; raises ConnectionError once the connection is closed."""

    @abstractmethod
    async def close(self) -> None:
        """End the connection and release everything behind it; bounded in time."""

    def stderr_tail(self) -> list[str]:
        """The last lines the peer wrote to stderr (empty where there is no process)."""
        return []


class WriteCoalescer:
    """Joins the lines written in one event-loop turn into a few writes.

    Under load many answers (or requests) become ready in the same turn; one system call
    for many of them instead of one each is most of the difference in pipelined throughput.
    A burst is written every ``BURST`` lines rather than all at the end of the turn, so that
    the peer starts on the first lines while this side still works on the rest: the two
    processes then run side by side instead of taking turns.
    """

    __slots__ = ("_chunks", "_loop", "_write")
    BURST = 8

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._chunks: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, data: bytes) -> None:
        if not self._chunks:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush)
        self._chunks.append(data)
        if len(self._chunks) >= self.BURST:
            self.flush()  # the turn's call_soon then finds nothing, or the next few lines

    def flush(self) -> None:
        if self._chunks:
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            self._write(data)
