"""What bounds each of the daemon's listeners against clients that hold connections.

uvicorn bounds neither the time to a complete request nor the number of connections: a client
that dribbles one header byte every few seconds (the token is read only once the head is
complete) holds a connection, and enough of them exhaust the open files, locking out every
client, the Unix socket's too. ``bounded_protocol`` is uvicorn's h11 protocol with both bounds
(``[serve] request_timeout``, ``[serve] max_connections``); ``raise_open_files`` and
``connection_caps`` size those caps to the process's open-file limit, so a flood on the TCP port
leaves the socket room; ``QuietAccept`` keeps repeated accept errors from flooding the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import struct
import time
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .._errors import retryable_kind
from ._auth import PEER_UID
from ._schemas import RETRY_AFTER

log = logging.getLogger("hearth.serve")

#: The open files kept apart from the listeners' connections (store, adapters' pipes, logs):
#: an eighth of the limit, at least this many.
RESERVED_FILES = 64
#: How often a repeated refusal or accept error is logged again (seconds), with its count.
LOG_EVERY = 10.0
#: The highest open-file limit asked for when the hard limit is unlimited.
MAX_FILES = 1 << 20


def _answer(status: int, reason: str, kind: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response with the API's error body, written before or instead of h11's
    (the client may not have sent a whole request head for h11 to answer)."""
    error = {"kind": kind, "message": message, "retryable": retryable_kind(kind)}
    body = json.dumps({"error": error}).encode()
    after = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{after}connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Repeated:
    """Logs the first of a repeated event, then at most once per ``LOG_EVERY`` with how many
    there were since: under a flood the log grows by a line every few seconds, not per event."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None to stay quiet; else how many were held back since the last line."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < LOG_EVERY:
            self._count[key] = self._count.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._count.pop(key, 0)


class BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request and a cap on connections.

    The deadline runs from the connection (or from the first byte of the next request on a
    kept-alive one) to the end of the request's body; past it the client gets 408 and the
    connection closes. It is off while the app answers, so streams and long waits are untouched.
    A connection past the listener's cap is answered 503 and closed at once."""

    #: Set on the subclass ``bounded_protocol`` makes for one listener.
    request_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 4096
    listener: ClassVar[str] = "listener"
    repeated: ClassVar[_Repeated] = _Repeated()

    _deadline: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        uid = peer_uid(transport)
        if uid is not None:  # every request of this connection is its peer's (``_auth``)
            self.app_state = {**self.app_state, PEER_UID: uid}
        if not full:
            self._arm()
            return
        self._refused = True
        self.connections.discard(self)  # it never counts against the cap
        held = self.repeated.due(f"full:{self.listener}")
        if held is not None:
            more = f" ({held} more since the last report)" if held else ""
            log.warning(
                "the %s holds its limit of %d connections; refusing new ones%s",
                self.listener,
                self.max_connections,
                more,
            )
        message = (
            f"the daemon holds its limit of {self.max_connections} connections on this"
            " listener ([serve] max_connections); try again shortly"
        )
        transport.write(
            _answer(
                503, "Service Unavailable", "daemon_unavailable", message, RETRY_AFTER["daemon_unavailable"]
            )
        )
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()  # the next request on a kept-alive connection begins
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request is whole (or the connection is done)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing of an answer sent yet
            message = (
                f"the request was not complete within {self.request_timeout:g} s"
                " ([serve] request_timeout); the connection is closed"
            )
            self.transport.write(_answer(408, "Request Timeout", "invalid_input", message))
        self.transport.close()


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of a Unix-socket connection's peer, from the kernel (``SO_PEERCRED``: what the
    peer was when it connected, not what it says); None on any other transport."""
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def bounded_protocol(listener: str, request_timeout: float, max_connections: int) -> type[BoundedH11]:
    """The protocol class for one listener (uvicorn's ``Config(http=...)``): each listener has
    its own cap, its connections counted apart from the other's."""
    attributes: dict[str, Any] = {
        "request_timeout": request_timeout,
        "max_connections": max_connections,
        "listener": listener,
        "repeated": _Repeated(),
    }
    return type("BoundedH11", (BoundedH11,), attributes)


def raise_open_files() -> int:
    """Raise the soft open-file limit to the hard one (a systemd service starts at 1,024 even
    when it may have far more); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("the open-file limit stays at %d: %s", soft, exc)
            return soft
        log.info("open-file limit raised from %d to %d", soft, wanted)
        return wanted
    return MAX_FILES if soft == resource.RLIM_INFINITY else soft


def connection_caps(wanted: int, listeners: int, open_files: int) -> int:
    """Each listener's cap: ``wanted``, lowered so that every listener at its cap still leaves
    the reserve of open files (logged, with what to raise)."""
    reserve = max(RESERVED_FILES, open_files // 8)
    room = max(1, (open_files - reserve) // listeners)
    if room < wanted:
        log.warning(
            "[serve] max_connections %d lowered to %d per listener: the open-file limit is %d"
            " (raise it, e.g. LimitNOFILE= in the systemd unit)",
            wanted,
            room,
            open_files,
        )
        return room
    return wanted


class QuietAccept:
    """The loop's exception handler with repeated accept errors (EMFILE when a flood exhausts
    the open files) logged once per ``LOG_EVERY`` with their count, not once per retry."""

    def __init__(self) -> None:
        self._repeated = _Repeated()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message:
            loop.default_exception_handler(context)
            return
        held = self._repeated.due(message)
        if held is None:
            return
        exc = context.get("exception")
        more = f" ({held} more since the last report)" if held else ""
        log.error("%s: %s%s", message, exc, more)


__all__ = [
    "BoundedH11",
    "QuietAccept",
    "bounded_protocol",
    "connection_caps",
    "peer_uid",
    "raise_open_files",
]
