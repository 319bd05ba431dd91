"""A store write that fails (a full disk) while an operation starts: the operation is ended,
never left ``queued`` with no work behind it, and a retry with its idempotency key runs
(issue 20, defect 2). Faults are injected into ``SQLiteStore``'s methods, deterministically."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import Host, StoreError
from hearth._lifecycle._runner import Runner
from hearth._server._app import create_app
from hearth._store._sqlite import SQLiteStore
from tests.helpers import make_host

FULL = "database or disk is full"


def fail_when(monkeypatch: pytest.MonkeyPatch, method: str, fails: Callable[[], bool]) -> None:
    """``SQLiteStore.<method>`` raises the store's disk-full error whenever ``fails()`` says so."""
    original = getattr(SQLiteStore, method)

    async def faulty(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        if fails():
            raise StoreError(f"the store {self.path} cannot be used: {FULL}")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteStore, method, faulty)


def times(count: int) -> Callable[[], bool]:
    """Fails the first ``count`` calls."""
    left = [count]

    def fails() -> bool:
        left[0] -= 1
        return left[0] >= 0

    return fails


async def active(host: Host) -> list[int]:
    return [op.id for state in ("queued", "running") for op in await host.operations(state=state)]


async def test_a_start_whose_first_write_fails_ends_failed_and_a_retry_with_its_key_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_when(monkeypatch, "begin", times(1))
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=FULL):
            await host.provision("disk", tier="solo", driver="fake", key="k-1")
        [dead] = await host.operations(slug="disk")
        assert dead.state == "failed" and dead.error is not None
        assert dead.error["kind"] == "store_error" and dead.error["changed_nothing"] is True
        assert dead.error["message"].startswith("a store write failed: ")
        assert FULL in dead.error["message"]
        assert await host.deployments() == []
        ref = await host.provision("disk", tier="solo", driver="fake", key="k-1")
        assert ref is not None and ref.workspace_slug == "disk"
        assert [d.state for d in await host.deployments()] == ["ready"]
        ops = await host.operations(slug="disk")
        assert [(op.state, op.key) for op in ops] == [("failed", None), ("succeeded", "k-1")]
        again = await host.start_provision("disk", tier="solo", driver="fake", key="k-1")
        assert again.id == ops[1].id  # the key now names the operation that ran


async def test_a_key_that_joined_a_start_that_failed_on_a_write_is_released_to_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    original = SQLiteStore.begin
    held = [True]

    async def begin_fails_once_released(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        if held[0]:
            held[0] = False
            await gate.wait()  # the test joins the operation meanwhile
            raise StoreError(f"the store {self.path} cannot be used: {FULL}")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteStore, "begin", begin_fails_once_released)
    async with make_host(tmp_path) as host:
        first = await host.start_provision("disk", tier="solo", driver="fake", key="kA")
        joined = await host.start_provision("disk", tier="solo", driver="fake", key="kB")
        assert joined.id == first.id
        gate.set()
        dead = await first.wait(timeout=30)
        assert dead.state == "failed" and dead.error is not None and dead.error["changed_nothing"] is True
        ref = await host.provision("disk", tier="solo", driver="fake", key="kB")  # released: it runs
        assert ref.workspace_slug == "disk"
        ops = await host.operations(slug="disk")
        assert [(op.state, op.key) for op in ops] == [("failed", "kA"), ("succeeded", "kB")]
        # the starter's key, retried, has nothing to do: it answers what made the workspace
        again = await host.start_provision("disk", tier="solo", driver="fake", key="kA")
        assert again.id == ops[1].id
        assert [(op.state, op.key) for op in await host.operations(slug="disk")] == [
            ("failed", None),
            ("succeeded", "kB"),
        ]


async def test_a_cancel_that_lands_while_begin_is_written_leaves_the_record_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The begin write commits on the store's thread while its caller is cancelled: the record
    it wrote (transient) is put back, not left for heal to find (issue 21, item 1's cancel)."""
    original, runner_cancel = SQLiteStore.begin, Runner.cancel
    written, cancelled = asyncio.Event(), asyncio.Event()

    def cancel_seen(self: Runner, *args: Any, **kwargs: Any) -> bool:
        try:
            return runner_cancel(self, *args, **kwargs)
        finally:
            cancelled.set()

    async def begin_answered_after_a_cancel(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        done = await original(self, *args, **kwargs)
        written.set()
        async with asyncio.timeout(20):  # its answer is late: a cancel comes first
            await cancelled.wait()
        return done

    monkeypatch.setattr(Runner, "cancel", cancel_seen)
    monkeypatch.setattr(SQLiteStore, "begin", begin_answered_after_a_cancel)
    async with make_host(tmp_path) as host:
        op = await host.start_provision("late", tier="slow", driver="fake", key="late-1")
        async with asyncio.timeout(20):
            await written.wait()
        assert (await host.store.get("late")) is not None  # transient, while begin's answer is late
        await op.cancel(reason="changed my mind")
        ended = await op.wait(timeout=20)
        assert ended.state == "cancelled" and ended.error is not None
        assert ended.error.get("changed_nothing") is True, ended.error
        assert "changed my mind" in ended.error["message"]
        assert await host.store.get("late") is None  # no transient record left behind
        assert await host.deployments() == []  # nor one that heal settled "failed"


async def test_a_start_whose_end_fails_too_is_ended_by_reconcile_saying_a_write_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_when(monkeypatch, "begin", times(1))
    fail_when(monkeypatch, "end", times(1))
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=FULL):
            await host.provision("stuck", tier="solo", driver="fake", key="k-2")
        [left] = await host.operations(slug="stuck")
        assert (left.state, left.owner) == ("queued", host.owner)  # even its end failed
        await host.reconcile()
        [ended] = await host.operations(slug="stuck")
        assert ended.state == "failed" and ended.error is not None
        assert ended.error["kind"] == "store_error" and ended.error["changed_nothing"] is True
        assert "a store write failed" in ended.error["message"]
        assert "stopped" not in ended.error["message"]
        ref = await host.provision("stuck", tier="solo", driver="fake", key="k-2")
        assert ref is not None and [d.state for d in await host.deployments()] == ["ready"]


async def test_the_next_access_heals_an_own_queued_operation_with_no_work_and_its_key_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_when(monkeypatch, "begin", times(1))
    fail_when(monkeypatch, "end", times(1))
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=FULL):
            await host.provision("heal", tier="solo", driver="fake", key="k-3")
        [left] = await host.operations(slug="heal")
        assert left.state == "queued"
        ref = await host.provision("heal", tier="solo", driver="fake", key="k-3")  # heals, then runs
        assert ref is not None
        first, second = await host.operations(slug="heal")
        assert first.error is not None and first.state == "failed"
        assert first.error["message"].startswith("its start was not recorded: a store write failed")
        assert first.error["changed_nothing"] is True
        assert (second.state, second.key) == ("succeeded", "k-3")


async def test_an_own_running_operation_whose_outcome_was_not_written_is_interrupted_by_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_when(monkeypatch, "end", times(1))  # the outcome the adapter answered
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=FULL):
            await host.provision("ran", tier="solo", driver="fake")
        [left] = await host.operations(slug="ran")
        assert left.state == "running"
        report = await host.reconcile()
        [ended] = await host.operations(slug="ran")
        assert ended.state == "interrupted" and ended.error is not None
        assert "a store write failed" in ended.error["message"]
        assert "stopped" not in ended.error["message"]
        assert report.resolved == [("ran", "provisioning", "ready")]  # settled from the adapter


async def test_many_keyed_provisions_while_writes_fail_leave_nothing_queued_and_every_key_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"create_operation": 0, "begin": 0}

    def every(method: str, nth: int) -> Callable[[], bool]:
        def fails() -> bool:
            calls[method] += 1
            return calls[method] % nth == 0

        return fails

    fail_when(monkeypatch, "create_operation", every("create_operation", 4))
    fail_when(monkeypatch, "begin", every("begin", 3))
    count = 30
    async with make_host(tmp_path) as host:
        slugs = [f"w{index}" for index in range(count)]

        async def provision(slug: str) -> object:
            return await host.provision(slug, tier="solo", driver="fake", key=f"key-{slug}")

        answers = await asyncio.gather(*(provision(slug) for slug in slugs), return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert failed and all(isinstance(a, StoreError) for a in failed), failed
        assert await active(host) == []
        monkeypatch.undo()  # the space is back
        for slug in slugs:
            assert await provision(slug) is not None
        assert sorted(d.slug for d in await host.deployments() if d.state == "ready") == sorted(slugs)
        assert await active(host) == []


class _CommitFails:
    """A connection whose next ``COMMIT`` fails as a full disk does, leaving the transaction open."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.armed and sql == "COMMIT":
            self.armed = False
            raise sqlite3.OperationalError(FULL)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def test_an_insert_whose_commit_fails_answers_500_and_leaves_no_operation(tmp_path: Path) -> None:
    async with make_host(tmp_path, idle_timeout=None) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=30) as client:
            await host.deployments()  # the store is open
            store = host.store
            assert isinstance(store, SQLiteStore) and store._db is not None
            store._db = _CommitFails(store._db)  # type: ignore[assignment]
            body = {"slug": "http", "tier": "solo", "driver": "fake"}
            headers = {"Idempotency-Key": "k-http"}
            answer = await client.post("/v1/workspaces", json=body, headers=headers, params={"wait": 20})
            assert answer.status_code == 500, answer.text
            assert answer.json()["error"]["kind"] == "store_error"
            assert (await client.get("/v1/operations")).json() == []
            again = await client.post("/v1/workspaces", json=body, headers=headers, params={"wait": 20})
            assert again.status_code == 200, again.text
            assert again.json()["state"] == "succeeded"
            assert (await client.get("/v1/workspaces/http")).json()["state"] == "ready"


async def test_reconcile_leaves_alone_the_operations_this_host_runs(tmp_path: Path) -> None:
    """Only operations with no work behind them are ended: one this host runs, queued behind
    its slug's lock or running in the adapter, goes on."""
    async with make_host(tmp_path) as host:
        progressed = asyncio.Event()
        running = await host.start_provision(
            "live", tier="slow", driver="fake", on_progress=lambda _: progressed.set()
        )
        async with asyncio.timeout(10):
            await progressed.wait()
        async with host._core.locks.hold("held", 5.0):  # its work waits for the slug: queued
            queued = await host.start_provision("held", tier="solo", driver="fake")
            await host.reconcile()
            states = [(await host.operation(op.id)).state for op in (running, queued)]
            assert states == ["running", "queued"]
        assert await queued.result(timeout=30) is not None
        await running.cancel("the test is done")
