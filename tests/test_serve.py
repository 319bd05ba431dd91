"""``hearth serve`` (issue 12): the API v1 of ``hearth._serve.create_app`` and the daemon.

Most tests drive the app in memory through httpx's ASGI transport, on a host whose ``fake``
driver runs in process. httpx's ASGI transport buffers a whole response, so the event streams are
read from the same app served by an in-process uvicorn on a Unix socket. A thin layer runs the
real ``hearth serve`` in its own process group, with the real ``hearth-adapter-fake``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hearth import Operation, SQLiteStore
from hearth._server import _app as app_module
from hearth._server._app import create_app, openapi_document
from hearth._store._base import NewEvent
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "openapi.json"
BOUND = 30.0
Json = dict[str, Any]


# --- in memory ----------------------------------------------------------------------------------
#: Adapters stay up until the host closes.
make_host = functools.partial(helpers.make_host, idle_timeout=None)


@contextlib.asynccontextmanager
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_host(tmp_path) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            yield client


def error_kind(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["kind"])


@pytest.mark.subprocess  # /v1/drivers probes the --version of every adapter on PATH
async def test_the_lifecycle_through_the_api(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        body = {"slug": "alpha", "tier": "solo", "driver": "fake"}
        made = await client.post("/v1/workspaces", json=body, params={"wait": 20})
        assert made.status_code == 200, made.text
        assert made.json()["state"] == "succeeded" and made.json()["result"]["workspace_slug"] == "alpha"
        assert made.headers["location"] == f"/v1/operations/{made.json()['id']}"
        record = (await client.get("/v1/workspaces/alpha")).json()
        assert record["state"] == "ready" and record["tier"] == "solo"
        assert (await client.get("/v1/workspaces/alpha/status")).json()["state"] == "ready"
        upgraded = await client.post(
            "/v1/workspaces/alpha/upgrade", json={"tier": "team"}, params={"wait": 20}
        )
        assert upgraded.status_code == 200 and upgraded.json()["state"] == "succeeded"
        assert (await client.get("/v1/workspaces/alpha")).json()["tier"] == "team"
        gone = await client.delete("/v1/workspaces/alpha", params={"wait": 20})
        assert gone.status_code == 200 and gone.json()["state"] == "succeeded", gone.text
        listed = (await client.get("/v1/workspaces")).json()
        assert [(w["slug"], w["state"]) for w in listed] == [("alpha", "tier_torn_down")]
        assert (await client.get("/v1/workspaces", params={"include_torn_down": False})).json() == []
        logs = (await client.get("/v1/workspaces/alpha/logs")).json()
        assert [op["verb"] for op in logs] == ["provision", "upgrade", "teardown"]
        ops = (await client.get("/v1/operations", params={"slug": "alpha", "limit": 2})).json()
        assert [op["verb"] for op in ops] == ["provision", "upgrade"]
        page = await client.get("/v1/operations", params={"after": ops[-1]["id"]})
        assert [op["verb"] for op in page.json()] == ["teardown"]
        health = (await client.get("/v1/health")).json()
        assert health["status"] == "ok" and health["running"] == 0
        tiers = {t["name"] for t in (await client.get("/v1/tiers")).json()}
        assert {"solo", "team", "slow", "brisk"} <= tiers
        drivers = (await client.get("/v1/drivers")).json()
        assert any(d["driver"] == "fake" and d["in_process"] for d in drivers)


async def test_a_start_answers_202_with_its_location_and_a_cancel_rolls_back(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        started = await client.post("/v1/workspaces", json={"slug": "beta", "tier": "slow", "driver": "fake"})
        assert started.status_code == 202, started.text
        op = started.json()
        assert op["state"] in ("queued", "running") and op["verb"] == "provision"
        location = started.headers["location"]
        assert location == f"/v1/operations/{op['id']}"
        assert (await client.get(location)).json()["id"] == op["id"]
        short = await client.get(f"{location}/wait", params={"timeout": 0.2})
        assert short.status_code == 202 and short.json()["state"] in ("queued", "running")
        cancel = await client.delete(location, params={"reason": "changed my mind"})
        assert cancel.status_code == 202 and cancel.json()["cancel_requested"] == "changed my mind"
        done = await client.get(f"{location}/wait", params={"timeout": 20})
        assert done.status_code == 200 and done.json()["state"] == "cancelled", done.text
        gone = await client.get("/v1/workspaces/beta")  # rolled back: no workspace is left
        assert (
            gone.status_code == 404
            and "ended cancelled and left no workspace" in gone.json()["error"]["message"]
        )


async def test_an_idempotency_key_names_one_operation(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        body = {"slug": "gamma", "tier": "brisk", "driver": "fake"}
        headers = {"Idempotency-Key": "req-42"}
        first, second = await asyncio.gather(
            client.post("/v1/workspaces", json=body, headers=headers),
            client.post("/v1/workspaces", json=body, headers=headers),
        )
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"] and first.json()["key"] == "req-42"
        other = await client.post("/v1/workspaces", json={**body, "tier": "solo"}, headers=headers)
        assert other.status_code == 409 and error_kind(other) == "conflict"
        done = await client.get(f"/v1/operations/{first.json()['id']}/wait", params={"timeout": 20})
        assert done.json()["state"] == "succeeded"
        again = await client.post("/v1/workspaces", json=body, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]  # finished already


async def test_a_key_that_joined_answers_its_operation_for_good(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        body = {"slug": "gamma", "tier": "slow", "driver": "fake"}
        first = await client.post("/v1/workspaces", json=body, headers={"Idempotency-Key": "idemA"})
        joined = await client.post("/v1/workspaces", json=body, headers={"Idempotency-Key": "idemB"})
        assert first.status_code == joined.status_code == 202
        ident = first.json()["id"]
        assert joined.json()["id"] == ident
        cancel = await client.delete(f"/v1/operations/{ident}", params={"reason": "changed my mind"})
        assert cancel.status_code == 202, cancel.text
        done = await client.get(f"/v1/operations/{ident}/wait", params={"timeout": 20})
        assert done.json()["state"] == "cancelled"
        again = await client.post("/v1/workspaces", json=body, headers={"Idempotency-Key": "idemB"})
        assert again.status_code == 200, again.text  # finished: answered, nothing started
        assert (again.json()["id"], again.json()["state"]) == (ident, "cancelled")
        assert again.headers["location"] == f"/v1/operations/{ident}"
        ops = (await client.get("/v1/operations", params={"slug": "gamma"})).json()
        assert [op["id"] for op in ops] == [ident]
        assert (await client.get("/v1/workspaces/gamma")).status_code == 404  # it did not come back


async def test_a_finished_operation_is_not_cancelled_and_one_read_by_id_has_its_log(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        body = {"slug": "delta", "tier": "solo", "driver": "fake"}
        made = await client.post("/v1/workspaces", json=body, params={"wait": 20})
        assert made.status_code == 200 and made.json()["state"] == "succeeded", made.text
        ident = made.json()["id"]
        refused = await client.delete(f"/v1/operations/{ident}", params={"reason": "too late"})
        assert refused.status_code == 409 and error_kind(refused) == "invalid_transition", refused.text
        assert refused.json()["error"]["state"] == "succeeded"
        read = (await client.get(f"/v1/operations/{ident}")).json()
        assert read["cancel_requested"] is None and read["log"], read
        waited = (await client.get(f"/v1/operations/{ident}/wait", params={"timeout": 1})).json()
        assert waited["log"] == read["log"]
        [logged] = (await client.get("/v1/workspaces/delta/logs")).json()
        assert logged["log"] == read["log"]
        [listed] = (await client.get("/v1/operations", params={"slug": "delta"})).json()
        assert listed["log"] == []  # a list leaves the logs out

        # a provision with nothing to do: 200 with the operation that made the workspace, at
        # once (no ?wait), and nothing recorded; a start that runs answers 202
        for key in ({}, {"Idempotency-Key": "noop-1"}):
            again = await client.post("/v1/workspaces", json=body, headers=key)
            assert again.status_code == 200, again.text
            assert (again.json()["id"], again.json()["state"]) == (ident, "succeeded")
            assert again.headers["location"] == f"/v1/operations/{ident}"
        assert len((await client.get("/v1/operations")).json()) == 1
        upgrade = await client.post("/v1/workspaces/delta/upgrade", json={"tier": "brisk"})
        assert upgrade.status_code == 202 and not upgrade.json()["finished_at"], upgrade.text


async def test_errors_carry_their_kind_and_status(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        made = await client.post(
            "/v1/workspaces", json={"slug": "delta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        assert made.json()["state"] == "succeeded"
        slow = await client.post("/v1/workspaces/delta/upgrade", json={"tier": "slow"})
        assert slow.status_code == 202
        busy = await client.delete("/v1/workspaces/delta")
        assert busy.status_code == 409 and error_kind(busy) == "busy"
        assert busy.json()["error"]["operation"] == slow.json()["id"]
        for path in (
            "/v1/workspaces/nobody",
            "/v1/workspaces/nobody/logs",
            "/v1/operations/9999",
            "/v1/nothing-here",
        ):
            missing = await client.get(path)
            assert missing.status_code == 404 and error_kind(missing) == "not_found", path
        wrong = await client.put("/v1/workspaces/delta")
        assert wrong.status_code == 405 and error_kind(wrong) == "invalid_input"
        assert "GET" in wrong.headers["allow"]  # what Starlette names: the first route on the path
        for body in (
            {"slug": "Not_A_Label", "tier": "solo", "driver": "fake"},
            {"slug": "eps", "tier": "no-such-tier", "driver": "fake"},
            {"slug": "eps", "tier": "solo"},
            {"slug": "eps", "tier": "solo", "driver": "fake", "surprise": 1},
        ):
            bad = await client.post("/v1/workspaces", json=body)
            assert bad.status_code == 400 and error_kind(bad) == "invalid_input", (body, bad.text)
        bad_key = await client.post(
            "/v1/workspaces",
            json={"slug": "eps", "tier": "solo", "driver": "fake"},
            headers={"Idempotency-Key": ""},
        )
        assert bad_key.status_code == 400
        assert (await client.get("/v1/operations", params={"state": "sleeping"})).status_code == 400
        assert (await client.get("/v1/events", params={"slug": "Bad Slug"})).status_code == 400
        await client.delete(f"/v1/operations/{slow.json()['id']}")
        assert (await client.get(f"/v1/operations/{slow.json()['id']}/wait")).json()["state"] == "cancelled"


async def test_check_and_a_dry_reconcile_change_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        fine = await client.post(
            "/v1/check", json={"slug": "zeta", "verb": "provision", "tier": "solo", "driver": "fake"}
        )
        assert fine.status_code == 200 and fine.json()["accepted"] is True
        refused = await client.post("/v1/check", json={"slug": "zeta", "verb": "teardown"})
        assert refused.json()["accepted"] is False and refused.json()["error"]["kind"] == "not_found"
        assert (await client.get("/v1/operations")).json() == []
        made = await client.post(
            "/v1/workspaces", json={"slug": "zeta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        assert made.json()["state"] == "succeeded"
        report = await client.post("/v1/reconcile", json={"dry_run": True})
        assert report.status_code == 200, report.text
        assert report.json()["dry_run"] is True and report.json()["resolved"] == []
        one = await client.post("/v1/reconcile", json={"slug": "zeta"})
        assert one.status_code == 200 and one.json()["dry_run"] is False
        missing = await client.post("/v1/reconcile", json={"slug": "nobody", "dry_run": True})
        assert missing.status_code == 404


async def test_while_draining_every_start_is_503_unavailable_and_the_rest_answers(tmp_path: Path) -> None:
    """Issue 21 (4): what a draining daemon refuses: the starts (provision, upgrade, teardown,
    adopt, forget, a reconcile that may change records), 503 ``unavailable`` with
    ``Retry-After`` (the drain grace left, at least 1 s); reads, a dry reconcile, check, waits
    and a cancel answer as ever; health says ``stopping`` and ready ``closed``."""
    async with make_host(tmp_path) as host:
        app = create_app(host)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            made = await client.post(
                "/v1/workspaces", json={"slug": "eta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
            )
            assert made.json()["state"] == "succeeded", made.text
            slow = await client.post("/v1/workspaces/eta/upgrade", json={"tier": "slow"})
            assert slow.status_code == 202, slow.text
            app.state.hearth.drain(30.0)  # as the daemon does on its first SIGTERM
            starts = [
                ("POST", "/v1/workspaces", {"slug": "theta", "tier": "solo", "driver": "fake"}),
                ("POST", "/v1/workspaces/eta/upgrade", {"tier": "team"}),
                ("DELETE", "/v1/workspaces/eta", None),
                ("POST", "/v1/workspaces/iota/adopt", {"driver": "fake", "tier": "solo"}),
                ("POST", "/v1/workspaces/eta/forget", None),
                ("POST", "/v1/reconcile", {}),
            ]
            for method, path, body in starts:
                refused = await client.request(method, path, json=body, headers={"Idempotency-Key": "k"})
                assert refused.status_code == 503 and error_kind(refused) == "unavailable", (
                    path,
                    refused.text,
                )
                assert 1 <= int(refused.headers["Retry-After"]) <= 30, refused.headers
            assert (await client.get("/v1/health")).json()["status"] == "stopping"
            assert error_kind(await client.get("/v1/ready")) == "closed"
            assert (await client.get("/v1/workspaces/eta")).json()["slug"] == "eta"
            assert (await client.get("/v1/workspaces")).status_code == 200
            assert (await client.post("/v1/reconcile", json={"dry_run": True})).status_code == 200
            check = await client.post("/v1/check", json={"slug": "eta", "verb": "teardown"})
            assert check.status_code == 200, check.text
            ident = slow.json()["id"]
            assert (await client.delete(f"/v1/operations/{ident}")).status_code == 202
            ended = await client.get(f"/v1/operations/{ident}/wait", params={"timeout": 20})
            assert ended.json()["state"] == "cancelled", ended.text
            assert [op["id"] for op in (await client.get("/v1/operations")).json()] == [1, ident]


def test_the_committed_openapi_document_matches_the_app(tmp_path: Path) -> None:
    """docs/openapi.json is what create_app describes (regenerate: python -m tests.test_serve)."""
    document = openapi_document(create_app(make_host(tmp_path)))
    assert OPENAPI.read_text() == document, "docs/openapi.json drifted: run 'python -m tests.test_serve'"
    paths = json.loads(document)["paths"]
    assert {"/v1/workspaces", "/v1/operations/{ident}/wait", "/v1/events", "/v1/health"} <= set(paths)
    assert "/v1/ready" in paths


# --- liveness and readiness -------------------------------------------------------------------------
def corrupt_a_table_page(store: Path) -> int:
    """Overwrite the rows of the ``deployments`` table's one (leaf) page with garbage, as a
    disk or a careless copy might: the file still opens, the table's page (its number is
    returned) is broken."""
    with contextlib.closing(sqlite3.connect(store)) as db:
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        root = int(db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'deployments'").fetchone()[0])
        assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    with store.open("r+b") as file:
        file.seek((root - 1) * page)
        header = file.read(8)
        assert header[0] == 13 and int.from_bytes(header[3:5]) == 3, "a leaf page holding the three rows"
        file.seek((root - 1) * page + int.from_bytes(header[5:7]))  # where its rows begin
        file.write(b"\xff" * 64)
    return root


async def test_ready_says_a_store_with_corrupt_pages_is_not_ready_and_health_still_answers(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        for slug in ("one", "two", "three"):
            await host.provision(slug, tier="solo", driver="fake")
        app = create_app(host)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hearth", timeout=BOUND
        ) as client:
            ready = await client.get("/v1/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
            app.state.hearth.stopping.set()  # as the daemon does on SIGTERM
            stopping = await client.get("/v1/ready")
            assert stopping.status_code == 503 and error_kind(stopping) == "closed", stopping.text
            assert (await client.get("/v1/health")).json()["status"] == "stopping"
    page = corrupt_a_table_page(tmp_path / "home" / "hearth.db")
    async with api(tmp_path) as client:
        ready = await client.get("/v1/ready")
        assert ready.status_code == 503 and error_kind(ready) == "store_error", ready.text
        message = ready.json()["error"]["message"]
        assert "hearth.db is damaged" in message and f"page {page}" in message, message
        assert (await client.get("/v1/health")).json()["status"] == "ok"


class StuckStore(SQLiteStore):
    """A SQLite store whose reads never answer once ``stuck`` is set (a store that hangs)."""

    stuck = False

    async def last_seq(self) -> int:
        if self.stuck:
            await asyncio.Event().wait()
        return await super().last_seq()

    async def operations(self, **options: Any) -> list[Operation]:
        if self.stuck:
            await asyncio.Event().wait()
        return await super().operations(**options)


@pytest.mark.timeout(20)
async def test_health_answers_at_once_while_the_store_hangs_and_ready_says_so_within_its_bound(
    tmp_path: Path,
) -> None:
    store = StuckStore(tmp_path / "stuck.db")
    async with (
        make_host(tmp_path, store=store) as host,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(host)), base_url="http://hearth", timeout=BOUND
        ) as client,
    ):
        store.stuck = True
        async with asyncio.timeout(5):  # the store never answers: health must not ask it
            health = await client.get("/v1/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        (tmp_path / "project" / ".hearth").mkdir(parents=True)
        (tmp_path / "project" / ".hearth" / "hearth.toml").write_text("[timeouts]\nstore = 0.5\n")
        async with asyncio.timeout(5):
            ready = await client.get("/v1/ready")
        assert ready.status_code == 503 and error_kind(ready) == "store_error", ready.text
        assert "did not answer within 0.5 s" in ready.json()["error"]["message"]
        store.stuck = False
        assert (await client.get("/v1/ready")).json() == {"status": "ready", "within": 0.5}
        (tmp_path / "project" / ".hearth" / "hearth.toml").write_text("[timeouts]\nstore = 'soon'\n")
        invalid = await client.get("/v1/ready")
        assert invalid.status_code == 503 and error_kind(invalid) == "invalid_input", invalid.text


# --- streams: the same app on an in-process uvicorn -----------------------------------------------
@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A short temporary folder: a Unix socket's path has at most 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="hs-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Server(uvicorn.Server):
    """uvicorn that says when it listens, and leaves the test's signal handlers alone."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    with short_dir() as folder:
        sock = folder / "api.sock"
        async with make_host(tmp_path) as host:
            config = uvicorn.Config(create_app(host), uds=str(sock), log_config=None, lifespan="off")
            server = _Server(config)
            task = asyncio.ensure_future(server.serve())
            try:
                await asyncio.wait_for(server.ready.wait(), BOUND)
                transport = httpx.AsyncHTTPTransport(uds=str(sock))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://hearth", timeout=BOUND
                ) as client:
                    yield client
            finally:
                server.should_exit = True
                server.force_exit = True
                await asyncio.wait_for(task, BOUND)


async def test_a_stream_still_sends_what_was_written_just_before_the_daemon_stopped(tmp_path: Path) -> None:
    """Issue 21 (4): the daemon ends its streams (``stopping``) the moment its drain ended,
    maybe before the host's reader handed out the last events that work wrote (its final
    ones); a stream still sends what comes within a short quiet time, then ends."""
    with short_dir() as folder:
        sock = folder / "api.sock"
        async with make_host(tmp_path) as host:
            app = create_app(host)
            server = _Server(uvicorn.Config(app, uds=str(sock), log_config=None, lifespan="off"))
            task = asyncio.ensure_future(server.serve())
            try:
                await asyncio.wait_for(server.ready.wait(), BOUND)
                async with over(sock) as client, asyncio.timeout(BOUND):
                    op = await host.start_provision("omicron", tier="slow", driver="fake")
                    async with client.stream("GET", "/v1/events", params={"slug": "omicron"}) as stream:
                        lines = stream.aiter_lines()
                        async for line in lines:
                            if line and json.loads(line)["kind"] == "progress":
                                break  # the stream is live
                        last = NewEvent(op.id, "omicron", "provision", "progress", message="the last word")
                        await host.store.add_events([last])  # the raw store: no reader is woken
                        app.state.hearth.stopping.set()  # at once, as the daemon does once drained
                        rest = [json.loads(line) for line in [line async for line in lines] if line]
                assert "the last word" in [e.get("message") for e in rest], rest
            finally:
                host.cancel_running("the test ended")  # no drain grace to wait out
                server.should_exit = True
                server.force_exit = True
                await asyncio.wait_for(task, BOUND)


async def ndjson(
    client: httpx.AsyncClient, until_final: bool, count: int | None = None, **params: Any
) -> list[Json]:
    """Events from ``/v1/events`` until the operation's final one (or ``count`` of them); the
    connection is closed then (a client that leaves)."""
    seen: list[Json] = []
    async with asyncio.timeout(BOUND), client.stream("GET", "/v1/events", params=params) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "application/x-ndjson"
        )
        async for line in response.aiter_lines():
            if not line:
                continue
            seen.append(json.loads(line))
            if count is not None and len(seen) >= count:
                break
            if (
                until_final
                and seen[-1]["kind"] == "state"
                and seen[-1]["state"] in ("succeeded", "failed", "cancelled")
            ):
                break
    return seen


async def test_events_resume_after_a_disconnect_with_nothing_lost_or_repeated(tmp_path: Path) -> None:
    async with served(tmp_path) as client:
        started = await client.post("/v1/workspaces", json={"slug": "eta", "tier": "brisk", "driver": "fake"})
        assert started.status_code == 202
        first = await ndjson(client, False, count=3)  # then the client leaves mid-operation
        rest = await ndjson(client, True, after=first[-1]["seq"])
        whole = await ndjson(client, True, after=0)
        seqs = [e["seq"] for e in first + rest]
        assert seqs == [e["seq"] for e in whole] and seqs == sorted(set(seqs))
        assert rest[-1]["state"] == "succeeded" and any(e["kind"] == "progress" for e in whole)
        narrowed = await ndjson(client, False, count=1, slug="eta")
        assert narrowed[0]["slug"] == "eta"
        assert (await client.get("/v1/workspaces/eta")).json()["state"] == "ready"  # the work went on


async def test_labels_on_provision_patch_and_the_label_filters(tmp_path: Path) -> None:
    """Issue 21: ``labels`` on a provision, ``PATCH /v1/workspaces/{slug}``, and ``?label=k=v``
    (repeatable, all must match) on the workspaces and the events."""
    async with served(tmp_path) as client:
        for slug, labels in (("alpha", {"team": "a", "env": "dev"}), ("beta", {"team": "b"})):
            body = {"slug": slug, "tier": "solo", "driver": "fake", "labels": labels}
            made = await client.post("/v1/workspaces", json=body, params={"wait": BOUND})
            assert made.status_code == 200 and made.json()["state"] == "succeeded", made.text
        listed = await client.get("/v1/workspaces", params={"label": "team=a"})
        assert [(d["slug"], d["labels"]) for d in listed.json()] == [("alpha", {"env": "dev", "team": "a"})]
        both = await client.get("/v1/workspaces", params=[("label", "team=a"), ("label", "env=prod")])
        assert both.status_code == 200 and both.json() == []
        patched = await client.patch("/v1/workspaces/alpha", json={"labels": {"env": "prod", "team": None}})
        assert patched.status_code == 200 and patched.json()["labels"] == {"env": "prod"}
        assert (await client.get("/v1/workspaces/alpha")).json()["labels"] == {"env": "prod"}
        refusals: list[tuple[str, Json, int, str]] = [
            ("/v1/workspaces/alpha", {"labels": {"Bad Key": "x"}}, 400, "invalid_input"),
            ("/v1/workspaces/alpha", {"labels": {"team": 5}}, 400, "invalid_input"),
            ("/v1/workspaces/alpha", {"labels": {"team": "x"}, "other": 1}, 400, "invalid_input"),
            ("/v1/workspaces/nobody", {"labels": {"team": "x"}}, 404, "not_found"),
        ]
        for path, change, status, kind in refusals:
            refused = await client.patch(path, json=change)
            assert (refused.status_code, error_kind(refused)) == (status, kind), refused.text
        bad = await client.get("/v1/workspaces", params={"label": "team"})
        assert (bad.status_code, error_kind(bad)) == (400, "invalid_input")
        named = await client.patch("/v1/workspaces/alpha", json={"labels": {"Bad Key": "x"}})
        assert "Bad Key" in named.json()["error"]["message"]

        # the events of the workspaces carrying the labels only
        events = await ndjson(client, True, label="team=b")
        assert events and {e["slug"] for e in events} == {"beta"}
        last = events[-1]["seq"]
        await client.patch("/v1/workspaces/beta", json={"labels": {"team": "c"}})  # leaves team=b
        await client.patch("/v1/workspaces/alpha", json={"labels": {"team": "b"}})  # joins it
        changes = await ndjson(client, False, count=2, after=last, label="team=b")
        assert [(e["kind"], e["slug"], e["record"]["labels"].get("team")) for e in changes] == [
            ("workspace", "beta", "c"),
            ("workspace", "alpha", "b"),
        ]
        assert changes[0]["operation"] is None
        bad = await client.get("/v1/events", params={"label": "=x"})
        assert (bad.status_code, error_kind(bad)) == (400, "invalid_input")


async def test_server_sent_events_resume_with_last_event_id(tmp_path: Path) -> None:
    async with served(tmp_path) as client:
        made = await client.post("/v1/workspaces", json={"slug": "theta", "tier": "brisk", "driver": "fake"})
        ident = made.json()["id"]

        async def read(headers: dict[str, str], stop: int | None) -> list[tuple[int, Json]]:
            seen: list[tuple[int, Json]] = []
            event_id: int | None = None
            async with (
                asyncio.timeout(BOUND),
                client.stream(
                    "GET", "/v1/events", headers={"Accept": "text/event-stream", **headers}
                ) as response,
            ):
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        event_id = int(line[4:])
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        assert data["seq"] == event_id
                        seen.append((data["seq"], data))
                        if (stop is not None and len(seen) >= stop) or data.get("state") == "succeeded":
                            break
            return seen

        first = await read({}, 2)
        rest = await read({"Last-Event-ID": str(first[-1][0])}, None)
        seqs = [seq for seq, _ in first + rest]
        assert seqs == sorted(set(seqs)) and rest[-1][1]["operation"] == ident


# --- the daemon: a real `hearth serve` ------------------------------------------------------------
DAEMON_SETTINGS = """
[tiers.glacial.driver_flags.fake]
delay = 60
[timeouts]
cancel_grace = 5
drain_grace = 1
"""


class Daemon:
    """``hearth serve`` in its own process group; its stderr is read on a thread."""

    def __init__(
        self,
        home: Path,
        project: Path,
        venv_bin: Path,
        *extra: str,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        """``open_files``: the daemon's open-file limits (soft, hard), set before it starts."""
        env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("HEARTH_HOME", None)
        argv = [str(venv_bin / "hearth"), "serve", "--home", str(home), "--project", str(project), *extra]
        if open_files is not None:
            limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, {open_files!r})"
            argv = [
                sys.executable,
                "-c",
                f"import os, resource, sys; {limit}; os.execv(sys.argv[1], sys.argv[1:])",
                *argv,
            ]
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def wait_for(self, text: str, bound: float = BOUND) -> str:
        deadline = time.monotonic() + bound
        with self.changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if "<eof>" in self.lines:
                    raise AssertionError(f"hearth serve ended without {text!r}: {self.lines}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} from hearth serve within {bound} s: {self.lines}")
                self.changed.wait(left)

    def send(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """The signal to the daemon's pid, then wait; SIGKILL to its group only past the bound."""
        self.send(signum)
        try:
            code = self.process.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=BOUND)
            raise AssertionError(f"hearth serve did not stop within {BOUND} s: {self.lines}") from None
        self.close()
        return code

    def close(self) -> None:
        self.reader.join(BOUND)
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def a_site(tmp_path: Path, settings: str = DAEMON_SETTINGS) -> Iterator[tuple[Path, Path]]:
    """A home (a short folder: a Unix socket's path is bounded) and a project with ``settings``."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(settings)
    with short_dir() as home:
        yield home, project


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with a_site(tmp_path) as found:
        yield found


@contextlib.asynccontextmanager
async def over(sock: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
        yield client


@contextlib.contextmanager
def daemon(site: tuple[Path, Path], venv_bin: Path, *extra: str) -> Iterator[Daemon]:
    running = Daemon(*site, venv_bin, *extra)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()
        running.close()


@pytest.mark.subprocess
async def test_the_daemon_serves_the_home_socket_alone(site: tuple[Path, Path], venv_bin: Path) -> None:
    home, _ = site
    sock = home / "hearth.sock"
    with daemon(site, venv_bin) as first:
        first.wait_for("serving")
        assert (sock.stat().st_mode & 0o777) == 0o600
        async with over(sock) as client:
            made = await client.post(
                "/v1/workspaces", json={"slug": "iota", "tier": "solo", "driver": "fake"}, params={"wait": 20}
            )
            assert made.status_code == 200 and made.json()["state"] == "succeeded", made.text
            assert (await client.get("/v1/workspaces/iota/status")).json()["state"] == "ready"
        with daemon(site, venv_bin) as second:
            assert second.process.wait(timeout=BOUND) == 1
            second.wait_for("already serves")
        assert first.stop() == 0
    assert not sock.exists()


@pytest.mark.subprocess
async def test_a_stale_socket_of_a_killed_daemon_is_replaced(site: tuple[Path, Path], venv_bin: Path) -> None:
    home, _ = site
    with daemon(site, venv_bin) as killed:
        killed.wait_for("serving")
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (home / "hearth.sock").exists()
    with daemon(site, venv_bin) as again:
        again.wait_for("serving")
        async with over(home / "hearth.sock") as client:
            assert (await client.get("/v1/health")).json()["status"] == "ok"
        assert again.stop() == 0


@pytest.mark.subprocess
async def test_listen_needs_a_private_token_file_and_the_token(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    with daemon(site, venv_bin, "--listen", "127.0.0.1:0") as refused:
        assert refused.process.wait(timeout=BOUND) == 1
        refused.wait_for("--listen needs --token-file")
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-enough-length\n")
    token.chmod(0o644)
    with daemon(site, venv_bin, "--listen", "127.0.0.1:0", "--token-file", str(token)) as loose:
        assert loose.process.wait(timeout=BOUND) == 1
        loose.wait_for("make it 0600")
    token.chmod(0o600)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--token-file", str(token)) as ok,
    ):
        ok.wait_for("serving")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=BOUND) as client:
            wrong = await client.get("/v1/health", headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401 and error_kind(wrong) == "unauthorized"
            assert (await client.get("/v1/health")).status_code == 401
            right = await client.get(
                "/v1/health", headers={"Authorization": "Bearer s3cret-token-of-enough-length"}
            )
            assert right.status_code == 200
            assert (await client.get("/v1/ready")).status_code == 401  # the probes need it too
            ready = await client.get(
                "/v1/ready", headers={"Authorization": "Bearer s3cret-token-of-enough-length"}
            )
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        async with over(site[0] / "hearth.sock") as local:  # the Unix socket needs no token
            assert (await local.get("/v1/health")).status_code == 200
            assert (await local.get("/v1/ready")).status_code == 200
        assert ok.stop() == 0


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A free TCP port on 127.0.0.1 (released before the daemon binds it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port


@pytest.mark.subprocess
async def test_sigterm_mid_provision_then_a_restart_tells_the_truth(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    home, _ = site
    sock = home / "hearth.sock"
    with daemon(site, venv_bin) as first:
        first.wait_for("serving")
        async with over(sock) as client:
            started = await client.post(
                "/v1/workspaces", json={"slug": "kappa", "tier": "glacial", "driver": "fake"}
            )
            assert started.status_code == 202
            ident = started.json()["id"]
            async with client.stream("GET", "/v1/events", params={"slug": "kappa"}) as events:
                async for line in events.aiter_lines():
                    if line and json.loads(line)["kind"] == "progress":
                        break  # the adapter is at work
            assert first.stop() == 0
    first.wait_for("hearth daemon stopped")
    with daemon(site, venv_bin) as second:
        second.wait_for("serving")
        async with over(sock) as client:
            op = (await client.get(f"/v1/operations/{ident}")).json()
            assert op["state"] == "interrupted", op
            record = await client.get("/v1/workspaces/kappa")
            if record.status_code == 404:  # rolled back: the provision left no workspace
                assert "left no workspace" in record.json()["error"]["message"], record.text
            else:
                assert record.json()["state"] == "failed", record.text
        assert second.stop() == 0


#: A provision that takes ten minutes, and a drain that would wait two for it.
DRAINING = """
[tiers.glacial.driver_flags.fake]
delay = 600
[timeouts]
cancel_grace = 5
drain_grace = 120
"""
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


@pytest.mark.subprocess
async def test_a_draining_daemon_answers_reads_cancels_and_streams_and_refuses_starts(
    tmp_path: Path, venv_bin: Path
) -> None:
    """Issue 21 (4): after SIGTERM the daemon drains with its socket open (it refused every
    connection until it exited): health says ``stopping``, reads answer, a start is 503
    ``unavailable`` with ``Retry-After``, the draining provision can be cancelled (the daemon
    then exits at once, not after the two minutes of drain grace) and an open stream gets the
    operation's final event before it ends."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(DRAINING)
    with short_dir() as home, daemon((home, project), venv_bin) as served:
        served.wait_for("serving")
        async with over(home / "hearth.sock") as client, asyncio.timeout(BOUND * 2):
            started = await client.post(
                "/v1/workspaces", json={"slug": "mu", "tier": "glacial", "driver": "fake"}
            )
            assert started.status_code == 202, started.text
            ident = started.json()["id"]
            async with client.stream("GET", "/v1/events", params={"slug": "mu"}) as stream:
                lines = stream.aiter_lines()
                async for line in lines:
                    if line and json.loads(line)["kind"] == "progress":
                        break  # the adapter is at work
                served.send(signal.SIGTERM)
                served.wait_for("closing the host (drain grace 120")
                health = await client.get("/v1/health")
                assert health.status_code == 200 and health.json()["status"] == "stopping", health.text
                record = await client.get("/v1/workspaces/mu")
                assert record.status_code == 200 and record.json()["state"] == "provisioning", record.text
                refused = await client.post(
                    "/v1/workspaces",
                    json={"slug": "nu", "tier": "solo", "driver": "fake"},
                    headers={"Idempotency-Key": "nu-1"},
                )
                assert refused.status_code == 503 and error_kind(refused) == "unavailable", refused.text
                assert 1 <= int(refused.headers["Retry-After"]) <= 120, refused.headers
                assert refused.json()["error"]["retry_after"] == int(refused.headers["Retry-After"])
                assert (await client.get("/v1/workspaces/nu")).status_code == 404  # nothing started
                began = time.monotonic()
                cancel = await client.delete(f"/v1/operations/{ident}")
                assert cancel.status_code == 202, cancel.text
                final = None
                async for line in lines:
                    event = json.loads(line) if line else {}
                    if event.get("kind") == "state" and event.get("state") in FINISHED:
                        final = event
                        break
                assert final is not None and final["operation"] == ident, final
                assert final["state"] == "cancelled", final
                _ = [line async for line in lines]  # then the stream ends (bounded), with the daemon
        code = await asyncio.to_thread(served.process.wait, BOUND)
        assert code == 0 and time.monotonic() - began < BOUND, served.lines
        served.wait_for("hearth daemon stopped")


if __name__ == "__main__":  # regenerate docs/openapi.json
    with tempfile.TemporaryDirectory() as scratch:
        OPENAPI.write_text(openapi_document(create_app(make_host(Path(scratch)))))
    sys.exit(0)


async def _operation_stream(
    client: httpx.AsyncClient, ident: int, headers: dict[str, str] | None = None, **params: Any
) -> tuple[int, list[Json], list[str]]:
    """``GET /v1/operations/{ident}/events`` read until the daemon ends it (bounded): its status,
    its events, and the SSE ids (when asked for SSE)."""
    seen: list[Json] = []
    ids: list[str] = []
    async with (
        asyncio.timeout(BOUND),
        client.stream("GET", f"/v1/operations/{ident}/events", params=params, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return response.status_code, [response.json()], ids
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                ids.append(line[4:])
            elif line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            elif line.strip() and not line.startswith(("event: ", ":")):
                seen.append(json.loads(line))
    return response.status_code, seen, ids


async def test_an_operation_s_own_stream_ends_after_its_final_event(tmp_path: Path) -> None:
    """``/v1/operations/{id}/events`` streams one operation's events from its first (or after
    ``after`` / ``Last-Event-ID``, exclusive) and ends after its final one: while it runs, and at
    once for one already finished; SSE carries each ``seq`` as its id; an unknown id is 404."""
    async with served(tmp_path) as client:
        made = await client.post("/v1/workspaces", json={"slug": "omega", "tier": "brisk", "driver": "fake"})
        assert made.status_code == 202
        other = await client.post("/v1/workspaces", json={"slug": "other", "tier": "brisk", "driver": "fake"})
        ident = made.json()["id"]
        status, live, _ = await _operation_stream(client, ident)
        assert status == 200 and live, live
        finals = [
            e for e in live if e["kind"] == "state" and e["state"] in ("succeeded", "failed", "cancelled")
        ]
        assert {e["operation"] for e in live} == {ident} and finals == [live[-1]], live
        assert live[-1]["state"] == "succeeded"
        assert [e["seq"] for e in live] == sorted({e["seq"] for e in live})
        assert any(e["kind"] == "progress" for e in live)
        _, again, _ = await _operation_stream(client, ident)  # finished: the same, then the end
        assert again == live
        _, rest, _ = await _operation_stream(client, ident, after=live[0]["seq"])
        assert rest == live[1:]
        sse = {"Accept": "text/event-stream", "Last-Event-ID": str(live[1]["seq"])}
        _, resumed, ids = await _operation_stream(client, ident, headers=sse)
        assert resumed == live[2:] and ids == [str(e["seq"]) for e in live[2:]]
        _, past, _ = await _operation_stream(client, ident, after=live[-1]["seq"])
        assert past == []
        status, body, _ = await _operation_stream(client, 999_999)
        assert status == 404 and body[0]["error"]["kind"] == "not_found", body
        await client.get(f"/v1/operations/{other.json()['id']}/wait", params={"timeout": BOUND})


async def test_a_console_lists_then_streams_after_hearth_seq_and_sees_the_running_operation(
    tmp_path: Path,
) -> None:
    """What a console needs without glue (issue 21): ``Hearth-Seq`` on every answer (the store's
    last event when the answer was read: list, then stream ``after=`` it, and nothing is
    missed); ``Deployment.operation``, the id of the operation working on a record (null when
    none); and an operation read by id carries its final event's ``seq`` once written."""
    async with served(tmp_path) as client:
        empty = await client.get("/v1/workspaces")
        assert empty.headers["hearth-seq"] == "0" and empty.json() == []
        assert "hearth-seq" not in (await client.get("/v1/health")).headers  # liveness reads no store
        made = await client.post("/v1/workspaces", json={"slug": "sigma", "tier": "slow", "driver": "fake"})
        ident = made.json()["id"]
        assert int(made.headers["hearth-seq"]) >= 0
        async with (  # once it reports progress, the record is written and the operation works on it
            asyncio.timeout(BOUND),
            client.stream("GET", f"/v1/operations/{ident}/events") as progress,
        ):
            async for line in progress.aiter_lines():
                if line and json.loads(line)["kind"] == "progress":
                    break
        listed = await client.get("/v1/workspaces")
        [record] = listed.json()
        assert record["operation"] == ident and record["state"] == "provisioning"
        assert (await client.get("/v1/workspaces/sigma")).json()["operation"] == ident
        running = (await client.get(f"/v1/operations/{ident}")).json()
        assert running["final_seq"] is None
        position = int(listed.headers["hearth-seq"])
        assert (await client.delete(f"/v1/operations/{ident}")).status_code == 202
        # the stream after the list's position sees the rest of this operation, ending with its end
        async with (
            asyncio.timeout(BOUND),
            client.stream("GET", "/v1/events", params={"after": position}) as response,
        ):
            seen = []
            async for line in response.aiter_lines():
                if line:
                    seen.append(json.loads(line))
                    if seen[-1]["kind"] == "state" and seen[-1]["state"] == "cancelled":
                        break
        assert all(event["seq"] > position for event in seen)
        ended = (await client.get(f"/v1/operations/{ident}")).json()
        assert ended["state"] == "cancelled" and ended["final_seq"] == seen[-1]["seq"]
        assert (await client.get("/v1/operations", params={"slug": "sigma"})).json()[0]["final_seq"] is None
        after = await client.get("/v1/workspaces", params={"include_torn_down": True})
        assert all(r["operation"] is None for r in after.json())
        assert int(after.headers["hearth-seq"]) >= seen[-1]["seq"]


async def test_a_quiet_ndjson_stream_sends_an_empty_line_to_show_it_is_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``HEARTBEAT`` seconds with no event an NDJSON stream sends an empty line (SSE, a
    comment), so that a client tells a quiet stream from a dead peer; readers skip it."""
    monkeypatch.setattr(app_module, "HEARTBEAT", 0.05)
    async with (
        served(tmp_path) as client,
        asyncio.timeout(BOUND),
        client.stream("GET", "/v1/events") as response,
    ):
        lines = response.aiter_lines()
        assert await anext(lines) == ""
        assert await anext(lines) == ""
