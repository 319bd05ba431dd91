"""``hearth serve`` against what issue 20 found: slow TCP round trips (no ``TCP_NODELAY`` on
accepted connections), numbers out of range, bodies that are not UTF-8 or nest too deep, and
unexpected exceptions: each answers the JSON error body of a documented kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hearth import Host, InvalidInput
from hearth._server._app import create_app
from hearth._server._daemon import _tcp_socket
from hearth._server._limits import QuietAccept, bounded_protocol, connection_caps
from hearth._settings import load_settings
from tests.helpers import make_host
from tests.test_serve import DAEMON_SETTINGS, Daemon, over, short_dir, socket_port
from tests.test_serve import _Server as ServerForTests

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


# --- numbers out of range, and what nobody expected ----------------------------------------------
@contextlib.asynccontextmanager
async def api(tmp_path: Path) -> AsyncIterator[tuple[Host, httpx.AsyncClient]]:
    async with make_host(tmp_path, idle_timeout=None) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            yield host, client


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json", response.text[:300]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return dict(body["error"])


HUGE = (2**63, 2**64, 10**30)


async def test_numbers_beyond_the_store_s_range_are_invalid_input(tmp_path: Path) -> None:
    """``limit``, ``after`` and ``Last-Event-ID`` of 2^63 and beyond answer 400 ``invalid_input``
    naming the parameter: never a 500 blaming the store, nor a stream cut mid-way."""
    async with api(tmp_path) as (_, client):
        for number in HUGE:
            for path, params, headers, name in (
                ("/v1/workspaces", {"limit": number}, {}, "limit"),
                ("/v1/workspaces/alpha/logs", {"limit": number}, {}, "limit"),
                ("/v1/operations", {"limit": number}, {}, "limit"),
                ("/v1/operations", {"after": number}, {}, "after"),
                ("/v1/events", {"after": number}, {}, "after"),
                ("/v1/events", {}, {"Last-Event-ID": str(number)}, "Last-Event-ID"),
            ):
                answer = await client.get(path, params=params, headers=headers)
                assert answer.status_code == 400, (path, params, headers, answer.text[:300])
                error = error_of(answer)
                assert error["kind"] == "invalid_input" and name in error["message"], (path, error)
        largest = 2**63 - 1  # the largest the store holds is still a number to page by
        assert (await client.get("/v1/workspaces", params={"limit": largest})).json() == []
        assert (await client.get("/v1/operations", params={"after": largest, "limit": largest})).json() == []


async def test_an_unexpected_exception_answers_the_json_error_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug anywhere answers 500 ``{"error": {"kind": "error", "message": one line}}`` and is
    logged with its traceback; never a plain-text 500."""
    async with api(tmp_path) as (host, client):

        async def broken() -> None:
            raise RuntimeError("something nobody expected\nwith a second line")

        monkeypatch.setattr(host, "tiers", broken)
        with caplog.at_level(logging.ERROR):
            answer = await client.get("/v1/tiers")
        assert answer.status_code == 500, answer.text[:300]
        error = error_of(answer)
        assert error["kind"] == "error" and "\n" not in error["message"]
        assert "RuntimeError: something nobody expected" in error["message"]
        logged = [r for r in caplog.records if r.exc_info and "/v1/tiers" in r.getMessage()]
        assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError
        assert (await client.get("/v1/health")).status_code == 200  # and the app goes on


# --- bodies the framework refuses ------------------------------------------------------------------
async def test_a_body_not_utf8_or_nested_too_deep_is_invalid_input(tmp_path: Path) -> None:
    """A JSON body that is not UTF-8, or nests 100,000 deep, answers 400 ``invalid_input``:
    every 4xx the framework raises has a documented kind, never ``error``."""
    json_type = {"content-type": "application/json"}
    async with api(tmp_path) as (_, client):
        for body in (
            b'{"slug": "\xff\xfe", "tier": "solo", "driver": "fake"}',
            b"\xff\xfe\xfd",
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        ):
            for path in ("/v1/workspaces", "/v1/check", "/v1/reconcile"):
                answer = await client.post(path, content=body, headers=json_type)
                assert answer.status_code == 400, (path, body[:20], answer.text[:300])
                error = error_of(answer)
                assert error["kind"] == "invalid_input", (path, body[:20], error)
                assert "body" in error["message"], error


# --- bodies too large ------------------------------------------------------------------------------
def _too_large(answer: httpx.Response, limit: int) -> None:
    assert answer.status_code == 413, answer.text[:300]
    error = error_of(answer)
    assert error["kind"] == "invalid_input" and f"{limit} bytes" in error["message"], error


async def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A body larger than ``[serve] max_body`` (1 MiB unless set) answers 413 ``invalid_input``
    naming the limit: a ``Content-Length`` beyond it at once, without a byte of the body read;
    a chunked body as soon as what arrived passes it (the rest is never pulled)."""
    json_type = {"content-type": "application/json"}
    limit = 1024 * 1024
    async with api(tmp_path) as (host, client):
        assert host.settings.serve.max_body == limit
        pulled = 0

        async def declared() -> AsyncIterator[bytes]:  # a Content-Length stream: counts its reads
            nonlocal pulled
            for _ in range(4):
                pulled += 1
                yield b" " * (limit // 2)

        class Sized(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in declared():
                    yield chunk

        for path in ("/v1/workspaces", "/v1/check", "/v1/reconcile", "/v1/tiers"):
            pulled = 0
            headers = {**json_type, "content-length": str(2 * limit)}
            request = client.build_request("POST", path, headers=headers, content=Sized())
            answer = await client.send(request)
            _too_large(answer, limit)
            assert pulled <= 1, pulled  # httpx's transport may read one chunk ahead; never all

        async def chunked() -> AsyncIterator[bytes]:  # 200 MB, 64 KiB at a time
            nonlocal pulled
            for _ in range(200 * 1024 * 1024 // 65536):
                pulled += 1
                yield b" " * 65536

        for path in ("/v1/workspaces", "/v1/check", "/v1/reconcile"):
            pulled = 0
            answer = await client.post(path, content=chunked(), headers=json_type)
            assert "content-length" not in answer.request.headers
            _too_large(answer, limit)
            assert pulled <= limit // 65536 + 2, pulled
        # a body at the limit is read as ever (and judged: spaces are not JSON)
        answer = await client.post("/v1/check", content=b" " * limit, headers=json_type)
        assert answer.status_code == 400 and error_of(answer)["kind"] == "invalid_input"
        assert (await client.get("/v1/health")).status_code == 200


async def test_the_body_limit_is_set_in_hearth_toml(tmp_path: Path) -> None:
    """``[serve] max_body`` sets the limit (bytes, a JSON integer of at least 1)."""
    settings = tmp_path / "project" / ".hearth" / "hearth.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text("[serve]\nmax_body = 100\n")
    json_type = {"content-type": "application/json"}
    async with api(tmp_path) as (host, client):
        assert host.settings.serve.max_body == 100
        body = b'{"slug": "alpha", "verb": "provision", "tier": "solo", "driver": "fake"}'
        assert len(body) <= 100
        assert (await client.post("/v1/check", content=body, headers=json_type)).status_code == 200
        _too_large(await client.post("/v1/check", content=body + b" " * 40, headers=json_type), 100)

        async def chunked() -> AsyncIterator[bytes]:
            yield body
            yield b" " * 40

        _too_large(await client.post("/v1/check", content=chunked(), headers=json_type), 100)
    for wrong in ("0", '"1"', "1.5", "true"):
        settings.write_text(f"[serve]\nmax_body = {wrong}\n")
        with pytest.raises(InvalidInput, match=r"serve\.max_body"):
            load_settings(tmp_path / "project")


# --- strict types ----------------------------------------------------------------------------------
async def test_request_bodies_take_json_types_strictly(tmp_path: Path) -> None:
    """A body's booleans must be JSON booleans, its numbers JSON numbers, its strings strings:
    ``"reuse": "yes"`` or ``"timeout": true`` answer 400 ``invalid_input`` naming the field (no
    lax coercion); an integer is still a number of seconds."""
    good = {"slug": "alpha", "tier": "solo", "driver": "fake"}
    wrong: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/workspaces", {**good, "reuse": "yes"}, "reuse"),
        ("/v1/workspaces", {**good, "reuse": 1}, "reuse"),
        ("/v1/workspaces", {**good, "timeout": True}, "timeout"),
        ("/v1/workspaces", {**good, "timeout": "5"}, "timeout"),
        ("/v1/workspaces", {**good, "slug": 5}, "slug"),
        ("/v1/workspaces/alpha/upgrade", {"tier": "solo", "timeout": False}, "timeout"),
        ("/v1/workspaces/alpha/upgrade", {"tier": 1}, "tier"),
        ("/v1/plan", {"slug": "alpha", "tier": "solo", "timeout": "1"}, "timeout"),
        ("/v1/workspaces/alpha/adopt", {"driver": "fake", "tier": True}, "tier"),
        ("/v1/check", {"slug": "alpha", "verb": "provision", "driver": 1}, "driver"),
        ("/v1/reconcile", {"dry_run": "true"}, "dry_run"),
        ("/v1/reconcile", {"dry_run": 0}, "dry_run"),
        ("/v1/reconcile", {"timeout": True}, "timeout"),
    ]
    async with api(tmp_path) as (host, client):
        for path, body, field in wrong:
            answer = await client.post(path, json=body)
            assert answer.status_code == 400, (path, body, answer.text[:300])
            error = error_of(answer)
            assert error["kind"] == "invalid_input" and field in error["message"], (path, body, error)
        assert await host.operations() == []
        answer = await client.post("/v1/reconcile", json={"dry_run": True, "timeout": 5})
        assert answer.status_code == 200, answer.text[:300]
        answer = await client.post(
            "/v1/workspaces", json={**good, "reuse": False, "timeout": 30}, params={"wait": 30}
        )
        assert answer.status_code == 200 and answer.json()["state"] == "succeeded", answer.text[:300]


# --- slow clients and floods ---------------------------------------------------------------------
@contextlib.asynccontextmanager
async def bounded_server(tmp_path: Path, request_timeout: float, max_connections: int) -> AsyncIterator[int]:
    """The API on a TCP port of this loop, with the daemon's bounded protocol; yields the port."""
    port = _free_port()
    listener = _tcp_socket(f"127.0.0.1:{port}")
    try:
        async with make_host(tmp_path, idle_timeout=None) as host:
            protocol = bounded_protocol("TCP port", request_timeout, max_connections)
            config = uvicorn.Config(create_app(host), http=protocol, log_config=None, lifespan="off")
            server = ServerForTests(config)
            task = asyncio.ensure_future(server.serve(sockets=[listener]))
            try:
                await asyncio.wait_for(server.ready.wait(), BOUND)
                yield port
            finally:
                server.should_exit = True
                server.force_exit = True
                await asyncio.wait_for(task, BOUND)
    finally:
        listener.close()


async def _raw(port: int, *parts: bytes, pause: float = 0.0) -> tuple[bytes, bool]:
    """Send ``parts`` (``pause`` s apart) on a new connection and read until the daemon closes
    it (bounded); what it answered, and whether it closed while parts were still to be sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    cut_short = False
    try:
        async with asyncio.timeout(BOUND):
            for index, part in enumerate(parts):
                writer.write(part)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                if pause:
                    try:
                        received += await asyncio.wait_for(reader.read(65536), pause)
                    except TimeoutError:
                        continue
                    if reader.at_eof() or received:
                        cut_short = index < len(parts) - 1
                        break
            while chunk := await reader.read(65536):
                received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received, cut_short


def _error_answer(raw: bytes, status: int) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert isinstance(error, dict) and error["message"], error
    return error


async def test_a_request_not_whole_within_the_deadline_gets_408_and_is_closed(tmp_path: Path) -> None:
    """``[serve] request_timeout`` bounds the time from connecting (or from the next request's
    first byte) to a whole request: a head never finished, a body that stops short and a client
    dribbling a byte at a time are each answered 408 ``invalid_input`` and closed; once the
    request is whole the deadline is off (a stream outlives it)."""
    async with bounded_server(tmp_path, 0.3, 100) as port:
        head = b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\n"
        error = _error_answer((await _raw(port, head))[0], 408)
        assert error["kind"] == "invalid_input" and "request_timeout" in error["message"], error
        short_body = b"POST /v1/check HTTP/1.1\r\nHost: hearth\r\nContent-Length: 100\r\n\r\n{"
        assert _error_answer((await _raw(port, short_body))[0], 408)["kind"] == "invalid_input"
        dribbled = [
            bytes([byte]) for byte in b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\nX-Slow: " + b"a" * 200
        ]
        answer, cut_short = await _raw(port, *dribbled, pause=0.05)  # 200 bytes over 10 s, unbounded
        assert cut_short and _error_answer(answer, 408)["kind"] == "invalid_input"
        # kept alive: the first request is answered, the next one, never finished, is not
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\n\r\n")
            async with asyncio.timeout(BOUND):
                first = await reader.readuntil(b"\r\n\r\n")
                assert first.startswith(b"HTTP/1.1 200 "), first
                length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.write(head)
            _error_answer(await _read_to_end(reader), 408)
        finally:
            writer.close()
        # a stream opened before the deadline still delivers what comes well after it
        base = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=base, timeout=BOUND) as client,
            client.stream("GET", "/v1/events", params={"slug": "late"}) as stream,
        ):
            assert stream.status_code == 200
            await asyncio.sleep(1.0)  # three deadlines pass while the stream waits
            made = await client.post(
                "/v1/workspaces", json={"slug": "late", "tier": "solo", "driver": "fake"}
            )
            assert made.status_code == 202, made.text
            async with asyncio.timeout(BOUND):
                async for line in stream.aiter_lines():
                    if line and json.loads(line)["slug"] == "late":
                        break


async def test_connections_past_the_cap_are_answered_503_at_once(tmp_path: Path) -> None:
    """``[serve] max_connections`` caps a listener's open connections: one past it is answered
    503 ``daemon_unavailable`` (retryable, ``Retry-After: 1``) and closed at once (it never
    holds a file), and once one of the others closes a new client is served."""
    async with bounded_server(tmp_path, 30.0, 5) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        try:
            for reader, writer in held:  # each of them answered: all five are connected
                writer.write(b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\n\r\n")
                async with asyncio.timeout(BOUND):
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            answer, _ = await _raw(port, b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\n\r\n")
            error = _error_answer(answer, 503)
            assert error["kind"] == "daemon_unavailable" and "max_connections" in error["message"], error
            assert error["retryable"] is True and b"\r\nretry-after: 1\r\n" in answer.lower(), answer[:300]
        finally:
            _, first = held.pop()
            first.close()
            await first.wait_closed()
        try:
            async with asyncio.timeout(BOUND):  # the daemon sees the close soon; then one is let in
                while True:
                    answer, _ = await _raw(
                        port, b"GET /v1/health HTTP/1.1\r\nHost: hearth\r\nConnection: close\r\n\r\n"
                    )
                    if answer.startswith(b"HTTP/1.1 200 "):
                        break
                    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
                    await asyncio.sleep(0.05)
        finally:
            for _, writer in held:
                writer.close()


def test_repeated_accept_errors_are_logged_once_a_while(caplog: pytest.LogCaptureFixture) -> None:
    """A flood that exhausts the open files makes asyncio report each failed ``accept``; the
    daemon's loop handler logs the first and then one line per ``LOG_EVERY`` with the count,
    and passes every other loop error on as before."""
    loop = asyncio.new_event_loop()
    try:
        handler = QuietAccept()
        accept = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        with caplog.at_level(logging.ERROR):
            for _ in range(1000):
                handler(loop, dict(accept))
        lines = [r for r in caplog.records if "accept" in r.getMessage()]
        assert len(lines) == 1 and "Too many open files" in lines[0].getMessage(), lines
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            handler(loop, {"message": "something else went wrong"})
        assert any("something else went wrong" in r.getMessage() for r in caplog.records)
    finally:
        loop.close()


def test_each_listener_s_cap_leaves_room_in_the_open_file_limit() -> None:
    assert connection_caps(4096, 2, 1_048_576) == 4096
    assert connection_caps(4096, 2, 1024) == (1024 - 128) // 2
    assert connection_caps(4096, 1, 256) == 256 - 64
    assert connection_caps(10, 2, 1024) == 10


@pytest.mark.subprocess
async def test_a_flood_of_idle_tcp_connections_locks_no_one_out(tmp_path: Path, venv_bin: Path) -> None:
    """300 TCP connections that never finish a request, against a daemon whose open-file limit
    is 256 (soft 128, which it raises to the hard 256): the Unix socket keeps answering, the TCP
    connections past its cap are answered 503 at once, the others 408 once ``request_timeout``
    passes, a client with the token is then served, and the log stays short."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(DAEMON_SETTINGS + "[serve]\nrequest_timeout = 3\n")
    token = tmp_path / "token"
    token.write_text("a-token-that-is-long-enough\n")
    token.chmod(0o600)
    with short_dir() as home, socket_port() as port:
        listen = ["--listen", f"127.0.0.1:{port}", "--token-file", str(token)]
        served = Daemon(home, project, venv_bin, *listen, open_files=(128, 256))
        try:
            served.wait_for("serving")
            served.wait_for("open-file limit raised from 128 to 256")
            served.wait_for("lowered to 96 per listener")
            loop = asyncio.get_running_loop()
            flood = [(await loop.create_connection(_Answer, "127.0.0.1", port))[1] for _ in range(300)]
            for connection in flood:
                connection.transport.write(b"GET /v1/workspaces HTTP/1.1\r\nHost: hearth\r\n")
            try:
                async with over(home / "hearth.sock") as trusted:
                    for _ in range(5):
                        assert (await trusted.get("/v1/health")).status_code == 200
                async with asyncio.timeout(BOUND):
                    answers = [await connection.ended for connection in flood]
            finally:
                for connection in flood:
                    connection.transport.close()
            statuses = [answer[:12] for answer in answers]
            assert statuses.count(b"HTTP/1.1 503") >= 300 - 96, statuses
            assert statuses.count(b"HTTP/1.1 408") >= 1, statuses
            assert set(statuses) <= {b"HTTP/1.1 503", b"HTTP/1.1 408"}, set(statuses)
            headers = {"Authorization": "Bearer a-token-that-is-long-enough"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=BOUND) as client:
                assert (await client.get("/v1/workspaces", headers=headers)).status_code == 200
            assert served.stop() == 0
        finally:
            if served.process.poll() is None:
                served.stop()
            served.close()
        assert len(served.lines) < 40, served.lines[-40:]
        assert sum("refusing new ones" in line for line in served.lines) <= 2, served.lines


class _Answer(asyncio.Protocol):
    """What the daemon sent on a connection until it closed it. A connection refused at once
    may end in a reset rather than an end of stream (the client's request reached a socket the
    daemon had closed, which the kernel answers with RST); what arrived before it is kept, where
    a ``StreamReader`` would raise the reset and lose it."""

    def __init__(self) -> None:
        self.received = b""
        self.ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(self.received)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    received = b""
    async with asyncio.timeout(BOUND):
        while chunk := await reader.read(65536):
            received += chunk
    return received
