"""The event log's iterators: each one ends on its own terms, and a bad argument fails at once."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from hearth import Event, Host, InvalidInput
from tests import helpers

#: Here a brisk operation takes 0.2 s: one that was started is soon done.
make_host = functools.partial(helpers.make_host, tiers=helpers.FAKE_TIERS | {"brisk": {"delay": 0.2}})


async def _collect(events: asyncio.Queue[Event], source: object) -> None:
    async for event in source:  # type: ignore[attr-defined]
        await events.put(event)


async def _both_parked(host: Host) -> None:
    """Until two watchers wait on the bus's change (the moment one leaving could hurt the other)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while sum(s._waiter is not None for s in host._events.fanout._subscribers) < 2:
        assert loop.time() < deadline, "the watchers never waited for the next event"
        await asyncio.sleep(0.001)


async def test_cancelling_one_watcher_leaves_the_others_watching(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        seen: asyncio.Queue[Event] = asyncio.Queue()
        leaving = asyncio.create_task(_collect(asyncio.Queue(), host.watch()))
        staying = asyncio.create_task(_collect(seen, host.watch()))
        await asyncio.sleep(0)  # both are waiting for the first event
        await host.provision("first", tier="solo", driver="fake")
        await seen.get()
        await _both_parked(host)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        later: asyncio.Queue[Event] = asyncio.Queue()
        newcomer = asyncio.create_task(_collect(later, host.watch(after=await host.store.last_seq())))
        await host.provision("second", tier="solo", driver="fake")
        assert (await asyncio.wait_for(later.get(), 10)).slug == "second"
        while (await asyncio.wait_for(seen.get(), 10)).slug != "second":
            pass
        assert not staying.done() and not newcomer.done()
        staying.cancel()
        newcomer.cancel()
        await asyncio.gather(staying, newcomer, return_exceptions=True)


async def test_the_events_of_a_finished_operation_end_even_after_its_last_one(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("done", tier="brisk", driver="fake")
        await op.result()
        every = [event async for event in op.events()]
        assert every[-1].final and every[-1].state == "succeeded"
        assert [event async for event in op.events(after=every[-1].seq)] == []
        assert [event async for event in op.events(after=every[-2].seq)] == every[-1:]


async def test_a_watcher_waiting_when_the_host_closes_ends_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = make_host(tmp_path)
    host.open()
    watcher = asyncio.create_task(_collect(asyncio.Queue(), host.watch()))
    await host.provision("x1", tier="solo", driver="fake")
    await host.close()
    await asyncio.wait_for(watcher, 10)  # ended, without an error
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_bad_arguments_to_the_iterators_fail_before_the_first_event(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput, match="not a workspace slug"):
            host.watch(slug="Bad Slug")
        with pytest.raises(InvalidInput, match="after must be"):
            host.watch(after=-1)
        op = await host.start_provision("y1", tier="solo", driver="fake")
        with pytest.raises(InvalidInput, match="after must be"):
            op.events(after=-5)
        await op.result()


async def test_an_operation_cancelled_as_soon_as_it_started_ends_cancelled_at_once(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("quick", tier="brisk", driver="fake")
        asked = await op.cancel(reason="changed my mind")
        assert asked.state == "cancelled" and asked.cancel_requested == "changed my mind"
        assert (await op.wait(timeout=5)).state == "cancelled"
        kinds = [(e.kind, e.state) for e in await host.store.events(operation=op.id)]
        assert kinds == [("state", "queued"), ("cancel", None), ("state", "cancelled")]
        assert await host.deployments() == []  # it never started: nothing changed
        ref = await host.provision("quick", tier="brisk", driver="fake")  # not busy
        assert ref.last_status == "ready"


async def test_a_failed_operation_nobody_awaits_logs_no_unretrieved_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("bad", tier="failing", driver="fake")
        assert (await op.wait(timeout=10)).state == "failed"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_waiter_learns_that_the_operations_host_died(tmp_path: Path) -> None:
    from hearth import Interrupted
    from tests.helpers import left_by_a_dead_host

    async with make_host(tmp_path) as host:
        await host.provision("orphaned", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(host, record.model_copy(update={"state": "tearing_down"}), "teardown")
        [op] = [o for o in await host.operations(slug="orphaned") if not o.finished]
        with pytest.raises(Interrupted):
            await op.result(timeout=30)
        assert (await host.deployment("orphaned")).state == "ready"  # settled from the backend


async def test_out_of_range_and_mistyped_queries_are_invalid_input(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput):
            await host.operation(2**70)
        with pytest.raises(InvalidInput):
            await host.deployments(state="sleeping")
        with pytest.raises(InvalidInput):
            await host.deployments(driver="Bad!")
        with pytest.raises(InvalidInput):
            await host.deployments(after=5)  # type: ignore[arg-type]


async def test_a_verb_on_a_slug_whose_first_provision_is_queued_is_busy(tmp_path: Path) -> None:
    from hearth import Busy

    async with make_host(tmp_path) as host:
        async with host._core.locks.hold("first", 0.0):  # the provision waits for the slug: queued
            op = await host.start_provision("first", tier="brisk", driver="fake")
            assert (await host.operation(op.id)).state == "queued"
            with pytest.raises(Busy, match=f"operation #{op.id}"):
                await host.start_teardown("first")
        assert (await op.result()) is not None
