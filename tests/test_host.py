"""The lifecycle host, with the fake driver in process (real SQLite, real locks)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from pathlib import Path

import pytest

from hearth import (
    AdapterCrashed,
    BackendFailure,
    CallTimeout,
    Conflict,
    Host,
    InvalidInput,
    InvalidTransition,
    Progress,
    Tier,
)
from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import read_journal
from hearth_adaptersdk import MemoryConnection, ResourceCaps
from tests import helpers
from tests.helpers import left_by_a_dead_host

#: Only the built-in tiers, and those a test names (the fake's flags by tier name).
make_host = functools.partial(helpers.make_host, tiers={})


def provisions(tmp_path: Path) -> int:
    return sum(e["method"] == "provision" for e in read_journal(tmp_path / "home" / "data" / "fake"))


async def test_a_workspace_goes_through_its_whole_lifecycle(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        events: list[Progress] = []
        ref = await host.provision("alpha", tier="solo", driver="fake", on_progress=events.append)
        assert ref.endpoint == "fake://alpha" and events
        assert (await host.status("alpha")).state == "ready"
        upgraded = await host.upgrade("alpha", tier="team")
        assert (upgraded.workspace_slug, upgraded.tier) == ("alpha", "team")
        assert [r.tier for r in await host.list()] == ["team"]
        await host.teardown("alpha")
        assert (await host.status("alpha")).state == "tier_torn_down"
        await host.teardown("alpha")  # idempotent
        assert [op.verb for op in await host.logs("alpha")] == ["provision", "upgrade", "teardown"]


async def test_the_same_triple_returns_the_stored_ref_without_an_adapter_call(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        first = await host.provision("alpha", tier="solo", driver="fake")
        assert await host.provision("alpha", tier="solo", driver="fake") == first
    assert provisions(tmp_path) == 1


async def test_another_tier_on_a_ready_slug_is_a_conflict_naming_the_existing_ref(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        ref = await host.provision("alpha", tier="solo", driver="fake")
        with pytest.raises(Conflict, match="use upgrade") as caught:
            await host.provision("alpha", tier="team", driver="fake")
        assert caught.value.existing == ref
    assert provisions(tmp_path) == 1


async def test_a_torn_down_slug_stays_torn_down_unless_reused(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        await host.teardown("alpha")
        with pytest.raises(InvalidTransition, match="reuse") as caught:
            await host.provision("alpha", tier="solo", driver="fake")
        assert caught.value.state == "tier_torn_down"
        ref = await host.provision("alpha", tier="solo", driver="fake", reuse=True)
        assert ref.last_status == "ready"
        generations = [op.generation for op in await host.logs("alpha")]
        assert generations == [1, 1, 2]


async def test_a_failed_provision_is_recorded_with_its_logs_and_never_retried(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"flaky": {"fail_at": "provision", "keep_partial": True}}) as host:
        with pytest.raises(BackendFailure) as caught:
            await host.provision("alpha", tier="flaky", driver="fake")
        assert not caught.value.rolled_back  # a real failure after partial work: D8
        [record] = await host.deployments()
        assert record.state == "failed" and "failed as asked" in (record.reason or "")
        [operation] = await host.logs("alpha")
        assert operation.outcome == "failed" and operation.error is not None
        assert operation.error["kind"] == "backend_failure"
        assert any(line.level == "error" and "injected failure" in line.message for line in operation.log)
        with pytest.raises(InvalidTransition, match="it is failed"):
            await host.upgrade("alpha", tier="team")
        assert (await host.status("alpha")).state == "failed"  # the backend agrees
    assert provisions(tmp_path) == 1  # D8: the host did not retry
    async with make_host(tmp_path, tiers={"flaky": {}}) as host:  # the cause is fixed: a person re-runs it
        ref = await host.provision("alpha", tier="flaky", driver="fake")
        assert ref.last_status == "ready"
        assert (await host.status("alpha")).state == "ready"


async def test_a_rolled_back_first_provision_leaves_no_record_in_the_way(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"flaky": {"fail_at": "provision"}}) as host:
        with pytest.raises(BackendFailure) as caught:
            await host.provision("alpha", tier="flaky", driver="fake")
        assert caught.value.rolled_back
        assert await host.deployments() == []
        [operation] = await host.logs("alpha")  # the failure stays in the logs
        assert operation.outcome == "failed" and operation.error is not None
        assert any("injected failure" in line.message for line in operation.log)
        with pytest.raises(InvalidInput, match="ended failed"):
            await host.status("alpha")
        ref = await host.provision("alpha", tier="team", driver="fake")  # another tier: no pin
        assert ref.tier == "team"


async def test_bad_input_fails_before_anything_happens(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput, match="not a workspace slug"):
            await host.provision("Alpha", tier="solo", driver="fake")
        with pytest.raises(InvalidInput, match="choose one of solo, studio, team"):
            await host.provision("alpha", tier="mega", driver="fake")
        with pytest.raises(InvalidInput, match=r"available: .*fake"):
            await host.provision("alpha", tier="solo", driver="nosuchdriver")
        with pytest.raises(InvalidInput, match="no workspace 'ghost'"):
            await host.status("ghost")
        assert await host.deployments() == []
    assert provisions(tmp_path) == 0


async def test_a_timeout_cancels_the_adapter_and_the_record_says_so(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"slow": {"delay": 60}}) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        with pytest.raises(CallTimeout, match="rolled back") as caught:
            await host.upgrade("alpha", tier="slow", timeout=0.2)
        assert caught.value.rolled_back is True
        [record] = await host.deployments()
        assert (record.state, record.tier) == ("ready", "solo")  # the old one still serves
        assert [op.outcome for op in await host.logs("alpha")] == ["succeeded", "cancelled"]
        status = await host.status("alpha")
        assert status.state == "ready" and "changed nothing" in (status.message or "")


async def test_task_cancellation_cancels_the_adapter_and_is_recorded(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"slow": {"delay": 60}}) as host:
        started = asyncio.Event()
        task = asyncio.create_task(
            host.provision("alpha", tier="slow", driver="fake", on_progress=lambda _: started.set())
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await host.deployments() == []  # rolled back: nothing in the way of the next provision
        [operation] = await host.logs("alpha")
        assert operation.outcome == "cancelled" and operation.error is not None
        assert "cancelled by the caller" in operation.error["message"]
        assert operation.error["rolled_back"] is True
        assert host.interruptions == ["provision of 'alpha' was cancelled and rolled back"]


async def test_concurrent_provisions_of_one_slug_call_the_adapter_once(tmp_path: Path) -> None:
    async with make_host(tmp_path, tiers={"slow": {"delay": 0.2}}) as host:
        refs = await asyncio.gather(*(host.provision("alpha", tier="slow", driver="fake") for _ in range(6)))
        assert all(ref == refs[0] for ref in refs)
        assert len(await host.deployments()) == 1
    assert provisions(tmp_path) == 1


async def test_reconcile_reports_ghosts_and_orphans_and_deletes_nothing(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("ghost", tier="solo", driver="fake")
        await host.provision("kept", tier="solo", driver="fake")
        (tmp_path / "home" / "data" / "fake" / "deployments" / "ghost.json").unlink()
        async with host.supervisor.use("fake") as client:  # a deployment made behind the host's back
            from hearth import ProvisioningProfile

            await client.provision("stray", ProvisioningProfile(tier="solo", driver="fake"))
        report = await host.reconcile()
        assert report.ghosts == ["ghost"]
        assert [ref.workspace_slug for ref in report.orphans] == ["stray"]
        states = {d.slug: d.state for d in await host.deployments()}
        assert states == {"ghost": "failed", "kept": "ready"}


async def test_reconcile_resolves_a_record_left_transient_by_a_dead_host(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(
            host, record.model_copy(update={"state": "provisioning", "ref": None}), "provision"
        )
        report = await host.reconcile()
        assert report.resolved == [("alpha", "provisioning", "ready")]
        [record] = await host.deployments()
        assert record.state == "ready" and record.ref is not None
        assert [op.outcome for op in await host.logs("alpha")] == ["succeeded", "interrupted"]


async def test_the_next_verb_on_a_slug_a_dead_host_left_transient_settles_it_first(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        [record] = await host.deployments()
        await left_by_a_dead_host(
            host, record.model_copy(update={"state": "provisioning", "ref": None}), "provision"
        )
        await host.teardown("alpha")  # no "run hearth reconcile": the host settles it from status
        [record] = await host.deployments()
        assert record.state == "tier_torn_down"
        assert [op.outcome for op in await host.logs("alpha")] == ["succeeded", "interrupted", "succeeded"]


async def test_an_idle_adapter_is_closed_and_started_again_on_demand(tmp_path: Path) -> None:
    host = Host(
        project_dir=tmp_path,
        home=tmp_path / "home",
        idle_timeout=0.01,
        in_process={"fake": lambda: MemoryConnection(FakeDriver())},
    )
    async with host:
        await host.provision("alpha", tier="solo", driver="fake")
        for _ in range(500):  # the idle timer fires on the loop; wait for it, bounded
            if not host.supervisor.running():
                break
            await asyncio.sleep(0.01)
        assert host.supervisor.running() == {}
        assert (await host.status("alpha")).state == "ready"


@pytest.mark.subprocess
async def test_one_adapter_process_serves_concurrent_callers_and_restarts_after_a_crash(
    tmp_path: Path, venv_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    tiers = {"slow": Tier("slow", ResourceCaps(cpu=1), {"fake": {"delay": 60}})}
    async with Host(project_dir=tmp_path, home=tmp_path / "home", tiers=tiers) as host:
        await asyncio.gather(*(host.provision(f"w{i}", tier="solo", driver="fake") for i in range(4)))
        pids = {e["pid"] for e in read_journal(tmp_path / "home" / "data" / "fake")}
        assert len(pids) == 1
        started = asyncio.Event()
        slow = asyncio.create_task(
            host.provision("doomed", tier="slow", driver="fake", on_progress=lambda _: started.set())
        )
        await started.wait()
        os.kill(pids.pop(), signal.SIGKILL)
        with pytest.raises(AdapterCrashed):
            await slow
        assert (await host.status("w0")).state == "ready"  # a new adapter process
        # the fake journals a read with its next write (reads leave data_dir as they found it)
        await host.provision("w4", tier="solo", driver="fake")
        restarted = {e["pid"] for e in read_journal(tmp_path / "home" / "data" / "fake")}
        assert len(restarted) == 2
        assert [d.state for d in await host.deployments() if d.slug == "doomed"] == ["failed"]


async def test_a_slug_busy_in_another_host_is_busy_at_once_or_joined_within_the_timeout(
    tmp_path: Path,
) -> None:
    from hearth import Busy, CallTimeout

    async with (
        make_host(tmp_path, tiers={"slow": {"delay": 60}}) as first,
        make_host(tmp_path, tiers={"slow": {"delay": 60}}) as second,
    ):
        started = asyncio.Event()
        task = asyncio.create_task(
            first.provision("alpha", tier="slow", driver="fake", on_progress=lambda _: started.set())
        )
        await started.wait()
        with pytest.raises(Busy, match=r"operation #1 \(provision\) is running"):
            await second.provision("alpha", tier="solo", driver="fake")  # other arguments: refused
        with pytest.raises(CallTimeout, match="still running"):  # the same: joined, within its bound
            await second.provision("alpha", tier="slow", driver="fake", timeout=0.2)
        assert not task.done()  # the joiner's timeout did not touch the work
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the lock is free again, and the rolled-back slug is free: the second host provisions it
        ref = await second.provision("alpha", tier="solo", driver="fake")
        assert ref.last_status == "ready"


def test_config_keys_ending_in_env_name_the_variables_an_adapter_may_see() -> None:
    from hearth._adapters._supervisor import named_variables

    assert named_variables(
        {
            "token_env": "GRID_TOKEN",
            "pass_env": ["DOCKER_HOST", 3],
            "url": "unix:///x",
            "environment": "NOT_THIS",
        }
    ) == ["GRID_TOKEN", "DOCKER_HOST"]
