"""The one request engine both protocol peers use: the host's ``AdapterClient`` and the kit's
``Peer`` (as the MCP python-sdk's ``JSONRPCDispatcher`` serves both of its sides).

It numbers requests, builds them (and notifications) with jsonrpcclient, tracks each one's
future by id, routes ``progress`` notifications by ``request_id``, sends ``cancel`` for calls
its owner abandons and drops their late answers, and fails everything pending when the
session ends. Its state is one explicit ``SessionState``. What a message that matches nothing
means is its owner's policy (a protocol violation for the client, a queued oddity for
``Peer``), handed to ``on_unmatched``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
from collections.abc import Callable
from typing import Any

import jsonrpcclient

from ._codec import Decoded, encode
from ._connection import Closed, Connection

Response = dict[str, Any]
OnProgress = Callable[[dict[str, Any]], object]


class SessionState(enum.Enum):
    """Where a session is in its life; only ``OPEN`` sends requests."""

    OPEN = "open"
    #: Its owner is closing it (the ``shutdown`` exchange may still run).
    CLOSING = "closing"
    #: Its owner closed it.
    CLOSED = "closed"
    #: It broke: the peer crashed, broke the protocol, or was stopped for not answering.
    FAILED = "failed"


class RequestEngine:
    """Request tracking over one connection; see the module docstring."""

    def __init__(
        self,
        connection: Connection,
        *,
        on_unmatched: Callable[[Decoded], None],
        on_closed: Callable[[Closed], BaseException | None],
        closed_error: Callable[[], BaseException],
    ) -> None:
        """``on_closed`` turns the connection's end into the error pending calls fail with (None:
        the owner fails them itself); ``closed_error`` makes the error for a call after the owner
        closed the session."""
        self.connection = connection
        self.state = SessionState.OPEN
        #: What ended the session when it failed.
        self.failure: BaseException | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._progress: dict[int, OnProgress] = {}
        self._abandoned: set[int] = set()
        self._sending: set[asyncio.Future[None]] = set()
        self._on_unmatched = on_unmatched
        self._on_closed_hook = on_closed
        self._closed_error = closed_error
        connection.start(self._on_message, self._on_closed)

    # --- outgoing ------------------------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    def check_open(self) -> None:
        """Raise what a new call meets when the session is not open."""
        if self.state is SessionState.FAILED and self.failure is not None:
            raise self.failure
        if self.state is not SessionState.OPEN:
            raise self._closed_error()

    def request(self, method: str, params: dict[str, Any] | None, ident: int) -> bytes:
        """One encoded request (jsonrpcclient builds it; empty params are left out)."""
        return encode(jsonrpcclient.request(method, params or None, id=ident))

    async def start(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: OnProgress | None = None,
        ident: int | None = None,
        data: bytes | None = None,
    ) -> tuple[int, asyncio.Future[Response]]:
        """Send a request; its id and the future of its response (``finish`` it when done)."""
        self.check_open()
        ident = self.next_id() if ident is None else ident
        if data is None:  # ``data``: the request already encoded (by ``request``) for ``ident``
            data = self.request(method, params, ident)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        if on_progress is not None:
            self._progress[ident] = on_progress
        try:
            await self.connection.send(data)
        except asyncio.CancelledError:
            raise  # the line may already be queued: it stays pending, for the caller to cancel
        except BaseException:
            self.finish(ident)
            raise
        return ident, future

    def pending(self, ident: int) -> asyncio.Future[Response] | None:
        """The future of ``ident`` while it is in flight."""
        return self._pending.get(ident)

    def finish(self, ident: int, *, abandon: bool = False) -> None:
        """Forget ``ident``; with ``abandon``, a late answer to it is dropped silently."""
        future = self._pending.pop(ident, None)
        self._progress.pop(ident, None)
        if abandon and future is not None and not future.done():
            self._abandoned.add(ident)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self.connection.send(encode(jsonrpcclient.notification(method, params)))

    def cancel(self, ident: int) -> None:
        """Send ``cancel`` for ``ident`` without waiting (best effort; a send that fails means the
        session is ending, which fails the call anyway)."""
        if self.state is not SessionState.OPEN:
            return
        task = asyncio.ensure_future(self._notify_quietly("cancel", {"id": ident}))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _notify_quietly(self, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.notify(method, params)

    # --- incoming ------------------------------------------------------------------------
    def _on_message(self, item: Decoded) -> None:
        if isinstance(item, dict) and item.get("jsonrpc") == "2.0":
            if "method" in item:
                if "id" not in item and item["method"] == "progress" and self._route_progress(item):
                    return
            else:
                ident = item.get("id")
                if isinstance(ident, int) and not isinstance(ident, bool):
                    future = self._pending.get(ident)
                    if future is not None:
                        if not future.done():
                            future.set_result(item)
                        return
                    if ident in self._abandoned:
                        self._abandoned.discard(ident)
                        return
        self._on_unmatched(item)

    def _route_progress(self, item: dict[str, Any]) -> bool:
        params = item.get("params")
        target = params.get("request_id") if isinstance(params, dict) else None
        callback = self._progress.get(target) if isinstance(target, int) else None
        if callback is None:
            return False  # not for a request in flight: the owner's policy decides
        assert isinstance(params, dict)
        callback(params)
        return True

    def _on_closed(self, closed: Closed) -> None:
        error = self._on_closed_hook(closed)
        if error is not None:
            self.fail(error)

    # --- ending ------------------------------------------------------------------------------
    def fail(self, error: BaseException) -> bool:
        """The session broke: every pending and later call fails with ``error``. False when it
        had already ended (the first reason stands)."""
        if self.state in (SessionState.FAILED, SessionState.CLOSED):
            return False
        self.state = SessionState.FAILED
        self.failure = error
        self._fail_pending(error)
        return True

    def closing(self) -> None:
        if self.state is SessionState.OPEN:
            self.state = SessionState.CLOSING

    def closed(self) -> None:
        """Its owner closed it: pending calls fail with the closed error."""
        if self.state is not SessionState.FAILED:
            self.state = SessionState.CLOSED
        self._fail_pending(self.failure or self._closed_error())

    def _fail_pending(self, error: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
