"""An in-memory connection to a driver running in this process, over the same codec.

Adapter authors test with it without subprocesses: every byte still goes through the
line codec and the same server session that ``serve`` uses on stdio.
"""

from __future__ import annotations

import asyncio

from ._codec import FrameTooLarge, LineDecoder
from ._connection import Closed, Connection, OnClosed, OnMessage
from ._driver import Driver
from ._session import DEFAULT_ROLLBACK_GRACE, ServerSession


class MemoryConnection(Connection):
    """The host's end of an in-process adapter; ``rollback_grace`` as for ``serve``."""

    def __init__(self, driver: Driver, *, rollback_grace: float = DEFAULT_ROLLBACK_GRACE) -> None:
        self.name = driver.adapter_name
        self._to_server = LineDecoder()
        self._to_client = LineDecoder()
        self._session = ServerSession(driver, self._deliver, rollback_grace=rollback_grace)
        self._on_message: OnMessage | None = None
        self._on_closed: OnClosed | None = None
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    def start(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        self._on_message = on_message
        self._on_closed = on_closed

    def _deliver(self, data: bytes) -> None:
        if self._closed or self._on_message is None:
            return
        for item in self._to_client.feed(data):
            self._on_message(item)

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionError(f"{self.name}: the connection is closed")
        try:
            items = self._to_server.feed(data)
        except FrameTooLarge as exc:
            # What the stdio server does: a broken stream ends the adapter (exit 1).
            await self._finish(Closed(returncode=1, stderr_tail=[str(exc)]))
            return
        for item in items:
            self._session.handle(item)

    async def close(self) -> None:
        """Like closing stdin: in-flight requests are cancelled and waited for (with their
        cleanups, up to the rollback grace), then the driver closes."""
        await self._finish(Closed(returncode=0))

    async def _finish(self, closed: Closed) -> None:
        if self._closed:
            return
        await self._session.close()
        self._closed = True
        if self._on_closed is not None:
            self._on_closed(closed)
