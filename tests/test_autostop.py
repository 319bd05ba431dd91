"""Autostop (README "Autostop"): activity is what the console says (a touch, a verb, a backend's
``details.last_activity``); a ready workspace idle past its tier's ``autostop`` is stopped by the
sweep as an operation of its own, and a touch that races that stop withdraws it or comes after it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import Host, NotFound, RemoteHost
from hearth._models import Deployment
from hearth._server._app import create_app
from hearth._server._auth import SCOPE_OF
from hearth._server._daemon import _autostop_periodically
from hearth._settings import ServeSettings, Tier, load_settings
from hearth._states import AUTOSTOP_ACTOR, autostop_at, reported_activity, still_idle
from hearth._store._records import MIGRATIONS, SCHEMA_VERSION
from hearth._store._sqlite import SQLiteStore
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    MemoryConnection,
    RequestContext,
    ResourceCaps,
    StatusReport,
    utc_now,
)
from tests.test_cli import Cli
from tests.test_remote import daemon
from tests.test_serve import error_kind

BOUND = 20.0
#: The autostop of the tests' tier: short real seconds (the host has no injected clock).
IDLE = 0.3


class NoStop(FakeDriver):
    """The fake without ``stop`` and ``start``: a driver that cannot stop."""

    stop = Driver.stop
    start = Driver.start


class GatedStop(FakeDriver):
    """The fake whose ``stop`` waits, once entered, until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        self.entered.set()
        await self.release.wait()
        return await super().stop(ref, ctx)


class Busy(FakeDriver):
    """The fake whose ``status`` reports backend activity at a time the test sets."""

    activity: str | None = None

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        report = await super().status(ref, ctx)
        if self.activity is None:
            return report
        return report.model_copy(update={"details": {**report.details, "last_activity": self.activity}})


def _host(
    tmp_path: Path, driver: Driver | Callable[[], Driver] | None = None, autostop: float | None = IDLE
) -> Host:
    """A host whose tier ``idle`` stops after ``autostop`` seconds; ``driver``: the fake (one
    instance behind every connection, or a factory)."""
    make: Callable[[], Driver]
    if driver is None:
        make = FakeDriver
    elif isinstance(driver, Driver):
        shared = driver
        make = lambda: shared  # noqa: E731 - one driver behind every connection
    else:
        make = driver
    return Host(
        project_dir=tmp_path / "project",
        home=tmp_path / "home",
        tiers={"idle": Tier("idle", ResourceCaps(cpu=1), {}, autostop)},
        in_process={"fake": lambda: MemoryConnection(make())},
    )


async def _until(at: datetime) -> None:
    """Wait until the wall clock passes ``at`` (the autostop bound is wall time)."""
    left = (at - utc_now()).total_seconds()
    assert left < BOUND
    if left > 0:
        await asyncio.sleep(left + 0.01)


async def _idle(host: Host, slug: str = "alpha") -> Deployment:
    """``slug`` provisioned and waited on until its autostop is due; its record then."""
    await host.provision(slug, tier="idle", driver="fake")
    record = await host.deployment(slug)
    assert record.autostop_at is not None
    await _until(record.autostop_at)
    return record


# --- the rules ------------------------------------------------------------------------------------


def _record(state: str = "ready", activity: datetime | None = None) -> Deployment:
    now = utc_now()
    return Deployment(
        slug="alpha",
        generation=1,
        tier="idle",
        driver="fake",
        state=state,
        ref=None,
        created_at=now,
        updated_at=now - timedelta(hours=1),
        last_activity=activity,
    )


def test_autostop_at_is_for_ready_workspaces_on_a_tier_with_autostop() -> None:
    seen = utc_now()
    assert autostop_at(_record(activity=seen), 60) == seen + timedelta(seconds=60)
    assert autostop_at(_record(activity=seen), None) is None
    for state in ("stopped", "failed", "upgrading", "stopping"):
        assert autostop_at(_record(state, seen), 60) is None
    old = _record()  # written before hearth kept activity: it counts from its last write
    assert autostop_at(old, 60) == old.updated_at + timedelta(seconds=60)
    assert still_idle(_record(activity=seen), seen)
    assert not still_idle(_record(activity=seen + timedelta(microseconds=1)), seen)
    assert not still_idle(_record("stopped", seen), seen) and not still_idle(None, seen)


def test_reported_activity_is_an_iso_time_with_its_offset_never_in_the_future() -> None:
    now = utc_now()
    earlier = now - timedelta(minutes=5)
    assert reported_activity({"last_activity": earlier.isoformat()}, now) == earlier
    assert reported_activity({"last_activity": (now + timedelta(hours=1)).isoformat()}, now) == now
    for value in (None, 1700000000, "yesterday", "2026-12-07T04:00:00", "x" * 100):
        assert reported_activity({"last_activity": value}, now) is None
    assert reported_activity(None, now) is None and reported_activity({}, now) is None


def test_a_tier_sets_autostop_in_hearth_toml(tmp_path: Path) -> None:
    settings = tmp_path / ".hearth" / "hearth.toml"
    settings.parent.mkdir()
    settings.write_text("[tiers.idle]\nautostop = 3600\n[tiers.team]\nautostop = 60\n")
    loaded = load_settings(tmp_path)
    assert loaded.tiers["idle"].autostop == 3600 and loaded.tiers["team"].autostop == 60
    assert loaded.tiers["team"].resource_caps.cpu == 2  # the built-in's caps kept
    assert loaded.tiers["solo"].autostop is None  # documented default: none
    assert loaded.serve.autostop_interval == ServeSettings().autostop_interval == 60.0
    for bad in ("0", "-5", '"1h"', "true", str(31 * 86400)):
        settings.write_text(f"[tiers.idle]\nautostop = {bad}\n")
        with pytest.raises(Exception, match=r"tiers\.idle\.autostop"):
            load_settings(tmp_path)
    settings.write_text("[serve]\nautostop_interval = -1\n")
    with pytest.raises(Exception, match="autostop_interval"):
        load_settings(tmp_path)


# --- the sweep ------------------------------------------------------------------------------------


async def test_an_idle_workspace_is_stopped_by_an_operation_that_says_why(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        await host.provision("alpha", tier="idle", driver="fake")
        record = await host.deployment("alpha")
        assert record.last_activity is not None and record.autostop_at is not None
        assert record.autostop_at == record.last_activity + timedelta(seconds=IDLE)
        assert await host.autostop_sweep() == []  # not idle long enough yet
        await _until(record.autostop_at)
        [op] = await host.autostop_sweep()
        assert (op.slug, op.verb, op.actor) == ("alpha", "stop", AUTOSTOP_ACTOR)
        done = await asyncio.wait_for(op.wait(), BOUND)
        assert done.state == "succeeded", done.error
        after = await host.deployment("alpha")
        assert after.state == "stopped" and after.autostop_at is None
        assert after.last_activity == record.last_activity  # the host's own stop is no activity
        [logged] = [o for o in await host.logs("alpha") if o.id == op.id]
        since = record.last_activity.isoformat(timespec="seconds")
        why = f"no activity since {since}, autostop {IDLE:g} s"
        assert why in [line.message for line in logged.log]
        events = [e async for e in _events_of(host, op.id)]
        assert any(e.kind == "log" and e.message == why and e.actor == AUTOSTOP_ACTOR for e in events)
        assert await host.autostop_sweep() == []  # stopped: nothing more to do


async def _events_of(host: Host, ident: int) -> Any:
    for batch in [await host._core.store.events(operation=ident)]:
        for event in batch:
            yield event


async def test_a_touched_workspace_is_not_stopped_and_its_autostop_moves(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        await host.provision("alpha", tier="idle", driver="fake")
        before = await host.deployment("alpha")
        assert before.autostop_at is not None
        touched = await host.touch("alpha")
        assert touched.last_activity is not None and before.last_activity is not None
        assert touched.last_activity > before.last_activity
        assert touched.autostop_at == touched.last_activity + timedelta(seconds=IDLE)
        await _until(before.autostop_at)
        if utc_now() < touched.autostop_at:
            assert await host.autostop_sweep() == []
        await _until(touched.autostop_at)
        [op] = await host.autostop_sweep()  # untouched since: now it goes
        assert (await asyncio.wait_for(op.wait(), BOUND)).state == "succeeded"
        with pytest.raises(NotFound):
            await host.touch("nobody")


async def test_every_verb_is_activity(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        record = await _idle(host)
        await host.stop("alpha")
        await host.start("alpha")
        started = await host.deployment("alpha")
        assert started.last_activity is not None and record.last_activity is not None
        assert started.last_activity > record.last_activity
        assert started.autostop_at is not None and started.autostop_at > utc_now() - timedelta(seconds=IDLE)


async def test_a_backends_reported_activity_counts_when_status_reads_it(tmp_path: Path) -> None:
    driver = Busy()
    async with _host(tmp_path, driver) as host:
        record = await _idle(host)
        seen = utc_now().replace(microsecond=0)
        driver.activity = seen.isoformat()
        report = await host.status("alpha")
        assert report.details["last_activity"] == seen.isoformat()
        after = await host.deployment("alpha")
        assert record.last_activity is not None and after.last_activity == max(seen, record.last_activity)
        driver.activity = (seen - timedelta(days=1)).isoformat()  # older: never moves it back
        await host.status("alpha")
        assert (await host.deployment("alpha")).last_activity == after.last_activity


async def test_a_workspace_with_an_operation_queued_or_running_is_skipped(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        await _idle(host)
        async with host._core.locks.hold("alpha", BOUND):  # the slug held: an upgrade waits queued
            queued = await host.start_upgrade("alpha", tier="solo")
            assert (await host.operation(queued.id)).state == "queued"
            assert await host.autostop_sweep() == []
            await host.operation(queued.id)
        assert (await asyncio.wait_for(queued.wait(), BOUND)).state == "succeeded"
        assert [o.verb for o in await host.operations(slug="alpha")] == ["provision", "upgrade"]


async def test_a_driver_that_cannot_stop_is_skipped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _host(tmp_path, NoStop) as host:
        await _idle(host)
        with caplog.at_level(logging.WARNING, logger="hearth"):
            for _ in range(3):
                assert await host.autostop_sweep() == []
        said = [r.getMessage() for r in caplog.records if "cannot stop" in r.getMessage()]
        assert len(said) == 1 and "'fake'" in said[0]
        assert [o.verb for o in await host.operations(slug="alpha")] == ["provision"]  # no failed stops
        assert (await host.deployment("alpha")).state == "ready"


async def test_no_tier_with_autostop_no_sweep(tmp_path: Path) -> None:
    async with _host(tmp_path, autostop=None) as host:
        await host.provision("alpha", tier="idle", driver="fake")
        assert (await host.deployment("alpha")).autostop_at is None
        assert await host.autostop_sweep() == []


# --- the race -------------------------------------------------------------------------------------


async def test_a_touch_between_the_sweeps_read_and_its_begin_withdraws_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _host(tmp_path) as host:
        await _idle(host)
        store = host.store
        original = store.begin
        reached, go = asyncio.Event(), asyncio.Event()

        async def gated(*args: Any, **kwargs: Any) -> bool:
            reached.set()
            await go.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(store, "begin", gated)
        [op] = await host.autostop_sweep()
        await asyncio.wait_for(reached.wait(), BOUND)  # the sweep read the record idle, held the slug
        touched = await host.touch("alpha")  # lands before the stop's begin is written
        go.set()
        done = await asyncio.wait_for(op.wait(), BOUND)
        assert done.state == "cancelled" and done.error is not None
        assert "withdrawn" in done.error["message"] and done.error["changed_nothing"]
        after = await host.deployment("alpha")
        assert after.state == "ready" and after.last_activity == touched.last_activity
        assert after.autostop_at is not None and after.autostop_at > utc_now() - timedelta(seconds=IDLE)


async def test_a_touch_before_the_stop_holds_the_slug_withdraws_it(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        await _idle(host)
        async with host._core.locks.hold("alpha", BOUND):  # the sweep's stop queues behind it
            [op] = await host.autostop_sweep()
            await host.touch("alpha")
        done = await asyncio.wait_for(op.wait(), BOUND)
        assert done.state == "cancelled" and done.error is not None and "withdrawn" in done.error["message"]
        assert (await host.deployment("alpha")).state == "ready"


async def test_a_touch_after_the_stop_began_is_recorded_after_it(tmp_path: Path) -> None:
    driver = GatedStop()
    async with _host(tmp_path, driver) as host:
        await _idle(host)
        [op] = await host.autostop_sweep()
        await asyncio.wait_for(driver.entered.wait(), BOUND)  # begun: the adapter is stopping it
        began = (await host.operation(op.id)).started_at
        touched = await host.touch("alpha")
        assert began is not None and touched.last_activity is not None
        assert touched.state == "stopping" and touched.last_activity > began
        driver.release.set()
        assert (await asyncio.wait_for(op.wait(), BOUND)).state == "succeeded"
        after = await host.deployment("alpha")
        # the stop's final write, of a record read before the touch, keeps the touch
        assert after.state == "stopped" and after.last_activity == touched.last_activity


# --- the API, RemoteHost, the CLI -----------------------------------------------------------------


def test_the_activity_route_needs_operate() -> None:
    assert SCOPE_OF[("POST", "/v1/workspaces/{slug}/activity")] == "operate"


async def test_touch_through_the_api_and_remote_host(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, host):
        await host.provision("alpha", tier="solo", driver="fake")
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            before = (await client.get("/v1/workspaces/alpha")).json()
            assert before["last_activity"] is not None and before["autostop_at"] is None  # solo has none
            answered = await client.post("/v1/workspaces/alpha/activity")
            assert answered.status_code == 200, answered.text
            assert (
                answered.json()["slug"] == "alpha"
                and answered.json()["last_activity"] > before["last_activity"]
            )
            missing = await client.post("/v1/workspaces/nobody/activity")
            assert missing.status_code == 404 and error_kind(missing) == "not_found"
        async with RemoteHost(sock) as remote:
            touched = await remote.touch("alpha")
            assert touched.last_activity is not None
            assert touched.last_activity > datetime.fromisoformat(answered.json()["last_activity"])
            with pytest.raises(NotFound):
                await remote.touch("nobody")


async def test_autostop_at_is_in_the_api(tmp_path: Path) -> None:
    async with _host(tmp_path) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            await host.provision("alpha", tier="idle", driver="fake")
            [listed] = (await client.get("/v1/workspaces")).json()
            one = (await client.get("/v1/workspaces/alpha")).json()
            for record in (listed, one):
                at = datetime.fromisoformat(record["autostop_at"])
                assert at == datetime.fromisoformat(record["last_activity"]) + timedelta(seconds=IDLE)
            status = (await client.get("/v1/workspaces/alpha/status")).json()
            assert status["details"]["autostop_at"] == one["autostop_at"].replace("Z", "+00:00")


@pytest.mark.subprocess
def test_hearth_touch(tmp_path: Path, venv_bin: Path) -> None:
    cli = Cli(tmp_path, venv_bin)
    settings = cli.project / ".hearth" / "hearth.toml"
    settings.write_text(
        settings.read_text().replace("[timeouts]", "[tiers.idle]\nautostop = 3600\n[timeouts]")
    )
    assert cli.run("provision", "alpha", "--tier", "idle", "--driver", "fake").returncode == 0
    touched = cli.json("touch", "alpha")
    assert touched["slug"] == "alpha" and touched["last_activity"] and touched["autostop_at"]
    at = datetime.fromisoformat(touched["autostop_at"])
    assert at == datetime.fromisoformat(touched["last_activity"]) + timedelta(seconds=3600)
    text = cli.run("touch", "alpha")
    assert text.returncode == 0 and "activity recorded at" in text.stdout and "autostop at" in text.stdout
    shown = cli.run("status", "alpha")
    assert shown.returncode == 0 and "autostop at" in shown.stdout
    code, _, error = cli.error("touch", "nobody")
    assert code == 2 and error["kind"] == "not_found"  # bad input, as for every verb


# --- the store ------------------------------------------------------------------------------------


async def test_a_version_9_sqlite_store_gives_its_records_their_last_write_as_activity(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hearth.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:9]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 9")
    written = (utc_now() - timedelta(hours=2)).isoformat()
    db.execute(
        "INSERT INTO deployments (slug, generation, tier, driver, state, created_at, updated_at) "
        "VALUES ('old', 1, 'solo', 'fake', 'ready', ?, ?)",
        (written, written),
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    old = await store.get("old")
    assert old is not None and old.last_activity == datetime.fromisoformat(written)
    later = utc_now()
    touched = await store.touch("old", later)
    assert touched is not None and touched.last_activity == later
    assert (await store.touch("old", later - timedelta(minutes=1))).last_activity == later  # type: ignore[union-attr]
    assert await store.touch("nobody", later) is None
    await store.save(old)  # a write of the record as read before: the touch is kept
    assert (await store.get("old")).last_activity == later  # type: ignore[union-attr]
    await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10


async def test_the_daemons_sweep_stops_an_idle_workspace_within_its_bound_plus_the_interval(
    tmp_path: Path,
) -> None:
    interval = 0.1
    settings = tmp_path / "project" / ".hearth" / "hearth.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[serve]\nautostop_interval = {interval}\nreconcile_jitter = 0.1\n")
    async with _host(tmp_path) as host:
        await host.provision("alpha", tier="idle", driver="fake")
        record = await host.deployment("alpha")
        assert record.last_activity is not None
        draining = asyncio.Event()
        sweeping = asyncio.create_task(_autostop_periodically(host, draining))
        try:
            events = host.watch(after=await host.last_seq(), slug="alpha")
            async with asyncio.timeout(BOUND):
                async for event in events:
                    if event.record_state == "stopped":
                        break
        finally:
            draining.set()
            await asyncio.wait_for(sweeping, BOUND)
        [op] = [o for o in await host.operations(slug="alpha") if o.verb == "stop"]
        assert op.actor == AUTOSTOP_ACTOR and op.started_at is not None
        waited = (op.created_at - record.last_activity).total_seconds()
        # its bound plus one (jittered) interval, and a little for a loaded machine
        assert IDLE <= waited <= IDLE + interval * 1.1 + 1.0
