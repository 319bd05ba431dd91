"""``stop`` and ``start`` (protocol 1.3): announced only by drivers that override them, dispatched
by the SDK with a ref, and unknown (-32601) to a driver that does not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hearth import BackendFailure, InvalidTransition, Progress, Unsupported
from hearth._states import Recorded, Resolution, Transition, needs_status, resolve, rules
from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import read_journal
from hearth_adaptersdk import DeploymentRef, Driver, MemoryConnection, RequestContext
from hearth_adaptersdk.testing import Peer
from tests.helpers import make_host


class NoStop(FakeDriver):
    """The fake without ``stop`` and ``start``: an adapter of 1.2, or one that cannot stop."""

    stop = Driver.stop
    start = Driver.start


class Echo(FakeDriver):
    """Answers the ref it is given with the state the verb leaves, to see the SDK dispatch."""

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return ref.model_copy(update={"last_status": "stopped"})

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return ref.model_copy(update={"last_status": "ready"})


REF = {
    "workspace_slug": "alpha",
    "tier": "solo",
    "driver": "fake",
    "endpoint": None,
    "secrets_vault_path": None,
    "created": "2026-11-22T10:06:01Z",
    "last_status": "ready",
}


async def test_stop_and_start_are_announced_only_by_drivers_that_override_them() -> None:
    for driver, announced in ((Echo(), True), (NoStop(), False)):
        peer = Peer(MemoryConnection(driver))
        try:
            info = await peer.initialize()
            methods = info.capabilities.methods
            assert ("stop" in methods, "start" in methods) == (announced, announced)
            stopped = await peer.request("stop", {"ref": REF})
            started = await peer.request("start", {"ref": {**REF, "last_status": "stopped"}})
            if announced:
                assert stopped.result["last_status"] == "stopped"
                assert started.result["last_status"] == "ready"
            else:
                for reply in (stopped, started):
                    assert reply.error is not None and reply.error["code"] == -32601
        finally:
            await peer.close()


# --- the rules ------------------------------------------------------------------------------------


def test_the_table_has_stop_and_start_and_their_refusals() -> None:
    assert rules("stop", Recorded("ready", "solo", "fake"), "alpha").transition == Transition(
        "stopping", "stopped", "failed"
    )
    assert rules("start", Recorded("stopped", "solo", "fake"), "alpha").transition == Transition(
        "starting", "ready", "failed"
    )
    assert rules("teardown", Recorded("stopped", "solo", "fake"), "alpha").transition == Transition(
        "tearing_down", "tier_torn_down", "failed"
    )
    assert rules("stop", Recorded("stopped", "solo", "fake"), "alpha").noop
    assert rules("start", Recorded("ready", "solo", "fake"), "alpha").noop
    with pytest.raises(InvalidTransition, match="it is stopped; start it first"):
        rules("upgrade", Recorded("stopped", "team", "fake"), "alpha", tier="team")
    for verb, state in (("stop", "failed"), ("start", "failed"), ("stop", "tier_torn_down")):
        with pytest.raises(InvalidTransition):
            rules(verb, Recorded(state, "solo", "fake"), "alpha")  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition, match="reconcile resolves it"):
        rules("teardown", Recorded("stopping", "solo", "fake"), "alpha")
    with pytest.raises(InvalidTransition, match="you may start or teardown"):
        rules("provision", Recorded("stopped", "solo", "fake"), "alpha", tier="solo", driver="fake")


def test_reconcile_settles_interrupted_stops_and_starts_and_drift() -> None:
    assert resolve("stopping", "stopped", verb="stop") == Resolution("stopped", None)
    assert resolve("stopping", "ready", verb="stop").state == "ready"  # type: ignore[union-attr]
    assert resolve("starting", "ready", verb="start") == Resolution("ready", None)
    assert resolve("starting", "stopped", verb="start").state == "stopped"  # type: ignore[union-attr]
    assert resolve("stopped", "absent").state == "failed"  # type: ignore[union-attr]  # a ghost
    drift = resolve("stopped", "ready")
    assert drift is not None and drift.state == "ready" and "started outside hearth" in (drift.reason or "")
    drift = resolve("ready", "stopped")
    assert drift is not None and drift.state == "stopped" and "stopped outside hearth" in (drift.reason or "")
    assert resolve("stopped", "stopped") is None
    assert needs_status("stopped", False, listed=True, listed_state="ready")
    assert needs_status("ready", False, listed=True, listed_state="stopped")
    assert not needs_status("stopped", False, listed=True, listed_state="stopped")


# --- through the host -----------------------------------------------------------------------------


def journal(tmp_path: Path, method: str) -> int:
    return sum(e["method"] == method for e in read_journal(tmp_path / "home" / "data" / "fake"))


async def test_stop_and_start_keep_the_workspace_and_are_idempotent(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={}) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        backend = (await host.status("alpha")).details["backend_id"]
        events: list[Progress] = []
        ref = await host.stop("alpha", on_progress=events.append)
        assert ref.last_status == "stopped" and events
        assert (await host.deployment("alpha")).state == "stopped"
        status = await host.status("alpha")
        assert status.state == "stopped" and status.details["backend_id"] == backend
        assert (await host.stop("alpha")).last_status == "stopped"  # nothing to do
        with pytest.raises(InvalidTransition, match="start it first"):
            await host.upgrade("alpha", tier="team")
        ref = await host.start("alpha")
        assert ref.last_status == "ready" and ref.endpoint == "fake://alpha"
        assert (await host.status("alpha")).details["backend_id"] == backend  # the same one
        assert (await host.start("alpha")).last_status == "ready"  # nothing to do
        await host.stop("alpha")
        await host.teardown("alpha")  # a stopped workspace can be torn down
        assert (await host.deployment("alpha")).state == "tier_torn_down"
        verbs = [op.verb for op in await host.logs("alpha")]
        assert verbs == ["provision", "stop", "start", "stop", "teardown"]
    assert journal(tmp_path, "stop") == 2 and journal(tmp_path, "start") == 1


async def test_a_driver_that_does_not_announce_them_is_unsupported_naming_it(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={}, driver=NoStop) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        for verb in (host.stop, host.start, host.start_stop):
            with pytest.raises(Unsupported, match=r"driver 'fake' cannot (stop|start)"):
                await verb("alpha")
        check = await host.check("alpha", "stop")
        assert not check.accepted and check.error is not None and check.error["kind"] == "unsupported"
        assert (await host.deployment("alpha")).state == "ready"
        assert [op.verb for op in await host.logs("alpha")] == ["provision"]  # nothing recorded


async def test_a_failed_stop_is_unchanged_when_rolled_back_else_failed(tmp_path: Path) -> None:
    tiers: dict[str, dict[str, Any]] = {
        "halting": {"fail_at": "stop"},
        "broken": {"fail_at": "start", "keep_partial": True},
    }
    async with make_host(tmp_path, tiers=tiers) as host:
        await host.provision("alpha", tier="halting", driver="fake")
        with pytest.raises(BackendFailure):
            await host.stop("alpha")
        record = await host.deployment("alpha")
        assert record.state == "ready"  # a confirmed rollback changes nothing
        await host.provision("beta", tier="broken", driver="fake")
        await host.stop("beta")
        with pytest.raises(BackendFailure):
            await host.start("beta")
        record = await host.deployment("beta")
        assert record.state == "failed" and record.reason  # partial: D8, a person re-runs it
        assert (await host.status("beta")).state == "failed"


async def test_a_cancelled_stop_is_rolled_back_and_leaves_it_ready(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"slow": {"delay": 2}}) as host:  # provision takes it too
        await host.provision("alpha", tier="slow", driver="fake")
        started = asyncio.Event()
        task = asyncio.create_task(host.stop("alpha", on_progress=lambda _: started.set()))
        await started.wait()
        assert (await host.deployment("alpha")).state == "stopping"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await host.deployment("alpha")).state == "ready"
        assert (
            host.interruptions[-1]
            == "stop of 'alpha' was cancelled and rolled back; the workspace is ready as before"
        )


async def test_reconcile_settles_a_workspace_stopped_or_started_outside_hearth(tmp_path: Path) -> None:
    fake = FakeDriver()
    async with make_host(tmp_path, tiers={}, driver=fake) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        record = fake.store.get("alpha")
        assert record is not None
        fake.store.put("alpha", {**record, "ref": {**record["ref"], "last_status": "stopped"}})
        report = await host.reconcile()
        assert report.resolved == [("alpha", "ready", "stopped")] and report.drift and not report.ghosts
        settled = await host.deployment("alpha")
        assert settled.state == "stopped" and "stopped outside hearth" in (settled.reason or "")
        assert settled.ref is not None and settled.ref.last_status == "stopped"
        assert (await host.reconcile()).resolved == []  # settled: nothing new
        fake.store.put("alpha", record)  # started again outside hearth
        report = await host.reconcile()
        assert report.resolved == [("alpha", "stopped", "ready")]
        assert (await host.deployment("alpha")).state == "ready"
