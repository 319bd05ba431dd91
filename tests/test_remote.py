"""``hearth.RemoteHost`` (issue 12): the ``Host`` API through the daemon's API v1.

The app of ``hearth._serve.create_app`` runs on an in-process uvicorn on a Unix socket, over a
host whose ``fake`` driver runs in process (as in tests/test_serve.py); ``RemoteHost`` drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

import hearth
from hearth import (
    Busy,
    Cancelled,
    DaemonUnavailable,
    Event,
    Host,
    InvalidInput,
    InvalidTransition,
    NotFound,
    RemoteHost,
    Unavailable,
)
from hearth._remote_wire import QUIET
from hearth._server._app import AppState, create_app
from hearth._server._daemon import default_socket
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import DeploymentRef, RequestContext, StatusReport, utc_now
from tests.helpers import left_by_a_dead_host
from tests.test_serve import _Server, corrupt_a_table_page, make_host, short_dir

BOUND = 30.0


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Path, Host]]:
    """The API on a Unix socket (in a short folder), and the host behind it (``options`` go to
    ``make_host``)."""
    with short_dir() as folder:
        sock = folder / "api.sock"
        async with make_host(tmp_path, **options) as host:
            config = uvicorn.Config(create_app(host), uds=str(sock), log_config=None, lifespan="off")
            server = _Server(config)
            task = asyncio.ensure_future(server.serve())
            try:
                await asyncio.wait_for(server.ready.wait(), BOUND)
                yield sock, host
            finally:
                server.should_exit = True
                server.force_exit = True
                await asyncio.wait_for(task, BOUND)


class Proxy:
    """A Unix-socket proxy to the daemon whose open connections the test can cut."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target, self.path = target, path
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), BOUND)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Close every connection open now (the client sees its stream drop)."""
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.transport.abort()


@pytest.mark.subprocess  # /v1/drivers probes the --version of every adapter on PATH
async def test_the_lifecycle_through_a_remote_host(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        ref = await remote.provision("alpha", tier="solo", driver="fake")
        assert ref.workspace_slug == "alpha" and ref.tier == "solo"
        assert (await remote.status("alpha")).state == "ready"
        assert (await remote.upgrade("alpha", tier="team")).tier == "team"
        assert (await remote.deployment("alpha")).tier == "team"
        assert (await remote.check("alpha", "upgrade", tier="solo")).accepted
        assert (await remote.reconcile("alpha", dry_run=True)).dry_run
        await remote.teardown("alpha")
        listed = await remote.deployments()
        assert [(d.slug, d.state) for d in listed] == [("alpha", "tier_torn_down")]
        assert await remote.deployments(include_torn_down=False) == []
        logs = await remote.logs("alpha")
        assert [op.verb for op in logs] == ["provision", "upgrade", "teardown"]
        ops = await remote.operations(slug="alpha", limit=2)
        assert [op.verb for op in ops] == ["provision", "upgrade"]
        assert [op.verb for op in await remote.operations(after=ops[-1].id)] == ["teardown"]
        assert {"solo", "team", "slow", "brisk"} <= {t.name for t in await remote.tiers()}
        assert any(d.driver == "fake" and d.in_process for d in await remote.drivers())
        assert (await remote.health())["status"] == "ok"


async def test_ready_on_a_remote_host_is_the_daemons_readiness(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        for slug in ("one", "two", "three"):
            await host.provision(slug, tier="solo", driver="fake")
        await remote.ready()  # raises when not ready
    corrupt_a_table_page(tmp_path / "home" / "hearth.db")
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        with pytest.raises(hearth.StoreError, match="is damaged"):
            await remote.ready()
        assert (await remote.health())["status"] == "ok"


async def test_start_then_events_and_result_and_a_key_names_one_operation(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        op = await remote.start_provision("beta", tier="brisk", driver="fake", key="req-1")
        again = await remote.start_provision("beta", tier="brisk", driver="fake", key="req-1")
        assert again.id == op.id and op.key == "req-1"
        seen: list[Event] = []
        async with asyncio.timeout(BOUND):
            async for event in op.events():
                seen.append(event)
        assert seen[-1].final and seen[-1].state == "succeeded"
        assert all(e.operation == op.id for e in seen) and any(e.kind == "progress" for e in seen)
        ref = await op.result(timeout=BOUND)
        assert ref is not None and ref.workspace_slug == "beta"
        assert (await remote.operation(op.id)).state == "succeeded"


async def test_labels_through_a_remote_host_as_on_the_host(tmp_path: Path) -> None:
    """Issue 21: ``start_provision(labels=)``, ``provision(labels=)``, ``label`` and
    ``deployments(labels=)`` answer through the daemon what they answer on the ``Host``."""
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        op = await remote.start_provision("alpha", tier="solo", driver="fake", labels={"team": "a"})
        assert (await op.wait(timeout=BOUND)).state == "succeeded"
        await remote.provision("beta", tier="solo", driver="fake", labels={"team": "b", "env": "dev"})
        assert (await remote.deployment("beta")).labels == {"env": "dev", "team": "b"}
        changed = await remote.label("alpha", {"env": "dev", "team": None})
        assert changed.labels == {"env": "dev"} and changed == await host.deployment("alpha")
        for who in (remote, host):
            assert [d.slug for d in await who.deployments(labels={"env": "dev"})] == ["alpha", "beta"]
            found = await who.deployments(labels={"env": "dev", "team": "b"})
            assert [d.slug for d in found] == ["beta"]
        with pytest.raises(InvalidInput, match="label key 'Bad Key'"):
            await remote.label("alpha", {"Bad Key": "x"})
        with pytest.raises(InvalidInput, match="label 'team' has an invalid value"):
            await remote.start_provision("gamma", tier="solo", driver="fake", labels={"team": "no way"})
        with pytest.raises(NotFound):
            await remote.label("nobody", {"team": "a"})
        running = await remote.start_upgrade("beta", tier="slow")
        with pytest.raises(Busy) as busy:
            await remote.label("beta", {"team": "c"})
        assert busy.value.operation == running.id
        await running.cancel(reason="enough")


async def test_watch_with_labels_yields_the_events_of_the_labelled_workspaces_on_both_hosts(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        start = await host.store.last_seq()
        await remote.provision("beta", tier="solo", driver="fake", labels={"team": "b"})
        await remote.provision("alpha", tier="solo", driver="fake", labels={"team": "a"})
        await remote.label("beta", {"team": "a"})  # joins the set: this change and what follows
        await remote.teardown("beta")
        for who in (host, remote):
            seen: list[Event] = []
            async with asyncio.timeout(BOUND):
                async for event in who.watch(after=start, labels={"team": "a"}):
                    seen.append(event)
                    if event.slug == "beta" and event.final:
                        break
            assert {e.slug for e in seen} == {"alpha", "beta"}
            beta = [e for e in seen if e.slug == "beta"]
            assert beta[0].kind == "workspace" and beta[0].operation is None  # the label change
            assert beta[-1].verb == "teardown"
            assert any(e.slug == "alpha" and e.kind == "progress" for e in seen)
        with pytest.raises(InvalidInput, match="label key"):  # the daemon's answer, at the first read
            await anext(aiter(remote.watch(labels={"Bad Key": "x"})))
        with pytest.raises(InvalidInput, match="label key"):
            host.watch(labels={"Bad Key": "x"})


async def test_typed_errors_come_back(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        with pytest.raises(NotFound):
            await remote.deployment("nobody")
        with pytest.raises(NotFound):
            await remote.operation(999_999)
        with pytest.raises(InvalidInput):
            await remote.start_provision("bad slug!", tier="solo", driver="fake")
        op = await remote.start_provision("gamma", tier="slow", driver="fake")
        with pytest.raises(Busy) as busy:
            await remote.start_upgrade("gamma", tier="team")
        assert busy.value.operation == op.id
        cancelled = await op.cancel(reason="changed my mind")
        assert cancelled.cancel_requested == "changed my mind"
        with pytest.raises(Cancelled):
            await op.result(timeout=BOUND)
        assert (await op.wait(timeout=BOUND)).state == "cancelled"


async def test_a_finished_operation_is_not_cancelled_and_one_read_by_id_has_its_log(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        op = await remote.start_provision("omega", tier="solo", driver="fake", key="omega-1")
        waited = await op.wait(timeout=BOUND)
        assert waited.state == "succeeded" and waited.log
        read = await remote.operation(op.id)
        assert read.log == waited.log
        [listed] = await remote.operations(slug="omega")
        assert listed.log == ()
        with pytest.raises(InvalidTransition, match=rf"operation #{op.id} is succeeded") as caught:
            await read.cancel(reason="too late")
        assert caught.value.state == "succeeded"
        # a provision with nothing to do answers the operation that made the workspace
        again = await remote.start_provision("omega", tier="solo", driver="fake", key="omega-2")
        assert (again.id, again.state) == (op.id, "succeeded")
        assert len(await remote.operations(slug="omega")) == 1


async def test_cancelling_the_caller_cancels_the_operation_it_started(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        task = asyncio.ensure_future(remote.provision("delta", tier="slow", driver="fake"))
        async with asyncio.timeout(BOUND):
            async for event in remote.watch(slug="delta"):
                if event.kind == "progress":
                    break  # the work has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (op,) = await remote.operations(slug="delta")
        assert op.cancel_requested == "cancelled by the caller"
        assert (await op.wait(timeout=BOUND)).state == "cancelled"


async def test_watch_resumes_after_the_connection_drops(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, _):
        async with Proxy(sock, sock.with_name("proxy.sock")) as proxy, RemoteHost(proxy.path) as remote:
            await remote.start_provision("eta", tier="brisk", driver="fake")
            seen: list[Event] = []
            async with asyncio.timeout(BOUND):
                async for event in remote.watch(slug="eta"):
                    seen.append(event)
                    if len(seen) == 2:
                        proxy.cut()  # mid-stream: the next read fails, the watch reconnects
                    if event.final:
                        break
                whole = []
                async for event in remote.watch(after=0, slug="eta"):
                    whole.append(event)
                    if event.final:
                        break
        seqs = [e.seq for e in seen]
        assert seqs == [e.seq for e in whole] and seqs == sorted(set(seqs)) and len(seqs) > 2
        assert seen[-1].state == "succeeded"


async def test_hearth_url_names_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with daemon(tmp_path) as (sock, _):
        monkeypatch.setenv("HEARTH_URL", f"unix://{sock}")
        async with RemoteHost() as remote:
            assert remote.socket == sock and remote.address == f"unix://{sock}"
            assert (await remote.health())["status"] == "ok"
        monkeypatch.setenv("HEARTH_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("HEARTH_TOKEN", "a-token-of-sixteen-chars")
        tcp = RemoteHost()
        assert tcp.url == "http://127.0.0.1:9" and tcp.socket is None
        await tcp.aclose()
        monkeypatch.setenv("HEARTH_URL", "ftp://elsewhere")
        with pytest.raises(InvalidInput, match="HEARTH_URL"):
            RemoteHost()
        monkeypatch.delenv("HEARTH_URL")
        monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
        assert RemoteHost().socket == default_socket()


async def test_a_missing_socket_is_daemon_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    async with RemoteHost(missing) as remote:
        with pytest.raises(DaemonUnavailable, match="socket does not exist") as caught:
            await remote.deployments()
    assert caught.value.kind == "daemon_unavailable" and str(missing) in caught.value.message
    assert isinstance(caught.value, hearth.HearthError)
    async with RemoteHost(missing) as remote, asyncio.timeout(BOUND / 2):
        with pytest.raises(DaemonUnavailable, match="socket does not exist"):
            await anext(remote.watch())  # never reached: at once, not after ``reconnect``


@contextlib.asynccontextmanager
async def serving(host: Host, sock: Path, app: FastAPI | None = None) -> AsyncIterator[None]:
    """The API of ``host`` (or ``app``, made on it) on ``sock`` until the block ends: the
    daemon stopped, not the host."""
    app = create_app(host) if app is None else app
    server = _Server(uvicorn.Config(app, uds=str(sock), log_config=None, lifespan="off"))
    task = asyncio.ensure_future(server.serve())
    try:
        await asyncio.wait_for(server.ready.wait(), BOUND)
        yield
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, BOUND)


@pytest.mark.slow  # waits real seconds: a daemon down for longer than the old 3.1 s of retries
async def test_a_watch_and_a_result_wait_through_a_daemon_restart(tmp_path: Path) -> None:
    """Issue 20: a daemon down for 4 s (the old bound gave up after ~3.1 s): ``watch()``,
    ``events()`` and ``result()`` ride it out within ``reconnect`` and miss or repeat nothing."""
    with short_dir() as folder:
        sock = folder / "api.sock"
        async with make_host(tmp_path) as host, RemoteHost(sock, reconnect=BOUND) as remote:
            async with serving(host, sock):
                first = await remote.start_provision("one", tier="brisk", driver="fake")
                assert (await first.wait(timeout=BOUND)).finished
                seen: list[Event] = []
                up = asyncio.Event()

                async def watching() -> None:
                    async for event in remote.watch():
                        seen.append(event)
                        up.set()
                        if event.final and event.slug == "three":
                            return

                watcher = asyncio.ensure_future(watching())
                await asyncio.wait_for(up.wait(), BOUND)
            # the daemon is down: work goes on in the host, and the client keeps asking
            second = await host.start_provision("two", tier="brisk", driver="fake")
            waiting = asyncio.ensure_future(second.model_copy().bound(remote).result())
            assert (await second.wait(timeout=BOUND)).finished
            later = asyncio.ensure_future(remote.operation(first.id))
            with pytest.raises(DaemonUnavailable):
                await later  # a single call does not wait
            await asyncio.sleep(4.0)  # longer than the old 5 tries (0.1 + ... + 1.6 s)
            assert not watcher.done() and not waiting.done()
            async with serving(host, sock):
                third = await remote.start_provision("three", tier="brisk", driver="fake")
                async with asyncio.timeout(BOUND):
                    await watcher
                    ref = await third.result()
                    assert (await waiting) is not None
                    whole = [e async for e in _until(remote.watch(), "three")]
        assert ref is not None and ref.workspace_slug == "three"
        seqs = [e.seq for e in seen]
        assert seqs == sorted(set(seqs)) and seqs == [e.seq for e in whole]
        assert {e.slug for e in seen if e.final} == {"one", "two", "three"}


async def test_a_keyed_start_a_draining_daemon_refuses_is_asked_again_after_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 (4): a start on a draining daemon is 503 ``unavailable``: without a key it
    raises ``Unavailable`` (its ``retry_after`` from the answer) at once; with one (the verbs
    send one) it is asked again after ``Retry-After``, as through an outage, and lands on the
    daemon that serves by then (here the same one, its drain called off by the test); past
    ``reconnect`` it is ``Unavailable``."""
    with short_dir() as folder:
        sock = folder / "api.sock"
        async with make_host(tmp_path) as host:
            app = create_app(host)
            state: AppState = app.state.hearth
            refused = asyncio.Event()
            admit = state.admit

            def admitting() -> None:
                try:
                    admit()
                except Unavailable:
                    refused.set()
                    raise

            monkeypatch.setattr(state, "admit", admitting)
            async with serving(host, sock, app), asyncio.timeout(BOUND):
                state.drain(0.5)
                async with RemoteHost(sock, reconnect=BOUND) as remote:
                    with pytest.raises(Unavailable) as unkeyed:
                        await remote.start_provision("xi", tier="solo", driver="fake")
                    assert unkeyed.value.retry_after == 1
                    async with RemoteHost(sock, reconnect=1.5) as brief:
                        loop = asyncio.get_running_loop()
                        began = loop.time()
                        with pytest.raises(Unavailable):
                            await brief.start_provision("xi", tier="solo", driver="fake", key="xi-0")
                        assert 1.5 <= loop.time() - began < BOUND
                    refused.clear()
                    began = loop.time()
                    asking = asyncio.ensure_future(
                        remote.start_provision("xi", tier="solo", driver="fake", key="xi-1")
                    )
                    await refused.wait()
                    state.draining.clear()  # a daemon that admits starts (a new one, in life)
                    op = await asking
                    assert loop.time() - began >= 1.0  # not before its Retry-After
                    assert op.key == "xi-1" and (await op.wait(timeout=BOUND)).state == "succeeded"
                    assert [o.key for o in await remote.operations(slug="xi")] == ["xi-1"]


async def _until(events: AsyncIterator[Event], slug: str) -> AsyncIterator[Event]:
    async for event in events:
        yield event
        if event.final and event.slug == slug:
            return


async def test_a_stream_the_daemon_drops_for_falling_behind_resumes_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """A stream more than the fan-out's bound behind is ended by the daemon (nothing held for
    it); ``watch()`` opens it again after its last ``seq``, unseen by its reader."""
    from hearth._store._base import NewEvent

    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        fanout = host._events.fanout
        fanout.limit = 3
        subscribed = 0
        subscribe = fanout.subscribe

        async def counting(*args: Any) -> Any:
            nonlocal subscribed
            subscribed += 1
            return await subscribe(*args)

        fanout.subscribe = counting  # type: ignore[method-assign,assignment]
        released = asyncio.Event()
        unsubscribe = fanout.unsubscribe

        def unsubscribing(subscriber: Any) -> None:
            unsubscribe(subscriber)
            if not fanout.streams:
                released.set()

        fanout.unsubscribe = unsubscribing  # type: ignore[method-assign]
        stream = remote.watch()
        watching = asyncio.ensure_future(_collected(_until(stream, "last")))
        op = await host.start_provision("noisy", tier="brisk", driver="fake")
        await op.result()
        for burst in range(3):  # each a batch of 6 for the reader: past the bound of 3
            events = [
                NewEvent(op.id, "noisy", "provision", "progress", message=f"{burst}.{i}") for i in range(6)
            ]
            await host.store.add_events(events)
        await host.provision("last", tier="solo", driver="fake")
        seen = await asyncio.wait_for(watching, BOUND)
        written = [e.seq for e in await host.store.events(limit=10_000)]
        assert [e.seq for e in seen] == written
        assert subscribed > 1  # it was dropped, and came back
        released.clear()
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(released.wait(), BOUND)  # the client left: the daemon keeps nothing
        assert fanout.position is None


async def _collected(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def test_an_operation_s_events_wait_for_a_final_event_that_waits_for_its_settle(tmp_path: Path) -> None:
    """A dead host's operation is ended (``interrupted``) at once, but its final event comes
    with the settle of its record (issue 21, 2): ``op.events()`` through the daemon waits for
    it rather than ending on a quiet stream, and the final event carries the settled record."""
    sees = asyncio.Event()

    class Blinking(FakeDriver):
        """Cannot say what it holds until ``sees`` is set."""

        async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
            if not sees.is_set():
                return StatusReport(state="unknown", observed_at=utc_now(), message="not yet")
            return await super().status(ref, ctx)

    async with daemon(tmp_path, driver=Blinking) as (sock, host), RemoteHost(sock) as remote:
        await host.provision("nu", tier="solo", driver="fake")
        record = await host.deployment("nu")
        await left_by_a_dead_host(host, record.model_copy(update={"state": "provisioning"}), "provision")
        [dead] = await host.store.operations(slug="nu", active=True)
        assert (await host.deployment("nu")).state == "provisioning"  # ended; the adapter cannot say
        op = await remote.operation(dead.id)
        assert op.state == "interrupted"
        watching = asyncio.ensure_future(remote_events(op))
        done, _ = await asyncio.wait([watching], timeout=3 * QUIET)
        assert not done, watching.result()  # quiet, but its final event is still to come
        sees.set()
        assert (await host.reconcile()).resolved == [("nu", "provisioning", "ready")]
        async with asyncio.timeout(BOUND):
            seen = await watching
        assert (seen[-1].kind, seen[-1].state, seen[-1].record_state) == ("state", "interrupted", "ready")


async def remote_events(op: hearth.Operation) -> list[Event]:
    return [event async for event in op.events()]
