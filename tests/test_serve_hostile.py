"""``hearth serve`` against what issue 20 found: slow TCP round trips (no ``TCP_NODELAY`` on
accepted connections), numbers out of range, bodies that are not UTF-8 or nest too deep, and
unexpected exceptions: each answers the JSON error body of a documented kind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import Host, InvalidInput
from hearth._server._app import create_app
from hearth._server._daemon import _tcp_socket
from hearth._settings import load_settings
from tests.helpers import make_host

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
