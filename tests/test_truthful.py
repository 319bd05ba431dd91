"""A record never lies: the host after refusals, cancellations, deadlines and faults (issue 9).

Each test names the defect of the issue it covers; the fake driver runs in process over the
SDK's in-memory connection (the same codec and server session as on stdio), with a real
SQLite store and real slug locks.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import math
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from hearth import (
    BackendFailure,
    CallTimeout,
    Conflict,
    Host,
    InvalidInput,
    InvalidProfile,
    StoreError,
)
from hearth._adapters._client import AdapterClient
from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import read_journal
from hearth_adaptersdk import (
    BackendUnavailable,
    DeploymentRef,
    MemoryConnection,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    utc_now,
)
from tests import helpers
from tests.helpers import left_by_a_dead_host

#: Here a brisk operation takes 0.3 s.
make_host = functools.partial(helpers.make_host, tiers=helpers.FAKE_TIERS | {"brisk": {"delay": 0.3}})


def journal(tmp_path: Path) -> list[str]:
    return [e["method"] for e in read_journal(tmp_path / "home" / "data" / "fake")]


async def started(host: Host, call: Any) -> asyncio.Task[Any]:
    """Start ``call(on_progress)`` and return its task once the adapter reports progress."""
    event = asyncio.Event()
    task = asyncio.create_task(call(lambda _: event.set()))
    await event.wait()
    return task


# --- 4: deadlines ---------------------------------------------------------------------------
class LateFinisher(FakeDriver):
    """Finishes its provision even when cancelled: the answer races the cancel and wins."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        # the work was already done in the backend: it answers with its result
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return await super().provision(slug, profile, ctx)


async def test_4_a_result_after_the_cancel_is_a_success(tmp_path: Path) -> None:
    async with make_host(tmp_path, driver=LateFinisher()) as host:
        ref = await host.provision("y1", tier="solo", driver="fake", timeout=0.2)
        assert ref.last_status == "ready"
        [record] = await host.deployments()
        assert record.state == "ready" and record.reason is None
        assert [op.outcome for op in await host.logs("y1")] == ["succeeded"]
        assert (await host.status("y1")).state == "ready"


async def test_4_a_late_result_after_a_task_cancel_is_recorded_as_done(tmp_path: Path) -> None:
    async with make_host(tmp_path, driver=LateFinisher()) as host:
        task = asyncio.create_task(host.provision("y1", tier="solo", driver="fake"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = await host.deployments()
        assert record.state == "ready"
        assert "recorded as done" in host.interruptions[0]


class SlowStart(FakeDriver):
    async def setup(self, config: Any, data_dir: Any) -> None:
        await asyncio.sleep(30)


async def test_4_the_timeout_bounds_start_up_and_no_verb_is_sent_after_it(tmp_path: Path) -> None:
    async with make_host(tmp_path, driver=SlowStart()) as host:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        # the bound named is the caller's 0.3 s, less what admission took (0.29 s on a busy machine)
        with pytest.raises(CallTimeout, match=r"handshake within 0\.[23]\d* s"):
            await host.provision("y2", tier="solo", driver="fake", timeout=0.3)
        assert loop.time() - begun < 5
        assert await host.deployments() == []  # nothing changed; the operation says why
        [operation] = await host.logs("y2")
        assert operation.state == "failed" and operation.started_at is None
        assert operation.error is not None and operation.error["kind"] == "timeout"
        assert operation.error["changed_nothing"] is True


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0, -1, 0.0])
async def test_4_nan_zero_and_negative_timeouts_are_invalid_on_every_verb(tmp_path: Path, bad: float) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("y3", tier="solo", driver="fake")
        calls = [
            host.provision("y4", tier="solo", driver="fake", timeout=bad),
            host.status("y3", timeout=bad),
            host.upgrade("y3", tier="team", timeout=bad),
            host.teardown("y3", timeout=bad),
            host.reconcile(timeout=bad),
        ]
        for call in calls:
            with pytest.raises(InvalidInput, match="positive number of seconds"):
                await call
        assert [d.state for d in await host.deployments()] == ["ready"]
    assert journal(tmp_path) == ["provision"]


# --- 5: unexpected errors mid-verb ----------------------------------------------------------
async def test_5_an_os_error_mid_verb_ends_the_operation_and_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    async with make_host(tmp_path) as host:
        await host.provision("full", tier="solo", driver="fake")
        monkeypatch.setattr(AdapterClient, "upgrade", disk_full)
        with pytest.raises(StoreError, match="No space left on device"):
            await host.upgrade("full", tier="team")
        [record] = await host.deployments()
        assert record.state == "failed" and record.unconfirmed
        assert "not confirmed" in (record.reason or "")
        assert [op.outcome for op in await host.logs("full")] == ["succeeded", "failed"]
        monkeypatch.undo()
        report = await host.reconcile()  # the host cannot know: reconcile asks the adapter
        assert report.resolved == [("full", "failed", "ready")]


async def test_5_a_data_folder_that_cannot_be_made_is_a_typed_error_before_any_record(tmp_path: Path) -> None:
    (tmp_path / "home" / "data").mkdir(parents=True)
    (tmp_path / "home" / "data" / "fake").write_text("not a folder")
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=r"data folder .*data/fake cannot be used"):
            await host.provision("x", tier="solo", driver="fake")
        assert await host.deployments() == []


async def test_5_a_corrupt_store_is_a_store_error_for_every_command(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        for index in range(40):
            await host.provision(f"w{index}", tier="solo", driver="fake")
    database = tmp_path / "home" / "hearth.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        [root] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'deployments'").fetchone()
    data = bytearray(database.read_bytes())
    data[page * (root - 1) : page * root] = b"\xff" * page  # one page of garbage: the table's root
    database.write_bytes(bytes(data))
    async with make_host(tmp_path) as host:
        for command in (host.list, host.reconcile, lambda: host.status("w1")):
            with pytest.raises(StoreError, match=r"hearth\.db"):
                await command()


# --- 6 and 7: refusals and cancellations that change nothing ---------------------------------
async def test_6_a_refused_upgrade_leaves_the_workspace_ready(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("r1", tier="solo", driver="fake")
        with pytest.raises(InvalidProfile):
            await host.upgrade("r1", tier="typo")
        [record] = await host.deployments()
        assert (record.state, record.tier, record.reason) == ("ready", "solo", None)
        status = await host.status("r1")
        assert status.state == "ready" and "changed nothing" in (status.message or "")
        assert "delya" in (status.message or "")
        with pytest.raises(BackendFailure) as caught:  # rolled back by the adapter
            await host.upgrade("r1", tier="flaky")
        assert caught.value.rolled_back
        [record] = await host.deployments()
        assert (record.state, record.tier) == ("ready", "solo")
        upgraded = await host.upgrade("r1", tier="team")  # and upgrade still works
        assert upgraded.tier == "team"
        assert [op.outcome for op in await host.logs("r1")] == ["succeeded", "failed", "failed", "succeeded"]


async def test_6_a_refused_first_provision_does_not_pin_the_slug(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidProfile):
            await host.provision("r2", tier="rejected", driver="fake")
        assert await host.deployments() == []
        [operation] = await host.logs("r2")
        assert operation.outcome == "failed" and operation.error is not None
        assert operation.error["kind"] == "invalid_profile"
        ref = await host.provision("r2", tier="team", driver="fake")
        assert ref.tier == "team"


async def test_6_a_refused_reprovision_of_a_failed_workspace_keeps_it_failed(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("r3", tier="solo", driver="fake")
        [record] = await host.deployments()
        failed = record.model_copy(
            update={"state": "failed", "tier": "rejected", "reason": "an earlier failure"}
        )
        await host.store.save(failed)
        with pytest.raises(InvalidProfile):
            await host.provision("r3", tier="rejected", driver="fake")
        assert await host.deployments() == [failed]


async def test_7_a_cancelled_upgrade_that_rolled_back_stays_ready(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("c1", tier="solo", driver="fake")
        task = await started(host, lambda p: host.upgrade("c1", tier="slow", on_progress=p))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = await host.deployments()
        assert (record.state, record.tier) == ("ready", "solo")
        operations = await host.logs("c1")
        assert operations[-1].outcome == "cancelled" and operations[-1].error is not None
        assert operations[-1].error["rolled_back"] is True
        assert (await host.status("c1")).state == "ready"


async def test_7_a_cancelled_teardown_is_resolved_from_the_adapters_status(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("c2", tier="brisk", driver="fake")  # its delay applies to teardown
    async with make_host(tmp_path) as host:
        task = await started(host, lambda p: host.teardown("c2", on_progress=p))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = await host.deployments()
        assert record.state == "ready" and "still serves" in (record.reason or "")
        assert (await host.status("c2")).state == "ready"


# --- 8 and 9: reconcile -----------------------------------------------------------------------
async def test_8_reconcile_leaves_rolled_back_failures_alone_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("gone", tier="solo", driver="fake")
        await host.provision("kept", tier="solo", driver="fake")
        [gone, _] = await host.deployments()
        await host.store.save(
            gone.model_copy(update={"state": "failed", "reason": "an old failure"})
        )  # nothing behind it
        (tmp_path / "home" / "data" / "fake" / "deployments" / "gone.json").unlink()
        before = await host.deployments()
        first = await host.reconcile()
        assert first.ghosts == [] and first.resolved == []
        assert await host.deployments() == before  # not even updated_at moved
        await host.provision("ghost", tier="solo", driver="fake")
        (tmp_path / "home" / "data" / "fake" / "deployments" / "ghost.json").unlink()
        assert (await host.reconcile()).ghosts == ["ghost"]
        settled = await host.deployments()
        again = await host.reconcile()
        assert (again.ghosts, again.resolved) == ([], [])
        assert await host.deployments() == settled


class Unreachable(FakeDriver):
    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        raise BackendUnavailable("the backend cannot be reached")

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        raise BackendUnavailable("the backend cannot be reached")


class Unknowing(FakeDriver):
    """A backend that answers, but cannot say what it holds (and lists nothing)."""

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        return StatusReport(state="unknown", observed_at=utc_now(), message="the API timed out")

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        return []


async def test_8_an_unknown_backend_state_is_never_read_as_absent(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("k1", tier="solo", driver="fake")
    async with make_host(tmp_path, driver=Unknowing()) as host:
        before = await host.deployments()
        report = await host.reconcile()
        assert report.ghosts == [] and "unknown (the API timed out)" in report.unreachable["fake"]
        assert await host.deployments() == before


async def test_8_an_unreachable_backend_is_never_a_ghost(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("u1", tier="solo", driver="fake")
    async with make_host(tmp_path, driver=Unreachable()) as host:
        before = await host.deployments()
        report = await host.reconcile()
        assert report.ghosts == [] and "cannot be reached" in report.unreachable["fake"]
        assert await host.deployments() == before


async def test_9_a_teardown_interrupted_by_a_dead_host_says_the_backend_still_serves(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("t1", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(
            host, record.model_copy(update={"state": "tearing_down"}), "teardown"
        )  # then kill -9
        report = await host.reconcile()
        assert report.resolved == [("t1", "tearing_down", "ready")]
        [record] = await host.deployments()
        assert record.state == "ready"
        assert record.reason == "teardown interrupted; the backend still serves"
        assert [op.outcome for op in await host.logs("t1")] == ["succeeded", "interrupted"]


# --- 10: closing with work in flight ----------------------------------------------------------
async def test_10_close_drains_then_records_what_remains_interrupted(tmp_path: Path) -> None:
    host = make_host(tmp_path, drain_grace=2.0)
    host.open()
    await host.provision("d0", tier="solo", driver="fake")
    brisk = asyncio.create_task(host.provision("d1", tier="brisk", driver="fake"))
    slow = await started(host, lambda p: host.upgrade("d0", tier="slow", on_progress=p))
    await host.close()
    assert (await brisk).last_status == "ready"  # drained: it finished within the grace
    with pytest.raises(asyncio.CancelledError):
        await slow
    async with make_host(tmp_path) as host:
        states = {d.slug: (d.state, d.tier) for d in await host.deployments()}
        assert states == {"d0": ("ready", "solo"), "d1": ("ready", "brisk")}
        assert [op.outcome for op in await host.logs("d0")] == ["succeeded", "interrupted"]


# --- 12, 13, 14, 16, 17, 19: settings, input and messages ---------------------------------------
def test_12_a_tier_that_only_sets_driver_flags_keeps_the_builtin_caps(tmp_path: Path) -> None:
    from hearth._settings import load_settings

    (tmp_path / ".hearth").mkdir()
    (tmp_path / ".hearth" / "hearth.toml").write_text(
        "[tiers.team.driver_flags.fake]\ndelay = 0\n[tiers.studio.resource_caps]\ncpu = 3\n"
    )
    settings = load_settings(tmp_path)
    team = settings.profile("team", "fake")
    assert (team.resource_caps.cpu, team.resource_caps.memory_mb) == (2, 4096)
    assert team.driver_flags == {"delay": 0}
    studio = settings.profile("studio", "fake")
    assert (studio.resource_caps.cpu, studio.resource_caps.memory_mb) == (3, 8192)


@pytest.mark.parametrize("name", ["NOPE", "../fake", "", "x" * 100_000])
async def test_13_a_malformed_driver_name_is_invalid_input(tmp_path: Path, name: str) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput, match="is not a driver name") as caught:
            await host.provision("m1", tier="solo", driver=name)
        assert len(caught.value.message) < 300  # 19: a long input is cut when echoed
        assert await host.deployments() == []


async def test_19_a_long_slug_is_cut_when_echoed(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput) as caught:
            await host.provision("a" * 100_000, tier="solo", driver="fake")
        assert len(caught.value.message) < 300


async def test_19_a_conflict_on_another_driver_does_not_say_use_upgrade(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("m2", tier="solo", driver="fake")
        host.supervisor._in_process["other"] = lambda: MemoryConnection(FakeDriver())
        with pytest.raises(Conflict, match="cannot move to another driver") as caught:
            await host.provision("m2", tier="solo", driver="other")
        assert "use upgrade" not in caught.value.message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_14_non_finite_numbers_in_settings_are_refused(tmp_path: Path, value: str) -> None:
    from hearth._settings import load_settings

    (tmp_path / ".hearth").mkdir()
    (tmp_path / ".hearth" / "hearth.toml").write_text(f"[tiers.big]\nresource_caps = {{ cpu = {value} }}\n")
    with pytest.raises(InvalidInput, match=r"tiers\.big\.resource_caps\.cpu: .* not a finite number"):
        load_settings(tmp_path)


async def test_16_store_files_are_private_even_in_an_open_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    async with make_host(tmp_path) as host:
        await host.provision("p1", tier="solo", driver="fake")
        for name in ("hearth.db", "hearth.db-wal", "hearth.db-shm"):
            mode = stat.S_IMODE((home / name).stat().st_mode)
            assert mode == 0o600, f"{name} is {oct(mode)}"


def test_17_a_settings_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    from hearth._settings import load_settings

    (tmp_path / ".hearth").mkdir()
    (tmp_path / ".hearth" / "hearth.toml").write_bytes(b"[tiers.solo]\n# caf\xe9\n")
    with pytest.raises(InvalidInput, match=r"hearth\.toml: not UTF-8"):
        load_settings(tmp_path)


async def test_17_a_home_that_is_a_file_and_unwritable_locks_are_typed_errors(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file")
    with pytest.raises(StoreError, match=r"home .*home is not a folder"):
        async with make_host(tmp_path):
            pass
    (tmp_path / "home").unlink()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "locks").write_text("not a folder")
    async with make_host(tmp_path) as host:
        with pytest.raises(StoreError, match=r"lock file .* cannot be used"):
            await host.provision("l1", tier="solo", driver="fake")
        assert await host.deployments() == []


def test_17_the_home_is_made_private(tmp_path: Path) -> None:
    async def run() -> None:
        async with make_host(tmp_path):
            pass

    asyncio.run(run())
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert os.path.exists(tmp_path / "home" / "hearth.db")


async def test_the_time_of_a_refusal_does_not_move_updated_at(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("u2", tier="solo", driver="fake")
        [before] = await host.deployments()
        with pytest.raises(InvalidProfile):
            await host.upgrade("u2", tier="typo")
        [after] = await host.deployments()
        assert after == before
        assert utc_now() >= after.updated_at


class Settling(FakeDriver):
    """The backend is still deleting the first time it is asked, then gone."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = ["tearing_down", "absent"]

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        return StatusReport(state=self.answers.pop(0) if self.answers else "absent", observed_at=utc_now())


async def test_8_reconcile_looks_again_at_a_backend_that_had_not_settled(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("s1", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(
            host, record.model_copy(update={"state": "tearing_down"}), "teardown"
        )  # then kill -9
    async with make_host(tmp_path, driver=Settling()) as host:
        first = await host.reconcile()
        assert first.resolved == [("s1", "tearing_down", "failed")]
        [record] = await host.deployments()
        assert record.unconfirmed and "still tearing_down" in (record.reason or "")
        second = await host.reconcile()  # the deletion finished meanwhile
        assert second.resolved == [("s1", "failed", "tier_torn_down")]
        [record] = await host.deployments()
        assert (record.state, record.unconfirmed) == ("tier_torn_down", False)
        third = await host.reconcile()
        assert (third.resolved, third.ghosts) == ([], [])


async def test_13_status_of_a_record_left_transient_settles_it_from_the_backend(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("s2", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(host, record.model_copy(update={"state": "upgrading"}), "upgrade")
        status = await host.status("s2")  # a host died mid-upgrade: this access settles it
        assert status.state == "ready" and status.details["recorded_state"] == "ready"
        [record] = await host.deployments()  # the adapter says which tier it serves
        assert (record.state, record.tier, record.unconfirmed) == ("ready", "solo", False)
        assert [op.outcome for op in await host.logs("s2")] == ["succeeded", "interrupted"]


async def test_a_dry_run_reconcile_reports_and_changes_nothing_and_a_slug_limits_it(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        for slug in ("r1", "r2"):
            await host.provision(slug, tier="solo", driver="fake")
            [record] = [d for d in await host.deployments() if d.slug == slug]
            await left_by_a_dead_host(
                host, record.model_copy(update={"state": "tearing_down"}), "teardown"
            )  # then kill -9
        before = (await host.deployments(), [await host.logs(s) for s in ("r1", "r2")])
        report = await host.reconcile(dry_run=True)
        assert report.dry_run and report.drift
        assert report.resolved == [("r1", "tearing_down", "ready"), ("r2", "tearing_down", "ready")]
        assert (await host.deployments(), [await host.logs(s) for s in ("r1", "r2")]) == before
        one = await host.reconcile("r1")
        assert one.resolved == [("r1", "tearing_down", "ready")] and not one.dry_run
        states = {d.slug: d.state for d in await host.deployments()}
        assert states == {"r1": "ready", "r2": "tearing_down"}
        with pytest.raises(InvalidInput, match="no workspace 'nope'"):
            await host.reconcile("nope")


async def test_8_reconcile_reports_a_record_it_cannot_confirm_once_not_on_every_run(tmp_path: Path) -> None:
    """Issue 20: a backend that stays provisioning can only be settled "failed, not confirmed";
    the run that settles it reports it, and the runs after it change and report nothing."""
    from hearth._cli._render import reconcile_lines
    from hearth_adapter_fake._store import FakeStore

    slugs = [f"u{i:02}" for i in range(18)]
    async with make_host(tmp_path) as host:
        for slug in slugs:
            await host.provision(slug, tier="solo", driver="fake")
        backend = FakeStore(tmp_path / "home" / "data" / "fake")
        for i, slug in enumerate(slugs):
            kept = backend.get(slug)
            assert kept is not None and kept["backend_id"]
            ref = kept["ref"] | {"last_status": "provisioning"}  # the backend never settles
            backend.put(slug, kept | {"ref": ref})
            [record] = [d for d in await host.deployments() if d.slug == slug]
            assert record.backend_id
            if i % 3:  # a host that died mid-provision
                working = record.model_copy(update={"state": "provisioning"})
                await left_by_a_dead_host(host, working, "provision")
            else:  # a provision whose failure was not confirmed
                await host.store.save(
                    record.model_copy(
                        update={"state": "failed", "unconfirmed": True, "reason": "provision timed out"}
                    ),
                    replaces=record,
                )
        backend.close()
        first = await host.reconcile()
        assert sorted(first.resolved) == [
            (slug, "failed" if i % 3 == 0 else "provisioning", "failed") for i, slug in enumerate(slugs)
        ]
        assert first.unconfirmed == slugs and not first.ghosts
        assert "u00: failed, not confirmed: the backend has not settled" in reconcile_lines(first)
        assert "u01: provisioning -> failed, not confirmed" in reconcile_lines(first)
        settled = await host.deployments()
        assert all(d.state == "failed" and d.unconfirmed for d in settled)
        assert all("still provisioning" in (d.reason or "") for d in settled)
        for _ in range(2):  # nothing changed: nothing is written, nothing is reported
            again = await host.reconcile()
            assert (again.resolved, again.unconfirmed, again.ghosts, again.orphans) == ([], [], [], [])
            assert reconcile_lines(again) == "nothing to reconcile"
            assert await host.deployments() == settled
        dry = await host.reconcile(dry_run=True)
        assert (dry.resolved, dry.drift) == ([], False)
