"""examples/console/app.py for real: uvicorn with two workers on one hearth home, over a Unix socket.

Each worker embeds its own ``hearth.Host``; the kernel hands each new connection to either worker.
The test pins one keep-alive connection to each worker (``X-Hearth-Worker`` names the worker
that answered, an operation's ``owner`` the worker that runs it), so that it can ask the worker
that does *not* run an operation to stream it and to cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

pytestmark = pytest.mark.subprocess

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "console"
SETTINGS = """
[tiers.slow.driver_flags.fake]
delay = 1.0
[tiers.glacial.driver_flags.fake]
delay = 60
[timeouts]
cancel_grace = 5
drain_grace = 5
"""
#: The bound of any one wait: a request, a stream, the start of the server.
BOUND = 20.0
#: How long uvicorn may take to stop after SIGTERM (its graceful shutdown is 5 s, then each
#: worker's Host closes: nothing runs by then, so that is quick).
STOP_BOUND = 20.0
WORKERS = 2
SLUGS = [f"ws-{n}" for n in range(10)]
#: The states that end an operation (only ``state`` events carry a state).
FINAL = {"succeeded", "failed", "cancelled", "interrupted"}
#: The longest path a Unix socket may have (sun_path is 108 bytes with its NUL).
SUN_PATH_MAX = 107

Json = dict[str, Any]


def _require_the_web_stack() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(name) is None]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"the console example needs {', '.join(missing)} (scripts/setup installs them)")


@contextlib.contextmanager
def _socket_path(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/console.sock``, or a short temporary folder's when that path is too long."""
    path = tmp_path / "console.sock"
    if len(str(path)) <= SUN_PATH_MAX:
        yield path
        return
    folder = tempfile.mkdtemp(prefix="hearth-console-")
    try:
        yield Path(folder) / "console.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(tmp_path: Path, sock: Path, venv_bin: Path) -> subprocess.Popen[bytes]:
    """uvicorn in its own session (so its own process group), its output in tmp_path/uvicorn.log."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(SETTINGS)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",  # finds hearth-adapter-fake
        "HEARTH_HOME": str(tmp_path / "home"),
        "HEARTH_PROJECT": str(project),
    }
    env.pop("HEARTH_URL", None)  # each worker embeds a Host here (a daemon's URL makes it remote)
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(APP_DIR)]
    argv += ["--workers", str(WORKERS), "--uds", str(sock)]
    argv += ["--timeout-keep-alive", "120", "--timeout-graceful-shutdown", "5"]
    with (tmp_path / "uvicorn.log").open("wb") as log:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _living_members(group: int) -> list[int]:
    """The processes of a process group that are not zombies (a zombie left to an init that does
    not reap is gone in all but name)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or gone
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _stop(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the server's process group, then wait for all of it; SIGKILL only past the
    bound. The server's exit code."""
    group = server.pid  # start_new_session: the group's id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_BOUND
    try:
        code = server.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        code = None
    while code is not None and _living_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)  # the parent joined its workers; multiprocessing's helpers follow it
    left = _living_members(group)
    if code is None or left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        server.wait(timeout=STOP_BOUND)
        raise AssertionError(f"uvicorn did not stop within {STOP_BOUND} s of SIGTERM (left: {left}); killed")
    return code


def _worker(response: httpx.Response) -> str:
    return response.headers["x-hearth-worker"]


async def _pin_workers(sock: Path, log: Path) -> dict[str, httpx.AsyncClient]:
    """One client per worker, keyed by worker id, each on one keep-alive connection. Polls the
    socket until both workers answered (within BOUND): a new connection goes to either."""
    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    pinned: dict[str, httpx.AsyncClient] = {}
    while len(pinned) < WORKERS:
        if loop.time() > deadline:
            for client in pinned.values():
                await client.aclose()
            raise AssertionError(f"{WORKERS} workers did not answer within {BOUND} s:\n{log.read_text()}")
        transport = httpx.AsyncHTTPTransport(
            uds=str(sock), limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        )
        client = httpx.AsyncClient(transport=transport, base_url="http://console", timeout=BOUND)
        try:
            response = await client.get("/")
        except httpx.TransportError:  # not listening yet
            await client.aclose()
            await asyncio.sleep(0.05)
            continue
        assert response.status_code == 200, response.text
        worker = response.json()["worker"]
        assert worker == _worker(response)
        if worker in pinned:
            await client.aclose()
        else:
            pinned[worker] = client
    return pinned


async def _sse_events(lines: AsyncIterator[str]) -> AsyncGenerator[Json, None]:
    """The events of a Server-Sent Events body, line by line (each ``id:`` is its ``seq``)."""
    ident, data = None, None
    async for line in lines:
        if line.startswith("id: "):
            ident = int(line.removeprefix("id: "))
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif not line and data is not None:
            assert data["seq"] == ident
            yield data
            data = None


async def _stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    until: Callable[[list[Json]], bool] | None = None,
) -> list[Json]:
    """The events of a Server-Sent Events stream: all of them when it ends by itself, else up to
    the one after which ``until`` holds. Within BOUND either way."""
    events: list[Json] = []
    async with asyncio.timeout(BOUND), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in _sse_events(response.aiter_lines()):
            events.append(event)
            if until is not None and until(events):
                return events
    assert until is None, f"the stream ended before the condition held: {events}"
    return events


def _finished(ids: set[int]) -> Callable[[list[Json]], bool]:
    return lambda events: ids <= {e["operation"] for e in events if e["state"] in FINAL}


@dataclass
class Console:
    """The running console: a client pinned to each worker (by worker id), and a pooled client."""

    pinned: dict[str, httpx.AsyncClient]
    pool: httpx.AsyncClient

    def other_than(self, worker: str) -> httpx.AsyncClient:
        """A client whose requests a worker other than ``worker`` answers."""
        return next(client for name, client in self.pinned.items() if name != worker)


@contextlib.asynccontextmanager
async def _console(tmp_path: Path, venv_bin: Path) -> AsyncIterator[Console]:
    import httpx

    with _socket_path(tmp_path) as sock:
        server = _start(tmp_path, sock, venv_bin)
        log = tmp_path / "uvicorn.log"
        try:
            async with contextlib.AsyncExitStack() as clients:
                pinned = await _pin_workers(sock, log)
                for client in pinned.values():
                    clients.push_async_callback(client.aclose)
                pool = httpx.AsyncClient(
                    transport=httpx.AsyncHTTPTransport(uds=str(sock)),
                    base_url="http://console",
                    timeout=BOUND,
                )
                clients.push_async_callback(pool.aclose)
                yield Console(pinned, pool)
        finally:
            code = await asyncio.to_thread(_stop, server)
        text = log.read_text()
        assert code == 0, text
        assert "ERROR" not in text and "Traceback" not in text, text
        # each worker's lifespan closed its Host (which stopped its adapters)
        assert text.count("Application shutdown complete.") == WORKERS, text


async def _create_ten(console: Console) -> list[Json]:
    """Ten workspaces at once, through as many connections as the pool opens."""
    body = {"tier": "slow", "driver": "fake"}
    responses = await asyncio.gather(
        *(console.pool.post("/workspaces", json={"slug": s, **body}) for s in SLUGS)
    )
    assert [r.status_code for r in responses] == [202] * len(SLUGS), [r.text for r in responses]
    ops = [r.json() for r in responses]
    assert [op["slug"] for op in ops] == SLUGS
    assert len({op["id"] for op in ops}) == len(SLUGS)
    assert all(op["owner"] == _worker(r) for op, r in zip(ops, responses, strict=True))
    assert {op["owner"] for op in ops} <= set(console.pinned)
    return ops


async def _one_key_one_operation(console: Console) -> Json:
    """The same Idempotency-Key through each worker: one operation; with other arguments: 409."""
    key = {"Idempotency-Key": "create-keyed-1"}
    body = {"slug": "keyed", "tier": "slow", "driver": "fake"}
    keyed = [await client.post("/workspaces", json=body, headers=key) for client in console.pinned.values()]
    assert [r.status_code for r in keyed] == [202, 202], [r.text for r in keyed]
    assert keyed[0].json()["id"] == keyed[1].json()["id"]
    assert _worker(keyed[0]) != _worker(keyed[1])
    reused = await console.pool.post("/workspaces", json={**body, "slug": "other"}, headers=key)
    assert reused.status_code == 409 and reused.json()["error"]["kind"] == "conflict", reused.text
    return dict(keyed[0].json())


async def _progress_of_one(console: Console, op: Json) -> None:
    """Its events, streamed by the worker that does not run it, until it finishes; resumable."""
    url = f"/operations/{op['id']}/events"
    events = await _stream(console.other_than(op["owner"]), url)
    assert {e["operation"] for e in events} == {op["id"]}
    assert [e["state"] for e in events if e["kind"] == "state"] == ["queued", "running", "succeeded"]
    fractions = [e["fraction"] for e in events if e["kind"] == "progress"]
    assert len(fractions) >= 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["kind"] == "state" and events[-1]["record_state"] == "ready"
    assert _worker(await console.other_than(op["owner"]).get("/")) != op["owner"]  # the same connection
    # resumed with Last-Event-ID: what came after it; after its last event: an empty stream that ends
    middle = events[len(events) // 2]["seq"]
    resumed = await _stream(console.pool, url, headers={"Last-Event-ID": str(middle)})
    assert resumed == [e for e in events if e["seq"] > middle]
    assert await _stream(console.pool, url, headers={"Last-Event-ID": str(events[-1]["seq"])}) == []


async def _all_finish(console: Console, ops: list[Json], keyed: Json) -> None:
    """One stream of every worker's events, read until every operation finished."""
    everything = await _stream(console.pool, "/events", until=_finished({op["id"] for op in [*ops, keyed]}))
    assert [e["seq"] for e in everything] == sorted({e["seq"] for e in everything})
    done = [(await console.pool.get(f"/operations/{op['id']}")).json() for op in ops]
    assert {op["state"] for op in done} == {"succeeded"}
    assert [op["result"]["endpoint"] for op in done] == [f"fake://{s}" for s in SLUGS]
    listed = (await console.pool.get("/workspaces")).json()
    assert {w["slug"]: w["state"] for w in listed} == {s: "ready" for s in [*SLUGS, "keyed"]}


async def _cancel_from_the_other_worker(console: Console) -> None:
    """A long provision run by one worker: a conflicting start is busy; the other worker cancels it."""
    owner, runner = next(iter(console.pinned.items()))
    other = console.other_than(owner)
    started = await runner.post("/workspaces", json={"slug": "doomed", "tier": "glacial", "driver": "fake"})
    assert started.status_code == 202, started.text
    doomed = started.json()
    assert doomed["owner"] == owner
    url = f"/operations/{doomed['id']}"
    # (through the pool: a stream left early closes its connection, and a pinned one must stay)
    running = await _stream(
        console.pool, f"{url}/events", until=lambda events: any(e["kind"] == "progress" for e in events)
    )
    assert [e["state"] for e in running if e["kind"] == "state"] == ["queued", "running"]
    busy = await other.post("/workspaces", json={"slug": "doomed", "tier": "slow", "driver": "fake"})
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["kind"] == "busy" and busy.json()["error"]["operation"] == doomed["id"]
    cancel = await other.delete(url, params={"reason": "changed my mind"})
    assert cancel.status_code == 202, cancel.text
    assert _worker(cancel) != owner
    assert cancel.json()["cancel_requested"] == "changed my mind"
    final = (await other.get(url, params={"wait": BOUND / 2})).json()
    assert final["state"] == "cancelled", final
    assert final["error"]["kind"] == "cancelled" and final["error"]["rolled_back"] is True, final
    gone = await runner.get("/workspaces/doomed")  # a first provision rolled back leaves no workspace
    assert gone.status_code == 404 and gone.json()["error"]["kind"] == "not_found", gone.text


async def _refusals(console: Console) -> None:
    """Unknown names are 404, bad input 400."""
    for method, url in [
        ("GET", "/workspaces/nope"),
        ("DELETE", "/workspaces/nope"),
        ("GET", "/operations/9999"),
    ]:
        missing = await console.pool.request(method, url)
        assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found", missing.text
    bad = await console.pool.post(
        "/workspaces", json={"slug": "Not A Slug", "tier": "solo", "driver": "fake"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["kind"] == "invalid_input", bad.text
    bad = await console.pool.get("/events", params={"slug": "Not A Slug"})  # refused before streaming
    assert bad.status_code == 400 and bad.json()["error"]["kind"] == "invalid_input", bad.text


async def _upgrade_and_teardown(console: Console) -> None:
    """An upgrade through one worker, a teardown through the other; both waited for through the pool."""
    first, second = console.pinned.values()
    upgraded = await first.post(f"/workspaces/{SLUGS[1]}/upgrade", json={"tier": "team"})
    torn = await second.delete(f"/workspaces/{SLUGS[2]}")
    assert (upgraded.status_code, torn.status_code) == (202, 202), (upgraded.text, torn.text)
    for started in (upgraded.json(), torn.json()):
        after = (await console.pool.get(f"/operations/{started['id']}", params={"wait": BOUND / 2})).json()
        assert after["state"] == "succeeded", after
    assert (await console.pool.get(f"/workspaces/{SLUGS[1]}")).json()["tier"] == "team"
    assert (await console.pool.get(f"/workspaces/{SLUGS[2]}")).json()["state"] == "tier_torn_down"


async def _leaving_ends_only_its_own_stream(console: Console) -> None:
    """A client that leaves its stream ends that stream only, not the others of the same worker."""

    async def provision_and_read(slug: str, streams: list[AsyncGenerator[Json, None]]) -> None:
        started = await console.pool.post(
            "/workspaces", json={"slug": slug, "tier": "solo", "driver": "fake"}
        )
        assert started.status_code == 202, started.text
        for events in streams:
            async with asyncio.timeout(BOUND):
                async for event in events:
                    if event["operation"] == started.json()["id"] and event["state"] in FINAL:
                        assert event["state"] == "succeeded", event
                        break
                else:
                    raise AssertionError(f"a stream ended before {slug} finished")

    responses: list[httpx.Response] = []
    streams: list[AsyncGenerator[Json, None]] = []
    try:
        for _ in range(WORKERS + 1):  # three streams on two workers: two of them share a worker
            request = console.pool.build_request("GET", "/events")
            responses.append(await console.pool.send(request, stream=True))
        streams = [_sse_events(response.aiter_lines()) for response in responses]
        await provision_and_read("marker", streams)  # every stream has caught up and waits
        workers = [_worker(response) for response in responses]
        leaving = next(n for n, worker in enumerate(workers) if workers.count(worker) > 1)
        await responses[leaving].aclose()
        await provision_and_read("after-leave", [s for n, s in enumerate(streams) if n != leaving])
    finally:
        for events in streams:
            await events.aclose()
        for response in responses:
            await response.aclose()


async def test_two_workers_serve_one_home(tmp_path: Path, venv_bin: Path) -> None:
    _require_the_web_stack()
    async with _console(tmp_path, venv_bin) as console:
        ops = await _create_ten(console)
        keyed = await _one_key_one_operation(console)
        await _progress_of_one(console, ops[0])
        await _all_finish(console, ops, keyed)
        await _cancel_from_the_other_worker(console)
        await _refusals(console)
        await _upgrade_and_teardown(console)
        await _leaving_ends_only_its_own_stream(console)
