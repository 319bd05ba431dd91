"""``forget`` and ``adopt`` (issue 11): forget drops a record and leaves the backend alone, the
next reconcile reports what it left as an orphan, and adopt turns that orphan back into a record.
The library with the fake driver in process, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hearth import Busy, Conflict, Deployment, InvalidInput, NotFound
from tests.helpers import make_host
from tests.test_cli import Cli
from tests.test_operations import calls, first_progress


async def test_forget_leaves_the_backend_and_adopt_takes_the_orphan_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with make_host(tmp_path) as host:
        ref = await host.provision("alpha", tier="solo", driver="fake")
        await host.provision("kept", tier="solo", driver="fake")

        forgotten = await host.forget("alpha")
        assert isinstance(forgotten, Deployment)
        assert (forgotten.slug, forgotten.state, forgotten.ref) == ("alpha", "ready", ref)
        assert [d.slug for d in await host.deployments()] == ["kept"]
        with pytest.raises(NotFound, match="no workspace 'alpha'"):
            await host.deployment("alpha")

        # the backend was left exactly as it was: the fake still lists it, nothing was torn down
        async with host.supervisor.use("fake") as client:
            listed = await client.list()
        assert sorted(r.workspace_slug for r in listed) == ["alpha", "kept"]
        assert calls(home, "teardown") == []
        assert (home / "data" / "fake" / "deployments" / "alpha.json").exists()

        report = await host.reconcile()
        assert [o.workspace_slug for o in report.orphans] == ["alpha"]
        assert (report.ghosts, report.resolved, report.busy) == ([], [], [])
        with pytest.raises(NotFound):  # reconcile reports orphans, it never records them
            await host.deployment("alpha")

        adopted = await host.adopt("alpha", driver="fake", tier="solo")
        assert (adopted.slug, adopted.state, adopted.tier, adopted.driver) == (
            "alpha",
            "ready",
            "solo",
            "fake",
        )
        assert adopted.reason is None and not adopted.unconfirmed
        assert adopted.ref is not None
        assert (adopted.ref.endpoint, adopted.ref.last_status) == ("fake://alpha", "ready")
        assert adopted.generation == forgotten.generation + 1
        assert await host.deployment("alpha") == adopted
        again = await host.reconcile()
        assert (again.orphans, again.ghosts, again.resolved) == ([], [], [])
        assert (await host.status("alpha")).state == "ready"
        operations = [(o.verb, o.state) for o in await host.logs("alpha")]
        assert operations == [("provision", "succeeded"), ("forget", "succeeded"), ("adopt", "succeeded")]

        # an adopted workspace is managed like any other
        upgraded = await host.upgrade("alpha", tier="team")
        assert upgraded.tier == "team"
        await host.teardown("alpha")
        assert (await host.deployment("alpha")).state == "tier_torn_down"
    assert len(calls(home, "provision", "alpha")) == 1  # nothing was provisioned again


async def test_adopt_and_forget_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(NotFound, match="lists no deployment 'ghost'") as unknown:
            await host.adopt("ghost", driver="fake", tier="solo")
        assert unknown.value.kind == "not_found"

        ref = await host.provision("alpha", tier="solo", driver="fake")
        with pytest.raises(Conflict, match="already has a record") as live:
            await host.adopt("alpha", driver="fake", tier="solo")
        assert live.value.kind == "conflict" and live.value.existing == ref
        assert (await host.deployment("alpha")).generation == 1  # untouched

        await host.forget("alpha")
        with pytest.raises(Conflict, match="runs tier 'solo', not 'team'") as other_tier:
            await host.adopt("alpha", driver="fake", tier="team")
        assert other_tier.value.kind == "conflict"
        with pytest.raises(InvalidInput):
            await host.adopt("alpha", driver="fake", tier="no-such-tier")
        with pytest.raises(InvalidInput):
            await host.adopt("Not A Slug", driver="fake", tier="solo")
        with pytest.raises(NotFound):
            await host.deployment("alpha")  # none of the refusals recorded anything

        with pytest.raises(NotFound, match="no workspace 'nope'") as missing:
            await host.forget("nope")
        assert missing.value.kind == "not_found"


async def test_reconcile_reports_the_orphan_forget_left_even_when_no_record_remains(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake")
        await host.forget("alpha")  # the driver's last record
        assert await host.deployments() == []
        report = await host.reconcile()
        assert [o.workspace_slug for o in report.orphans] == ["alpha"]
        dry = await host.reconcile(dry_run=True)
        assert dry.drift and [o.workspace_slug for o in dry.orphans] == ["alpha"]


async def test_forget_of_a_slug_with_a_running_operation_is_busy_at_once(tmp_path: Path) -> None:
    # a short lock wait: if forget waits for the slug's lock instead of refusing, it fails fast
    async with make_host(tmp_path, lock_wait=3, drain_grace=1) as host:
        running = await host.start_provision("alpha", tier="slow", driver="fake")
        await first_progress(running)
        with pytest.raises(Busy, match=rf"operation #{running.id}"):
            await host.forget("alpha")
        assert (await host.operation(running.id)).state == "running"
        await running.cancel(reason="the test is over")
        assert (await running.wait(timeout=20)).state == "cancelled"


async def test_adopt_of_a_slug_with_a_running_operation_is_refused_at_once(tmp_path: Path) -> None:
    async with make_host(tmp_path, lock_wait=3, drain_grace=1) as host:
        running = await host.start_provision("alpha", tier="slow", driver="fake")
        await first_progress(running)
        with pytest.raises((Busy, Conflict)):  # it has a record (provisioning) and a running operation
            await host.adopt("alpha", driver="fake", tier="slow")
        assert (await host.operation(running.id)).state == "running"
        await running.cancel(reason="the test is over")
        assert (await running.wait(timeout=20)).state == "cancelled"


# --- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    return Cli(tmp_path, venv_bin)


@pytest.mark.subprocess
def test_cli_forget_asks_for_yes_without_a_terminal_and_adopt_prints_the_record(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")

    refused = cli.run("forget", "alpha")  # stdin is not a terminal, and no --yes
    assert refused.returncode == 2 and refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert line == "hearth: invalid_input: forget asks for confirmation: on no terminal, pass --yes"
    code, _, error = cli.error("forget", "alpha")
    assert code == 2 and error["kind"] == "invalid_input"
    assert [r["workspace_slug"] for r in cli.json("ls")] == ["alpha"]  # nothing changed

    forgotten = cli.json("forget", "alpha", "--yes")
    assert (forgotten["slug"], forgotten["state"], forgotten["driver"]) == ("alpha", "ready", "fake")
    assert cli.json("ls") == []

    adopted = cli.json("adopt", "alpha", "--driver", "fake", "--tier", "solo")
    assert (adopted["slug"], adopted["state"], adopted["tier"], adopted["driver"]) == (
        "alpha",
        "ready",
        "solo",
        "fake",
    )
    assert adopted["ref"]["endpoint"] == "fake://alpha"
    [listed] = cli.json("ls")
    assert (listed["workspace_slug"], listed["last_status"]) == ("alpha", "ready")
    clean = cli.run("reconcile", "--dry-run", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["orphans"] == []

    code, line, error = cli.error("adopt", "alpha", "--driver", "fake", "--tier", "solo")
    assert code == 1 and error["kind"] == "conflict" and "already has a record" in line
    code, _, error = cli.error("adopt", "nothing", "--driver", "fake", "--tier", "solo")
    assert code == 2 and error["kind"] == "not_found"
    assert [e["method"] for e in cli.journal()].count("provision") == 1


@pytest.mark.subprocess
def test_cli_forget_of_an_unknown_slug_is_not_found(cli: Cli) -> None:
    code, line, error = cli.error("forget", "nope", "--yes")
    assert code == 2 and error["kind"] == "not_found"
    assert line.startswith("hearth: not_found: no workspace 'nope'")
