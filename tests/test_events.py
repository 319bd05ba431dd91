"""The event log's iterators: each one ends on its own terms, and a bad argument fails at once;
the fan-out: one read of the store per change however many streams, a bounded queue per stream,
and a stream that starts behind handed over to it with nothing lost or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearth import Event, Host, InvalidInput
from hearth._lifecycle._events import QUEUE, labelled
from hearth._settings import load_settings
from hearth._store._base import NewEvent
from hearth_adaptersdk import utc_now
from tests import helpers
from tests.test_settings_states_store import _deployment

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


# --- the fan-out: one reader of the store for every stream -------------------------------------
async def _until_final_of(source: AsyncIterator[Event], slug: str) -> list[Event]:
    """The events of ``source`` until the final event of ``slug``'s operation."""
    seen = []
    async with contextlib.aclosing(source) as events:  # type: ignore[type-var]
        async for event in events:
            seen.append(event)
            if event.final and event.slug == slug:
                break
    return seen


async def _until_message(source: AsyncIterator[Event], message: str) -> None:
    async with contextlib.aclosing(source) as events:  # type: ignore[type-var]
        async for event in events:
            if event.message == message:
                return


async def _progress(host: Host, count: int, slug: str = "noisy") -> None:
    """``count`` progress events of one operation in one write (one batch for the reader)."""
    op = await host.start_provision(slug, tier="brisk", driver="fake")
    await op.result()
    await host.store.add_events(
        [NewEvent(op.id, slug, "provision", "progress", message=f"step {i}") for i in range(count)]
    )


async def test_a_change_is_read_once_for_every_stream_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams, provisions = 40, 4
    async with make_host(tmp_path) as host:
        assert host._core.raw is not None
        raw, read = host._core.raw, 0

        async def events(**query: Any) -> list[Event]:
            nonlocal read
            read += query.get("kind") is None  # the streams' reads; not the cancel requests'
            return await type(raw).events(raw, **query)

        writes = 0

        def written() -> None:
            nonlocal writes
            writes += 1

        monkeypatch.setattr(raw, "events", events)
        host._core.on_written(written)
        last = f"w{provisions - 1}"
        readies = [asyncio.Event() for _ in range(streams)]

        async def watcher(ready: asyncio.Event) -> list[Event]:
            seen = []
            async with contextlib.aclosing(host.watch()) as every:  # type: ignore[type-var]
                async for event in every:
                    seen.append(event)
                    if event.final:
                        ready.set()  # it is live: what follows is what a change costs
                        if event.slug == last:
                            break
            return seen

        watchers = [asyncio.create_task(watcher(ready)) for ready in readies]
        await host.provision("w-first", tier="solo", driver="fake")
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 30)
        read = writes = 0
        for i in range(provisions):
            await host.provision(f"w{i}", tier="solo", driver="fake")
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 30)
    every = [e.seq for e in seen[0]]
    assert all([e.seq for e in s] == every for s in seen) and every == sorted(set(every))
    assert len(every) >= 3 * provisions
    # one read per change, or two (a poll of the store that saw it too), however many streams:
    # each stream reading for itself was ``streams`` times that
    assert read <= 2 * writes + 2, (read, writes)


async def test_a_stream_that_falls_behind_is_dropped_and_watch_reads_on_from_the_store(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        fanout = host._events.fanout
        fanout.limit = 3
        slow = host.watch()
        reading = asyncio.ensure_future(anext(slow))
        await host.provision("x-first", tier="solo", driver="fake")
        first = await reading  # then it reads nothing for a while
        fanout.limit = QUEUE  # for the others
        other = asyncio.create_task(_until_final_of(host.watch(after=first.seq), "x3"))
        probe = asyncio.create_task(_until_message(host.watch(after=first.seq), "step 4"))
        await _progress(host, 5)
        await asyncio.wait_for(probe, 30)  # the reader handed out the 5: the slow one was offered them
        assert fanout.streams == 1  # only ``other``: nothing is held for the slow one
        for i in range(4):
            await host.provision(f"x{i}", tier="solo", driver="fake")
        rest = await asyncio.wait_for(_until_final_of(slow, "x3"), 30)
        await slow.aclose()  # type: ignore[attr-defined]
        written = [e.seq for e in await host.store.events(limit=10_000)]
        assert [first.seq, *(e.seq for e in rest)] == written  # nothing lost, nothing twice
        assert [e.seq for e in await asyncio.wait_for(other, 30)] == written[1:]
        assert host._events.fanout.streams == 0 and host._events.fanout.position is None


async def test_a_bounded_stream_that_falls_behind_ends_and_resumes_from_its_last_event(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        host._events.fanout.limit = 3
        bounded = host.watch_batches()
        reading = asyncio.ensure_future(anext(bounded))
        await host.provision("y-first", tier="solo", driver="fake")
        first = await reading
        await _progress(host, 5)
        before = [*first, *[e async for batch in bounded for e in batch]]  # it ends: it fell behind
        resumed = asyncio.create_task(_until_final_of(host.watch(after=before[-1].seq), "y"))
        await host.provision("y", tier="solo", driver="fake")
        after = await asyncio.wait_for(resumed, 30)
        written = [e.seq for e in await host.store.events(limit=10_000)]
        assert [e.seq for e in before + after] == written


async def test_streams_that_join_while_events_are_written_miss_none_and_repeat_none(
    tmp_path: Path,
) -> None:
    """A stream starting behind the reader reads the store up to the reader's position, then
    takes the reader's events: the hand-over, raced against writes from every side."""
    async with make_host(tmp_path) as host:
        host._events.fanout.limit = 10_000
        keep = asyncio.create_task(_until_final_of(host.watch(), "z7"))  # the reader runs ahead
        joined: list[asyncio.Task[list[Event]]] = []

        async def join_while_writing() -> None:
            for _ in range(30):
                position = await host.store.last_seq()
                for after in (0, max(position - 3, 0), position):
                    joined.append(asyncio.create_task(_until_final_of(host.watch(after=after), "z7")))
                await asyncio.sleep(0)

        async def write() -> None:
            for i in range(8):
                await host.provision(f"z{i}", tier="solo", driver="fake")

        await asyncio.wait_for(asyncio.gather(join_while_writing(), write()), 60)
        written = [e.seq for e in await host.store.events(limit=10_000)]
        assert [e.seq for e in await asyncio.wait_for(keep, 30)] == written
        for task in joined:
            seen = [e.seq for e in await asyncio.wait_for(task, 30)]
            assert seen == written[len(written) - len(seen) :]  # a tail, in order, whole


async def test_an_operations_stream_from_behind_ends_at_its_final_event(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        running = asyncio.create_task(_until_final_of(host.watch(), "later"))  # the reader runs
        done = await host.start_provision("early", tier="brisk", driver="fake")
        await done.result()
        await host.provision("later", tier="solo", driver="fake")
        await asyncio.wait_for(running, 30)
        every = [e async for e in done.events()]  # behind the reader: read from the store
        assert every[-1].final and {e.operation for e in every} == {done.id}
        assert [e async for e in done.events(after=every[-1].seq)] == []


# --- issue 21, 2: every change of a record is an event; an operation's final event is its last --
def _final_is_last(events: list[Event], ident: int) -> Event:
    """Operation ``ident``'s final event, checked to be the only one and its last."""
    mine = [event for event in events if event.operation == ident]
    finals = [event for event in mine if event.final]
    assert len(finals) == 1 and mine[-1] == finals[0], mine
    return finals[0]


async def _all(source: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in source]


@pytest.mark.parametrize("settle", ["access", "reconcile"])
async def test_a_dead_host_s_operation_ends_with_the_record_its_settle_left(
    tmp_path: Path, settle: str
) -> None:
    """A watcher that stops at the final event (``op.events()``) sees the record as settled,
    the settle's note before it, and a ``workspace`` event with the record it left."""
    async with make_host(tmp_path) as host:
        await host.provision("rho", tier="solo", driver="fake")
        record = await host.deployment("rho")
        await helpers.left_by_a_dead_host(
            host, record.model_copy(update={"state": "provisioning"}), "provision"
        )
        [dead] = await host.store.operations(slug="rho", active=True)
        watched = asyncio.create_task(_all((await host.operation(dead.id)).events()))
        if settle == "access":
            assert (await host.deployment("rho")).state == "ready"
        else:
            assert (await host.reconcile()).resolved == [("rho", "provisioning", "ready")]
        seen = await asyncio.wait_for(watched, 10)
        settled = await host.deployment("rho")
        assert (seen[-1].state, seen[-1].record_state) == ("interrupted", "ready"), seen[-1]
        events = await host.store.events(slug="rho", limit=10_000)
        final = _final_is_last(events, dead.id)
        *_, note, changed, _ = [event for event in events if event.operation == dead.id]
        assert note.kind == "log" and "the record went from provisioning to ready" in (note.message or "")
        assert (changed.kind, changed.record, changed.verb) == ("workspace", settled, "provision")
        assert final.generation == changed.generation == settled.generation == 1


async def test_every_change_of_a_record_is_a_workspace_event_of_its_generation(tmp_path: Path) -> None:
    """A verb's outcome, forget, adopt and a reconcile's ghost each write the record's event
    (with the operation that caused it, if any); every event says which life of the slug."""
    async with make_host(tmp_path) as host:
        await host.provision("sig", tier="solo", driver="fake")
        await host.teardown("sig")
        await host.provision("sig", tier="solo", driver="fake", reuse=True)
        await host.forget("sig")
        await host.adopt("sig", driver="fake", tier="solo")
        (tmp_path / "home" / "data" / "fake" / "deployments" / "sig.json").unlink()
        assert (await host.reconcile()).ghosts == ["sig"]
        events = await host.store.events(slug="sig", limit=10_000)
        changes = [(e.generation, e.record_state, e.verb) for e in events if e.kind == "workspace"]
        assert changes == [
            (1, "provisioning", "provision"),
            (1, "ready", "provision"),
            (1, "tearing_down", "teardown"),
            (1, "tier_torn_down", "teardown"),
            (2, "provisioning", "provision"),  # the reused slug's next life
            (2, "ready", "provision"),
            (2, None, None),  # forgotten: no record left
            (3, "ready", None),  # adopted
            (3, "failed", None),  # a ghost, found by reconcile
        ]
        assert events[-1].record == await host.deployment("sig")
        assert all(event.generation is not None for event in events)
        for op in await host.store.operations(slug="sig"):
            mine = [event for event in events if event.operation == op.id]
            if op.verb in ("provision", "teardown"):  # its outcome's record, then its end
                final = _final_is_last(events, op.id)
                assert mine[-2].kind == "workspace" and mine[-2].record_state == final.record_state


async def test_progress_events_are_kept_keep_days_after_their_operation_finished(tmp_path: Path) -> None:
    """``[events] keep_days`` (default 30; 0 keeps everything): ``Host.prune_events`` (the
    daemon's hourly upkeep) deletes the progress events of operations finished longer ago,
    and keeps their state events, so every operation still says how it ended."""
    settings = tmp_path / "project" / ".hearth" / "hearth.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text("[events]\nkeep_days = 0\n")
    async with helpers.make_host(tmp_path) as host:
        assert host.settings.events.keep_days == 0
        op = await host.start_provision("kappa", tier="solo", driver="fake")
        await op.result()
        progress = [e for e in await host.store.events(operation=op.id) if e.kind == "progress"]
        assert progress, "the fake reports progress"
        assert await host.prune_events() == 0
        settings.write_text("[events]\nkeep_days = 0.000000001\n")  # about 86 microseconds
        assert host.reload_settings().events.keep_days == 0.000000001
        assert await host.prune_events() == len(progress)
        left = await host.store.events(operation=op.id)
        assert left and not [e for e in left if e.kind == "progress"]
        assert left[-1].final and left[-1].state == "succeeded"
    for wrong in ("-1", '"30"', "true"):
        settings.write_text(f"[events]\nkeep_days = {wrong}\n")
        with pytest.raises(InvalidInput, match=r"events\.keep_days"):
            load_settings(tmp_path / "project")
    settings.write_text("[events]\nkeep = 3\n")
    with pytest.raises(InvalidInput, match=r"events\.keep: unknown key; choose one of keep_days"):
        load_settings(tmp_path / "project")


def _event(seq: int, kind: str, operation: int = 7, **fields: Any) -> Event:
    return Event.model_validate(
        {"seq": seq, "at": utc_now(), "operation": operation, "slug": "nu", "verb": "provision", "kind": kind}
        | fields
    )


async def _filtered(host: Host, labels: dict[str, str], *batches: list[Event]) -> list[int]:
    async def source() -> AsyncIterator[list[Event]]:
        for batch in batches:
            yield batch

    return [e.seq for batch in [b async for b in labelled(source(), labels, host._core)] for e in batch]


async def test_a_label_filter_holds_a_first_provision_s_events_until_its_record_names_its_labels(
    tmp_path: Path,
) -> None:
    """A first provision's ``queued`` comes before any record of the slug: a label-filtered
    stream that reads it live holds it until the first ``workspace`` event says the labels,
    then yields it (or drops it, with the rest of an operation that never made a record); and
    an operation it followed is followed to its final event, past its record's removal."""
    async with helpers.make_host(tmp_path) as host:
        red = _deployment("nu").model_copy(update={"labels": {"team": "red"}, "state": "provisioning"})
        lives = [
            [_event(1, "state", state="queued")],  # read live, before its record exists
            [_event(2, "workspace", record=red.model_dump(mode="json")), _event(3, "state", state="running")],
            [_event(4, "workspace", record=None), _event(5, "state", state="cancelled")],
        ]
        assert await _filtered(host, {"team": "red"}, *lives) == [1, 2, 3, 4, 5]
        assert await _filtered(host, {"team": "blue"}, *lives) == []
        never = [[_event(1, "state", state="queued")], [_event(2, "state", state="cancelled")]]
        later = [
            [_event(3, "state", operation=8, state="queued")],
            [_event(4, "workspace", operation=8, record=red.model_dump(mode="json"))],
        ]
        assert await _filtered(host, {"team": "red"}, *never, *later) == [3, 4]


async def test_a_label_filtered_watch_sees_a_first_provision_from_its_first_event(tmp_path: Path) -> None:
    async with helpers.make_host(tmp_path) as host:
        seen: list[Event] = []
        started = asyncio.Event()

        async def watching() -> None:
            events = host.watch(labels={"run": "one"})
            started.set()
            async for event in events:
                seen.append(event)
                if event.final:
                    return

        task = asyncio.ensure_future(watching())
        await asyncio.wait_for(started.wait(), 30)
        op = await host.start_provision("omicron", tier="solo", driver="fake", labels={"run": "one"})
        await asyncio.wait_for(task, 30)
        assert [e.operation for e in seen] == [op.id] * len(seen)
        assert (seen[0].kind, seen[0].state) == ("state", "queued") and seen[-1].state == "succeeded"
