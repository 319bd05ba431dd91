"""``stop`` and ``start`` (protocol 1.3): announced only by drivers that override them, dispatched
by the SDK with a ref, and unknown (-32601) to a driver that does not."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import BackendFailure, CallTimeout, InvalidTransition, Progress, RemoteHost, Unsupported
from hearth._server._app import create_app
from hearth._server._auth import SCOPE_OF
from hearth._states import Recorded, Resolution, Transition, needs_status, resolve, rules
from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import read_journal
from hearth_adaptersdk import DeploymentRef, Driver, MemoryConnection, RequestContext
from hearth_adaptersdk.testing import Peer
from tests.helpers import left_by_a_dead_host, make_host
from tests.test_cli import Cli, _wait_for
from tests.test_remote import daemon
from tests.test_serve import api, error_kind


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


class StopOnly(FakeDriver):
    """Announces stop without start: the host calls neither."""

    start = Driver.start


@pytest.mark.parametrize("driver", [NoStop, StopOnly])
async def test_a_driver_that_does_not_announce_them_is_unsupported_naming_it(
    tmp_path: Path, driver: type[FakeDriver]
) -> None:
    async with make_host(tmp_path, tiers={}, driver=driver) as host:
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


# --- the API, RemoteHost and the CLI --------------------------------------------------------------


async def test_the_api_stops_and_starts_with_keys_and_wait(tmp_path: Path) -> None:
    async with api(tmp_path) as client:
        made = await client.post(
            "/v1/workspaces", json={"slug": "alpha", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        assert made.status_code == 200, made.text
        stopped = await client.post(
            "/v1/workspaces/alpha/stop", headers={"Idempotency-Key": "stop-1"}, params={"wait": 20}
        )
        assert stopped.status_code == 200 and stopped.json()["state"] == "succeeded", stopped.text
        assert stopped.json()["result"]["last_status"] == "stopped"
        replay = await client.post("/v1/workspaces/alpha/stop", headers={"Idempotency-Key": "stop-1"})
        assert replay.json()["id"] == stopped.json()["id"]
        assert (await client.get("/v1/workspaces/alpha")).json()["state"] == "stopped"
        refused = await client.post("/v1/workspaces/alpha/upgrade", json={"tier": "team"})
        assert refused.status_code == 409 and error_kind(refused) == "invalid_transition"
        started = await client.post("/v1/workspaces/alpha/start", json={"timeout": 60})
        assert started.status_code in (200, 202), started.text
        assert started.headers["location"] == f"/v1/operations/{started.json()['id']}"
        done = await client.get(f"/v1/operations/{started.json()['id']}/wait", params={"timeout": 20})
        assert done.json()["state"] == "succeeded"
        assert (await client.get("/v1/workspaces/alpha")).json()["state"] == "ready"
        checked = await client.post("/v1/check", json={"slug": "alpha", "verb": "stop"})
        assert checked.json()["accepted"] is True
        missing = await client.post("/v1/workspaces/nobody/stop")
        assert missing.status_code == 404 and error_kind(missing) == "not_found"


async def test_the_api_answers_unsupported_naming_the_driver(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={}, driver=NoStop, idle_timeout=None) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=30) as client:
            await host.provision("alpha", tier="solo", driver="fake")
            refused = await client.post("/v1/workspaces/alpha/stop")
            assert refused.status_code == 422 and error_kind(refused) == "unsupported"
            assert "driver 'fake'" in refused.json()["error"]["message"]


def test_stop_and_start_routes_need_the_operate_scope() -> None:
    assert SCOPE_OF[("POST", "/v1/workspaces/{slug}/stop")] == "operate"
    assert SCOPE_OF[("POST", "/v1/workspaces/{slug}/start")] == "operate"


async def test_remote_host_stops_and_starts_through_the_daemon(tmp_path: Path) -> None:
    async with daemon(tmp_path, tiers={}) as (sock, host), RemoteHost(socket=sock) as remote:
        await remote.provision("alpha", tier="solo", driver="fake")
        events: list[Progress] = []
        assert (await remote.stop("alpha", on_progress=events.append)).last_status == "stopped"
        assert events and (await host.deployment("alpha")).state == "stopped"
        assert (await remote.stop("alpha")).last_status == "stopped"
        op = await remote.start_start("alpha")
        assert op.verb == "start"
        assert (await remote.start("alpha")).last_status == "ready"  # joins it, or finds it ready
        assert (await host.deployment("alpha")).state == "ready"


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    return Cli(tmp_path, venv_bin)


@pytest.mark.subprocess
def test_the_cli_stops_and_starts(cli: Cli) -> None:
    assert cli.run("provision", "alpha", "--tier", "solo", "--driver", "fake").returncode == 0
    stopped = cli.run("stop", "alpha", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["last_status"] == "stopped"
    status = cli.run("status", "alpha")
    assert status.returncode == 0 and status.stdout.startswith("alpha: stopped")
    refused = cli.run("upgrade", "alpha", "--tier", "team", "--yes")
    assert refused.returncode == 1 and "start it first" in refused.stderr
    started = cli.run("start", "alpha")
    assert started.returncode == 0 and started.stdout.startswith("alpha: ready"), started.stderr


async def test_a_stop_a_dead_host_left_is_settled_from_the_backend(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={}) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        await host.provision("beta", tier="solo", driver="fake")
        await host.stop("beta")
        for slug, state in (("alpha", "ready"), ("beta", "stopped")):
            record = await host.deployment(slug)
            verb = "stop" if state == "ready" else "start"
            working = record.model_copy(update={"state": "stopping" if verb == "stop" else "starting"})
            await left_by_a_dead_host(host, working, verb)
        # the stop never reached the backend: ready, with a note; the start did not either: stopped
        alpha, beta = await host.deployment("alpha"), await host.deployment("beta")
        assert alpha.state == "ready" and "stop interrupted" in (alpha.reason or "")
        assert beta.state == "stopped" and "start interrupted" in (beta.reason or "")
        assert [op.outcome for op in await host.logs("alpha")][-1] == "interrupted"


async def test_plan_of_a_stopped_workspace_is_refused_as_its_upgrade(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={}) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        await host.stop("alpha")
        with pytest.raises(InvalidTransition, match="start it first"):
            await host.plan("alpha", tier="team")


async def test_a_stop_past_its_timeout_is_rolled_back_and_names_whom_it_was_for(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"slow": {"delay": 30, "delay_at": "stop"}}) as host:
        await host.provision("alpha", tier="slow", driver="fake")  # quick: only stop is slow
        with pytest.raises(CallTimeout):
            await host.stop("alpha", timeout=0.5, on_behalf_of="ana")
        record = await host.deployment("alpha")
        assert record.state == "ready" and not record.unconfirmed  # a confirmed rollback
        stop = (await host.logs("alpha"))[-1]
        assert (stop.verb, stop.on_behalf_of) == ("stop", "ana")
        assert stop.error is not None and stop.error.get("changed_nothing") is True


@pytest.mark.subprocess
def test_ctrl_c_cancels_a_stop_and_the_workspace_is_ready_as_before(cli: Cli) -> None:
    settings = cli.project / ".hearth" / "hearth.toml"
    settings.write_text(
        settings.read_text() + '[tiers.halting.driver_flags.fake]\ndelay = 60\ndelay_at = "stop"\n'
    )
    assert cli.run("provision", "alpha", "--tier", "halting", "--driver", "fake").returncode == 0
    stopping = subprocess.Popen(
        cli.argv("stop", "alpha", "--json"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: any(e["method"] == "stop" for e in cli.journal()))
    stopping.send_signal(signal.SIGINT)
    out, err = stopping.communicate(timeout=30)
    assert stopping.returncode == 130
    assert json.loads(out)["error"]["kind"] == "cancelled"
    assert err.strip().splitlines() == [
        "hearth: cancelled: interrupted by SIGINT; stop of 'alpha' was cancelled and rolled back; "
        "the workspace is ready as before"
    ]
    assert cli.json("status", "alpha")["state"] == "ready"
    assert [op["verb"] for op in cli.json("logs", "alpha")] == ["provision", "stop"]
