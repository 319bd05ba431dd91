"""One contract for every ``Store``: the same tests run on SQLite and on PostgreSQL (issue 13).

The PostgreSQL cases run in a throwaway cluster scripts/test starts (``pg_url``: a schema of
the test's own); under CI they run, elsewhere they skip when no cluster can be had.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from hearth._errors import StoreError
from hearth._store._base import NewEvent, NewOperation, Store
from hearth._store._postgres import PG_MIGRATIONS, PostgresStore
from hearth._store._records import MIGRATIONS, SCHEMA_VERSION
from hearth._store._sqlite import SQLiteStore
from hearth_adaptersdk import utc_now
from tests.test_settings_states_store import _deployment

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the same store each time it is called (a reopen sees what was written)."""
    if request.param == "sqlite":
        path = tmp_path / "hearth.db"

        async def open_sqlite() -> Store:
            store = SQLiteStore(path)
            await store.open()
            return store

        return open_sqlite
    url: str = request.getfixturevalue("pg_url")

    async def open_postgres() -> Store:
        store = PostgresStore(url)
        await store.open()
        return store

    return open_postgres


async def test_the_store_keeps_deployments_operations_and_events_across_reopen(opener: Opener) -> None:
    store = await opener()
    operation, how = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a", key="k1"))
    assert how == "created" and operation.state == "queued"
    await store.begin(operation.id, _deployment(state="provisioning"))
    await store.add_events(
        [NewEvent(operation.id, "alpha", "provision", "progress", "info", "creating", 0.5)]
    )
    await store.add_events(
        [NewEvent(operation.id, "alpha", "provision", "progress", "info", "named", None, backend_id="c-1")]
    )
    assert (await store.get("alpha")).backend_id == "c-1"  # type: ignore[union-attr]
    await store.end(operation.id, "failed", {"kind": "backend_failure"}, deployment=_deployment())
    await store.close()
    again = await opener()
    found = await again.get("alpha")
    assert found is not None and found.ref is not None
    assert (found.slug, found.state, found.ref.endpoint) == ("alpha", "ready", "fake://alpha")
    [op] = await again.operations(slug="alpha", with_log=True)
    assert (op.verb, op.state, op.key, op.owner) == ("provision", "failed", "k1", "me:1:a")
    assert op.error == {"kind": "backend_failure"}
    assert [(line.message, line.fraction) for line in op.log] == [("creating", 0.5), ("named", None)]
    events = await again.events()
    assert [(e.kind, e.state, e.record_state) for e in events] == [
        ("state", "queued", None),
        ("workspace", None, "provisioning"),  # each change of the record, before the state it led to
        ("state", "running", "provisioning"),
        ("progress", None, None),
        ("progress", None, None),
        ("workspace", None, "ready"),
        ("state", "failed", "ready"),
    ]
    assert {(e.operation, e.generation) for e in events} == {(op.id, 1)}  # every event: its life
    assert events[1].record is not None and events[1].record.state == "provisioning"
    assert events[5].record == found  # the record as it then was
    assert [e.seq for e in events] == sorted(e.seq for e in events) and events[-1].record_state == "ready"
    assert await again.last_seq() == events[-1].seq
    assert [e.seq for e in await again.events(after=events[2].seq, limit=2)] == [e.seq for e in events[3:5]]
    assert [e.kind for e in await again.events(operation=op.id, kind="progress")] == ["progress"] * 2
    assert (await again.keyed("k1")) == op.model_copy(update={"log": ()})
    assert await again.last_operation("alpha", 1) == op.model_copy(update={"log": ()})
    assert await again.drivers() == ["fake"]
    record, live = await again.snapshot("alpha")
    assert record == found and live == []
    await again.close()


async def test_an_operation_is_found_by_key_then_by_the_slug_it_runs_on(opener: Opener) -> None:
    store = await opener()
    first, how = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a", key="k"))
    assert how == "created"
    assert await store.create_operation(NewOperation("beta", 1, "provision", "me:1:a", key="k")) == (
        first,
        "key",
    )
    assert await store.create_operation(NewOperation("alpha", 1, "teardown", "me:1:a")) == (first, "active")
    assert (await store.snapshot("alpha"))[1] == [first]
    assert await store.end(first.id, "cancelled", {"kind": "cancelled"})
    assert not await store.end(first.id, "failed")  # a finished operation is not finished again
    second, how = await store.create_operation(NewOperation("alpha", 1, "teardown", "me:1:a"))
    assert how == "created" and second.id != first.id
    asked = await store.request_cancel(second.id, "the user asked")
    assert asked is not None and asked.cancel_requested == "the user asked"
    [cancel] = await store.events(kind="cancel")
    assert (cancel.operation, cancel.message) == (second.id, "the user asked")
    assert await store.request_cancel(999, "nobody") is None
    done, how = await store.create_operation(
        NewOperation("gamma", 1, "teardown", "me:1:a", done=("succeeded", None))
    )
    assert how == "created" and done.finished and done.state == "succeeded"
    assert [op.id for op in await store.operations(active=True)] == [second.id]
    assert [op.id for op in await store.operations(after=first.id, limit=1)] == [second.id]
    await store.close()


async def test_an_operation_keeps_its_actor_and_on_behalf_of_and_is_found_by_actor(opener: Opener) -> None:
    store = await opener()
    mine, _ = await store.create_operation(
        NewOperation("alpha", 1, "provision", "me:1:a", actor="token:console", on_behalf_of="ann@example.com")
    )
    theirs, _ = await store.create_operation(
        NewOperation("beta", 1, "provision", "me:1:a", actor="unix:1000(bob)")
    )
    unnamed, _ = await store.create_operation(NewOperation("gamma", 1, "provision", "me:1:a"))
    await store.add_events([NewEvent(mine.id, "alpha", "provision", "progress", "info", "working")])
    await store.close()
    store = await opener()  # read back after a reopen
    again = await store.operation(mine.id)
    assert again is not None and (again.actor, again.on_behalf_of) == ("token:console", "ann@example.com")
    assert [op.id for op in await store.operations(actor="token:console")] == [mine.id]
    assert [op.id for op in await store.operations(actor="unix:1000(bob)")] == [theirs.id]
    assert await store.operations(actor="token:nobody") == []
    assert [op.actor for op in await store.operations()] == ["token:console", "unix:1000(bob)", None]
    assert unnamed.actor is None
    [progress] = await store.events(operation=mine.id, kind="progress")  # its events carry them too
    assert (progress.actor, progress.on_behalf_of) == ("token:console", "ann@example.com")
    await store.close()


async def test_a_finished_operation_gives_its_key_only_to_the_operation_that_retakes_it(
    opener: Opener,
) -> None:
    store = await opener()
    first, _ = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a", key="k"))
    retry = NewOperation("alpha", 1, "provision", "me:1:a", key="k", retakes=first.id)
    assert await store.create_operation(retry) == (first, "key")  # still queued: it keeps its key
    assert await store.end(first.id, "failed", {"kind": "store_error", "changed_nothing": True})
    busy, _ = await store.create_operation(NewOperation("alpha", 1, "teardown", "me:1:a"))
    blocked, how = await store.create_operation(retry)
    assert (blocked.id, how) == (busy.id, "active")  # the slug is busy: nothing recorded, key kept
    assert (await store.keyed("k")) == (await store.operation(first.id))
    assert await store.end(busy.id, "succeeded")
    again, how = await store.create_operation(retry)
    assert how == "created" and again.key == "k" and again.id not in {first.id, busy.id}
    released = await store.operation(first.id)
    assert released is not None and released.key is None and released.state == "failed"
    assert (await store.keyed("k")) == again
    late = await store.create_operation(retry)  # a second retry of the same key joins the first
    assert late == (again, "key")
    await store.close()


async def test_a_key_that_joined_an_operation_is_bound_to_it_for_good(opener: Opener) -> None:
    store = await opener()
    first, _ = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a", key="A"))
    assert await store.keyed("B") is None
    assert await store.bind_key("B", first.id) == first
    assert await store.keyed("B") == first and await store.keyed("A") == first
    other, _ = await store.create_operation(NewOperation("beta", 1, "provision", "me:1:a", key="C"))
    assert await store.bind_key("B", other.id) == first  # bound once: the first binding answers
    assert await store.bind_key("C", first.id) == other  # a key that started an operation too
    assert await store.end(first.id, "cancelled", {"kind": "cancelled"})
    replay = NewOperation("alpha", 1, "provision", "me:1:a", key="B")
    assert await store.create_operation(replay) == (await store.operation(first.id), "key")
    # released to the operation that retakes it (its start failed on a write), and to it only
    assert await store.end(other.id, "failed", {"kind": "store_error", "changed_nothing": True})
    assert await store.bind_key("D", other.id) == await store.operation(other.id)
    retry = NewOperation("beta", 1, "provision", "me:1:a", key="D", retakes=other.id)
    again, how = await store.create_operation(retry)
    assert how == "created" and again.key == "D" and await store.keyed("D") == again
    assert await store.bind_key("C", again.id, retakes=other.id) == again
    kept = await store.operation(other.id)
    assert kept is not None and kept.key is None and await store.keyed("C") == again
    await store.close()


async def test_an_operation_read_by_id_may_carry_its_log(opener: Opener) -> None:
    store = await opener()
    op, _ = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a"))
    await store.add_events([NewEvent(op.id, "alpha", "provision", "progress", "info", "step 1", 0.5)])
    plain = await store.operation(op.id)
    logged = await store.operation(op.id, with_log=True)
    assert plain is not None and plain.log == ()
    assert logged is not None and [(line.message, line.fraction) for line in logged.log] == [("step 1", 0.5)]
    await store.close()


async def test_progress_of_operations_finished_before_a_moment_is_pruned_and_the_rest_kept(
    opener: Opener,
) -> None:
    """``prune_progress(before)`` deletes the ``progress`` events of operations that finished
    before ``before`` and nothing else: their state and log events, and the progress of
    operations still running or finished later, stay; an operation read by id then carries its
    final event's ``seq`` as before."""
    store = await opener()
    done, _ = await store.create_operation(NewOperation("alpha", 1, "provision", "me:1:a"))
    await store.begin(done.id, _deployment(state="provisioning"))
    await store.add_events(
        [
            NewEvent(done.id, "alpha", "provision", "progress", "info", "step 1", 0.5),
            NewEvent(done.id, "alpha", "provision", "log", "error", "the backend said so"),
        ]
    )
    await store.end(done.id, "succeeded", deployment=_deployment(state="ready"))
    running, _ = await store.create_operation(NewOperation("beta", 1, "provision", "me:1:a"))
    await store.begin(running.id, _deployment("beta", state="provisioning"))
    await store.add_events([NewEvent(running.id, "beta", "provision", "progress", "info", "step 1", 0.5)])
    before = await store.events(limit=10_000)
    assert await store.prune_progress(utc_now() - timedelta(days=1)) == 0  # finished too recently
    cut = utc_now() + timedelta(seconds=1)
    assert await store.prune_progress(cut) == 1
    after = await store.events(limit=10_000)
    gone = [e for e in before if e not in after]
    assert [(e.operation, e.kind) for e in gone] == [(done.id, "progress")], gone
    assert await store.prune_progress(cut) == 0
    kept = await store.operation(done.id, with_log=True)
    assert kept is not None and [line.message for line in kept.log] == ["the backend said so"]
    assert kept.final_seq == max(e.seq for e in after if e.operation == done.id and e.final)
    await store.close()


async def test_archiving_frees_the_slug_and_keeps_the_old_record(opener: Opener) -> None:
    store = await opener()
    await store.save(_deployment(state="tier_torn_down"))
    await store.archive("alpha")
    assert await store.get("alpha") is None
    assert await store.next_generation("alpha") == 2
    await store.save(_deployment(generation=2))
    assert [d.generation for d in await store.deployments()] == [2]
    operation, _ = await store.create_operation(NewOperation("alpha", 3, "provision", "me:1:a"))
    await store.begin(operation.id, _deployment(state="provisioning", generation=3), archive_first=True)
    assert (await store.get("alpha")).generation == 3  # type: ignore[union-attr]
    await store.end(
        operation.id, "failed", deployment=_deployment(state="failed", generation=3), archive=True
    )
    assert await store.get("alpha") is None and await store.next_generation("alpha") == 4
    await store.close()


async def test_deployments_page_and_filter(opener: Opener) -> None:
    store = await opener()
    for slug, state in (("a1", "ready"), ("a2", "failed"), ("a3", "tier_torn_down"), ("a4", "ready")):
        await store.save(_deployment(slug, state))
    assert [d.slug for d in await store.deployments(include_torn_down=False)] == ["a1", "a2", "a4"]
    assert [d.slug for d in await store.deployments(state="ready")] == ["a1", "a4"]
    assert [d.slug for d in await store.deployments(limit=2, after="a1")] == ["a2", "a3"]
    assert [d.slug for d in await store.deployments(driver="other")] == []
    await store.close()


async def test_deployment_counts_group_the_current_records_by_state_and_driver(opener: Opener) -> None:
    store = await opener()
    assert await store.deployment_counts() == []
    for slug, state in (("a1", "ready"), ("a2", "failed"), ("a3", "ready"), ("a4", "tier_torn_down")):
        await store.save(_deployment(slug, state))
    await store.save(_deployment("b1", "ready").model_copy(update={"driver": "docker"}))
    await store.archive("a4")  # an archived generation is no current record
    await store.save(_deployment("a4", "provisioning", generation=2))
    assert await store.deployment_counts() == [
        ("failed", "fake", 1),
        ("provisioning", "fake", 1),
        ("ready", "docker", 1),
        ("ready", "fake", 2),
    ]
    await store.close()


async def test_a_stale_holder_cannot_write_over_what_another_host_settled(opener: Opener) -> None:
    """The fence: once another host ended an operation (its owner's lease ran out), the
    owner's late ``begin`` or ``end`` writes nothing, the record stays as the settling left it."""
    store = await opener()
    await store.save(_deployment(state="ready"))
    queued, _ = await store.create_operation(NewOperation("alpha", 1, "upgrade", "slow:1:a", tier="team"))
    assert await store.end(queued.id, "interrupted", {"kind": "interrupted"})  # the taker
    assert not await store.begin(queued.id, _deployment(state="upgrading"))
    assert (await store.get("alpha")).state == "ready"  # type: ignore[union-attr]
    running, _ = await store.create_operation(NewOperation("alpha", 1, "teardown", "slow:1:a"))
    assert await store.begin(running.id, _deployment(state="tearing_down"))
    settled = _deployment(state="ready").model_copy(update={"reason": "settled from status"})
    assert await store.end(running.id, "interrupted", {"kind": "interrupted"}, deployment=settled)
    stale = _deployment(state="tier_torn_down")
    assert not await store.end(running.id, "succeeded", deployment=stale, archive=True)
    record = await store.get("alpha")
    assert record is not None and (record.state, record.reason) == ("ready", "settled from status")
    assert (await store.operation(running.id)).state == "interrupted"  # type: ignore[union-attr]
    assert [e.state for e in await store.events(operation=running.id, kind="state")] == [
        "queued",
        "running",
        "interrupted",
    ]
    await store.close()


async def test_a_settle_from_a_stale_read_writes_nothing(opener: Opener) -> None:
    """``save(replaces=)``: a host that read a record, then lost its slug lock (a partition),
    cannot write its settling over what another host wrote since."""
    store = await opener()
    read = _deployment(state="provisioning")
    await store.save(read)
    newer = read.model_copy(
        update={"state": "failed", "updated_at": utc_now(), "reason": "settled elsewhere"}
    )
    assert await store.save(newer, replaces=read)
    stale = read.model_copy(update={"state": "ready", "updated_at": utc_now()})
    assert not await store.save(stale, replaces=read)
    record = await store.get("alpha")
    assert record is not None and (record.state, record.reason) == ("failed", "settled elsewhere")
    await store.close()


async def test_concurrent_starts_on_one_slug_make_one_operation(opener: Opener) -> None:
    """Two stores (two connections, or two pools) racing: one operation; the rest find it."""
    one, two = await opener(), await opener()
    outcomes = await asyncio.gather(
        *(
            store.create_operation(NewOperation("race", 1, "provision", f"me:{n}:a"))
            for n, store in enumerate([one, two] * 10)
        )
    )
    assert [how for _, how in outcomes].count("created") == 1
    assert len({op.id for op, _ in outcomes}) == 1
    await one.close()
    await two.close()


async def test_a_reader_never_sees_an_event_appear_behind_its_cursor(opener: Opener) -> None:
    """Events get their seq in commit order: a watcher that polls ``after=cursor`` while many
    writers commit sees every event once, none skipped."""
    writers = [await opener() for _ in range(3)]
    reader = await opener()
    operation, _ = await writers[0].create_operation(NewOperation("alpha", 1, "provision", "me:1:a"))
    seen: list[int] = []
    finished = asyncio.Event()

    async def watch() -> None:
        cursor = 0
        while True:
            last_round = finished.is_set()
            for event in await reader.events(after=cursor):
                seen.append(event.seq)
                cursor = event.seq
            if last_round:
                return
            await asyncio.sleep(0)

    async def write(store: Store, n: int) -> None:
        for i in range(30):
            await store.add_events(
                [NewEvent(operation.id, "alpha", "provision", "progress", message=f"{n}.{i}")]
            )

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(write(store, n) for n, store in enumerate(writers)))
    finished.set()
    await watcher
    every = [event.seq for event in await reader.events(limit=1000)]
    assert seen == every and len(every) == 1 + 90
    for store in [*writers, reader]:
        await store.close()


async def test_an_operation_ended_with_its_record_transient_ends_with_the_settle(opener: Opener) -> None:
    """``_states.final_event_waits``: a begun operation ended with no record to write (its host
    died) gets its final event from the write that settles its record: after the settle's note
    and the record's ``workspace`` event, with the settled state; later changes are the record's."""
    store = await opener()
    operation, _ = await store.create_operation(NewOperation("alpha", 1, "provision", "gone:1:a"))
    await store.begin(operation.id, _deployment(state="provisioning"))
    died = {"kind": "interrupted", "message": "its host died"}
    assert await store.end(operation.id, "interrupted", died)
    assert not [event for event in await store.events(operation=operation.id) if event.final]
    assert (await store.operation(operation.id)).state == "interrupted"  # type: ignore[union-attr]
    before = await store.get("alpha")
    assert await store.save(_deployment(state="failed"), replaces=before, note="settled by me")
    events = await store.events(operation=operation.id)
    assert [(e.kind, e.state, e.record_state, e.message) for e in events[-3:]] == [
        ("log", None, None, "settled by me"),
        ("workspace", None, "failed", None),
        ("state", "interrupted", "failed", "its host died"),
    ]
    assert events[-1].error == died and {e.generation for e in events} == {1}
    assert events[-2].record == await store.get("alpha")
    await store.archive("alpha")
    [forgotten] = await store.events(after=events[-1].seq)
    assert (forgotten.kind, forgotten.operation, forgotten.record, forgotten.generation) == (
        "workspace",
        None,
        None,
        1,
    )
    await store.close()


# --- PostgreSQL alone -----------------------------------------------------------------------------
def test_both_stores_build_the_same_schema(tmp_path: Path, pg_url: str) -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION

    async def both() -> None:
        await (await _sqlite(tmp_path / "hearth.db")).close()
        await (await _postgres(pg_url)).close()

    asyncio.run(both())
    lite = sqlite3.connect(tmp_path / "hearth.db")
    for table in ("deployments", "operations", "events"):
        sqlite_columns = {row[1] for row in lite.execute(f"PRAGMA table_info({table})")}
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = current_schema()",
                (table,),
            ).fetchall()
        assert {row[0] for row in rows} == sqlite_columns, table


async def _sqlite(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


def _pg_schema_at(conn: psycopg.Connection[Any], version: int) -> None:
    """The tables as the PostgreSQL store had them at schema ``version``: its first migrations."""
    conn.execute("CREATE TABLE hearth_schema (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO hearth_schema VALUES (%s)", (version,))
    for script in PG_MIGRATIONS[:version]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement.encode())


async def _postgres(url: str) -> PostgresStore:
    store = PostgresStore(url)
    await store.open()
    return store


async def test_a_version_2_postgresql_store_is_migrated_with_its_operations_and_logs(pg_url: str) -> None:
    now = utc_now().isoformat()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _pg_schema_at(conn, 2)
        conn.execute(
            "INSERT INTO operations (slug, generation, verb, started_at, ended_at, outcome) "
            "VALUES ('old', 1, 'provision', %s, %s, 'succeeded')",
            (now, now),
        )
        conn.execute(
            "INSERT INTO operation_log (operation, at, level, message) VALUES (1, %s, 'info', 'made')", (now,)
        )
    store = await _postgres(pg_url)
    [op] = await store.operations(slug="old", with_log=True)
    assert (op.verb, op.state, op.started_at is not None) == ("provision", "succeeded", True)
    assert [line.message for line in op.log] == ["made"]
    new, _ = await store.create_operation(NewOperation("old", 1, "teardown", "me:1:a"))
    assert new.id > op.id
    await store.close()


async def test_a_postgresql_store_from_a_newer_hearth_is_refused(pg_url: str) -> None:
    await (await _postgres(pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE hearth_schema SET version = 99")
    with pytest.raises(StoreError, match="newer than this hearth"):
        await _postgres(pg_url)


async def test_hosts_opening_a_new_database_together_migrate_it_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(_postgres(pg_url) for _ in range(4)))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM hearth_schema").fetchall() == [(SCHEMA_VERSION,)]
    for store in stores:
        await store.close()


async def test_an_unreachable_database_is_a_store_error_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://hearth:s3cret-pass@/hearth?host={tmp_path}"  # no server listens there
    store = PostgresStore(url, connect_timeout=2)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert "s3cret-pass" not in caught.value.message and "***" in caught.value.message
    assert "s3cret-pass" not in repr(store)
    with pytest.raises(StoreError, match="is not a postgresql:// URL"):
        PostgresStore("mysql://nope")


async def test_a_database_that_does_not_exist_is_said_at_once(pg_cluster: str) -> None:
    url = pg_cluster.replace("/postgres?", "/no_such_database?")
    with pytest.raises(StoreError, match='database "no_such_database" does not exist'):
        await PostgresStore(url, connect_timeout=30).open()


# --- the CLI and the host on PostgreSQL -----------------------------------------------------------
def _hearth(venv_bin: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_bin / "hearth"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.subprocess
def test_the_cli_keeps_its_records_in_postgresql(pg_url: str, venv_bin: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("HEARTH_HOME", "HEARTH_URL", "HEARTH_STORE"):
        env.pop(name, None)
    where = ["--home", str(tmp_path / "home"), "--project", str(tmp_path)]
    made = _hearth(
        venv_bin, "provision", "pg1", "--tier", "solo", "--driver", "fake", "--store", pg_url, *where, env=env
    )
    assert made.returncode == 0, made.stderr
    # another home, the same database: the record is there (HEARTH_STORE names it)
    other = ["--home", str(tmp_path / "other"), "--project", str(tmp_path)]
    listed = _hearth(venv_bin, "ls", "--json", *other, env={**env, "HEARTH_STORE": pg_url})
    assert [ref["workspace_slug"] for ref in json.loads(listed.stdout)] == ["pg1"], listed.stderr
    # the fake driver keeps its backend in the home's data folder: ask from the first home
    status = _hearth(venv_bin, "status", "pg1", *where, env={**env, "HEARTH_STORE": pg_url})
    assert status.returncode == 0 and status.stdout.startswith("pg1: ready"), status.stderr
    assert not (tmp_path / "other" / "hearth.db").exists()  # nothing went to SQLite
    gone = _hearth(venv_bin, "teardown", "pg1", "--store", pg_url, *where, env=env)
    assert gone.returncode == 0, gone.stderr
    logs = _hearth(venv_bin, "logs", "pg1", "--json", "--store", pg_url, *other, env=env)
    assert [op["verb"] for op in json.loads(logs.stdout)] == ["provision", "teardown"]
    secret = _hearth(venv_bin, "ls", "--store", "postgresql://me:pw@localhost/db", *where, env=env)
    assert secret.returncode == 2 and "holds a password" in secret.stderr and "pw@" not in secret.stderr
    wrong = _hearth(venv_bin, "ls", "--store", "mysql://db", *where, env=env)
    assert wrong.returncode == 2 and "not a store URL" in wrong.stderr


async def test_hosts_sharing_postgresql_know_each_other_alive_by_their_leases(
    pg_url: str, tmp_path: Path
) -> None:
    from hearth import Busy, Host
    from hearth_adapter_fake import FakeDriver
    from hearth_adaptersdk import MemoryConnection

    driver = FakeDriver()
    host = Host(
        project_dir=tmp_path,
        home=tmp_path / "home",
        store_url=pg_url,
        in_process={"fake": lambda: MemoryConnection(driver)},
    )
    async with host:
        assert host.shared_store
        await host.provision("alpha", tier="solo", driver="fake")
        store = cast(PostgresStore, host.store)
        assert await store.lease_alive(host.owner)
        # a host elsewhere (another home or machine) runs an upgrade of alpha, and lives
        await store.renew_lease("far:1:aaaa", 30)
        record = await host.deployment("alpha")
        operation, _ = await store.create_operation(
            NewOperation("alpha", 1, "upgrade", "far:1:aaaa", tier="team")
        )
        await store.begin(operation.id, record.model_copy(update={"state": "upgrading"}))
        with pytest.raises(Busy):
            await host.start_teardown("alpha")
        assert (await host.operation(operation.id)).state == "running"
        # it stops renewing: past its lease, the next access settles what it left
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE owners SET expires_at = now() - interval '1 second' WHERE owner = 'far:1:aaaa'"
            )
        report = await host.status("alpha")
        assert report.state == "ready"
        assert (await host.operation(operation.id)).state == "interrupted"
        assert (await host.deployment("alpha")).state == "ready"
        owner = host.owner
    with psycopg.connect(pg_url) as conn:  # a host that closed gave its lease up
        assert conn.execute("SELECT owner FROM owners WHERE owner = %s", (owner,)).fetchall() == []


async def test_slug_locks_hold_across_hosts_name_their_holder_and_die_with_it(pg_url: str) -> None:
    from hearth import SlugLocked
    from hearth._store._postgres import PgSlugLocks

    first, second = PgSlugLocks(pg_url, "alpha-host:111:aaaa"), PgSlugLocks(pg_url, "beta-host:222:bbbb")
    async with first.hold("alpha", 0):
        with pytest.raises(SlugLocked) as caught:
            async with second.hold("alpha", 0):
                pass
        assert "held by alpha-host:111:aaaa: host alpha-host, pid 111" in caught.value.message
        async with second.hold("beta", 0):  # another slug is free
            pass
        waiting = asyncio.ensure_future(_take(second, "alpha", 10.0))
        await asyncio.sleep(0)
        assert not waiting.done()
    assert await waiting == "taken"  # released: the waiter gets it
    held = first.hold("gamma", 0)
    await held.__aenter__()
    await first.close()  # the holder's session ends (as when its host dies): the lock goes with it
    assert await _take(second, "gamma", 10.0) == "taken"
    await second.close()


async def _take(locks: object, slug: str, timeout: float) -> str:
    from hearth._store._postgres import PgSlugLocks

    assert isinstance(locks, PgSlugLocks)
    async with locks.hold(slug, timeout):
        return "taken"


async def test_a_host_watching_postgresql_sees_another_hosts_events(pg_url: str, tmp_path: Path) -> None:
    from hearth import Host
    from hearth_adapter_fake import FakeDriver
    from hearth_adaptersdk import MemoryConnection

    driver = FakeDriver()

    def host(home: str) -> Host:
        return Host(
            project_dir=tmp_path,
            home=tmp_path / home,
            store_url=pg_url,
            in_process={"fake": lambda: MemoryConnection(driver)},
        )

    async with host("one") as one, host("two") as two:
        watched: list[str] = []

        async def watch() -> None:
            async for event in two.watch(slug="omega"):
                if event.kind == "state":
                    watched.append(str(event.state))
                    if event.final:
                        return

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)
        await one.provision("omega", tier="solo", driver="fake")
        await asyncio.wait_for(watcher, 30)
        assert watched == ["queued", "running", "succeeded"]


@pytest.mark.subprocess
def test_a_daemon_keeps_its_records_in_postgresql(pg_url: str, venv_bin: Path, tmp_path: Path) -> None:
    from tests.test_serve import daemon, short_dir

    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("HEARTH_HOME", "HEARTH_URL", "HEARTH_STORE"):
        env.pop(name, None)
    with short_dir() as home, daemon((home, project), venv_bin, "--store", pg_url) as served:
        served.wait_for("serving")
        where = ["--home", str(home), "--project", str(project), "-v"]
        made = _hearth(venv_bin, "provision", "rho", "--tier", "solo", "--driver", "fake", *where, env=env)
        assert made.returncode == 0 and "using the daemon" in made.stderr, made.stderr
        assert not (home / "hearth.db").exists()
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT slug, state FROM deployments WHERE archived = 0").fetchall()
        assert rows == [("rho", "ready")]
        assert served.stop() == 0


async def test_labels_are_kept_filtered_and_carried_by_the_workspace_event(opener: Opener) -> None:
    store = await opener()
    team_a = {"team": "a", "example.com/owner": "ann"}
    await store.save(_deployment("a1").model_copy(update={"labels": team_a}))
    await store.save(_deployment("a2").model_copy(update={"labels": {"team": "b", "tier": ""}}))
    await store.save(_deployment("a3").model_copy(update={"labels": {"team": "ab"}}))
    await store.save(_deployment("a4"))
    await store.close()
    store = await opener()  # a reopen reads them back
    assert (await store.get("a1")).labels == team_a  # type: ignore[union-attr]
    assert (await store.get("a4")).labels == {}  # type: ignore[union-attr]
    assert [d.slug for d in await store.deployments(labels={"team": "a"})] == ["a1"]
    assert [d.slug for d in await store.deployments(labels={"team": "b", "tier": ""})] == ["a2"]
    owned = await store.deployments(labels={"team": "a", "example.com/owner": "ann"})
    assert [d.slug for d in owned] == ["a1"]
    assert await store.deployments(labels={"team": "a", "example.com/owner": "bob"}) == []
    assert await store.deployments(labels={"Team": "a"}) == []  # case counts
    assert [d.slug for d in await store.deployments(labels={"team": "ab"}, limit=5)] == ["a3"]
    [event] = [e for e in await store.events(slug="a2") if e.kind == "workspace"]
    assert event.record is not None and event.record.labels == {"team": "b", "tier": ""}
    await store.close()


async def test_a_version_7_sqlite_store_keeps_its_records_with_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:7]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 7")
    now = utc_now().isoformat()
    db.execute(
        "INSERT INTO deployments (slug, generation, tier, driver, state, created_at, updated_at) "
        "VALUES ('old', 1, 'solo', 'fake', 'ready', ?, ?)",
        (now, now),
    )
    db.commit()
    db.close()
    store = await _sqlite(path)
    old = await store.get("old")
    assert old is not None and (old.state, old.labels) == ("ready", {})
    assert [d.slug for d in await store.deployments(labels={"team": "a"})] == []
    await store.save(old.model_copy(update={"labels": {"team": "a"}}))
    assert [d.slug for d in await store.deployments(labels={"team": "a"})] == ["old"]
    await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10


async def test_a_version_8_sqlite_store_keeps_its_operations_with_no_actor(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:8]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 8")
    db.execute(
        "INSERT INTO operations (slug, generation, verb, state, created_at) VALUES ('old', 1, 'provision', "
        "'succeeded', ?)",
        (utc_now().isoformat(),),
    )
    db.commit()
    db.close()
    store = await _sqlite(path)
    [old] = await store.operations()
    assert (old.slug, old.actor, old.on_behalf_of) == ("old", None, None)
    made, _ = await store.create_operation(NewOperation("new", 1, "provision", "me:1:a", actor="hearth:test"))
    assert [op.id for op in await store.operations(actor="hearth:test")] == [made.id]
    await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10


async def test_a_version_7_postgresql_store_keeps_its_records_with_no_labels(pg_url: str) -> None:
    now = utc_now().isoformat()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _pg_schema_at(conn, 7)
        conn.execute(
            "INSERT INTO deployments (slug, generation, tier, driver, state, created_at, updated_at) "
            "VALUES ('old', 1, 'solo', 'fake', 'ready', %s, %s)",
            (now, now),
        )
    store = await _postgres(pg_url)
    old = await store.get("old")
    assert old is not None and (old.state, old.labels) == ("ready", {})
    await store.save(old.model_copy(update={"labels": {"team": "a"}}))
    assert [d.slug for d in await store.deployments(labels={"team": "a"})] == ["old"]
    await store.close()


async def test_activity_moves_forward_only_and_fences_an_autostops_begin(opener: Opener) -> None:
    store = await opener()
    await store.save(_deployment())
    read = await store.get("alpha")
    assert read is not None and read.last_activity == read.updated_at  # a verb's record counts from its write
    later = utc_now() + timedelta(seconds=1)
    touched = await store.touch("alpha", later)
    assert touched is not None and touched.last_activity == later
    assert (await store.touch("alpha", later - timedelta(seconds=5))).last_activity == later  # type: ignore[union-attr]
    assert await store.touch("nobody", later) is None
    await store.save(read.model_copy(update={"labels": {"a": "b"}}))  # written from a read before the touch
    assert (await store.get("alpha")).last_activity == later  # type: ignore[union-attr]
    stop, _ = await store.create_operation(
        NewOperation("alpha", 1, "stop", "me:1:a", actor="hearth:autostop")
    )
    stopping = read.model_copy(update={"state": "stopping"})
    assert read.last_activity is not None
    assert not await store.begin(stop.id, stopping, idle_since=read.last_activity)  # a touch it did not see
    assert (await store.operation(stop.id)).state == "queued"  # type: ignore[union-attr]
    assert (await store.get("alpha")).state == "ready"  # type: ignore[union-attr]
    assert await store.begin(stop.id, stopping, idle_since=later)  # what it read: it begins
    assert (await store.get("alpha")).state == "stopping"  # type: ignore[union-attr]
    await store.close()


async def test_a_version_9_postgresql_store_counts_activity_from_the_last_write(pg_url: str) -> None:
    written = (utc_now() - timedelta(hours=2)).isoformat()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _pg_schema_at(conn, 9)
        conn.execute(
            "INSERT INTO deployments (slug, generation, tier, driver, state, created_at, updated_at) "
            "VALUES ('old', 1, 'solo', 'fake', 'ready', %s, %s)",
            (written, written),
        )
    store = await _postgres(pg_url)
    old = await store.get("old")
    assert old is not None and old.last_activity is not None
    assert old.last_activity.isoformat() == written
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT version FROM hearth_schema").fetchone()
        assert row is not None and row[0] == SCHEMA_VERSION == 10
