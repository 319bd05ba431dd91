"""``hearth serve`` against what issue 20 found: slow TCP round trips (no ``TCP_NODELAY`` on
accepted connections), numbers out of range, bodies that are not UTF-8 or nest too deep, and
unexpected exceptions: each answers the JSON error body of a documented kind."""

from __future__ import annotations

import asyncio
import socket

from hearth._server._daemon import _tcp_socket

BOUND = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_accepted_tcp_connections_send_at_once() -> None:
    """The listener ``hearth serve --listen`` makes hands asyncio connections it sets
    ``TCP_NODELAY`` on: uvicorn writes a response's head and body apart, and without it the body
    waits for the client's delayed ACK (about 40 ms a request)."""
    port = _free_port()
    listener = _tcp_socket(f"127.0.0.1:{port}")
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listener)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(nodelay, BOUND) != 0
        finally:
            writer.close()
            await writer.wait_closed()
