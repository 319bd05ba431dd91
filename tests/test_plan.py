"""``plan`` (what provision or upgrade would do, changing nothing) on the three adapters, through
the host and the CLI, the CLI's confirmation of a destructive upgrade, and early backend ids."""

from __future__ import annotations

import functools
import json
import os
import pty
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from hearth import Busy, Conflict, InvalidInput, Unsupported
from hearth._store._sqlite import SQLiteStore
from hearth_adapter_docker import DockerDriver
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    MemoryConnection,
    PlanResult,
    ProvisioningProfile,
)
from hearth_adaptersdk.testing import Peer, RemoteError, Reply, open_peer
from tests import helpers
from tests.conftest import install_script
from tests.test_cli import Cli, _wait_for
from tests.test_tfgrid import _profile as gridded
from tests.test_tfgrid import grid

# --- helpers ------------------------------------------------------------------------------------


async def plan(
    peer: Peer, slug: str, profile: ProvisioningProfile, ref: DeploymentRef | None = None
) -> PlanResult:
    reply = await peer.request(
        "plan",
        {
            "slug": slug,
            "ref": ref.model_dump(mode="json") if ref is not None else None,
            "profile": profile.model_dump(mode="json"),
        },
    )
    return PlanResult.model_validate(reply.result)


async def provision(peer: Peer, slug: str, profile: ProvisioningProfile) -> tuple[DeploymentRef, Reply]:
    """Provision through the wire, keeping the progress events (``backend_id`` is on one)."""
    reply = await peer.request(
        "provision", {"slug": slug, "profile": profile.model_dump(mode="json")}, timeout=60
    )
    return DeploymentRef.model_validate(reply.result), reply


def backend_ids(reply: Reply) -> list[str]:
    return [event["params"]["backend_id"] for event in reply.progress if "backend_id" in event["params"]]


def summary(result: PlanResult) -> list[tuple[str, str, bool]]:
    return [(action.action, action.resource, action.destructive) for action in result.actions]


def fake(tier: str = "solo", **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(tier=tier, driver="fake", driver_flags=flags)


# --- the SDK and the fake -----------------------------------------------------------------------


class NoPlan(FakeDriver):
    """The fake without ``plan``: what an adapter that predates it looks like."""

    plan = Driver.plan


async def test_plan_is_announced_only_by_drivers_that_implement_it() -> None:
    for driver, announced in ((FakeDriver(), True), (NoPlan(), False)):
        peer = Peer(MemoryConnection(driver))
        try:
            info = await peer.initialize()
            assert ("plan" in info.capabilities.methods) is announced
            reply = await peer.request("plan", {"slug": "alpha", "profile": fake().model_dump(mode="json")})
            assert (reply.error is None) is announced  # ref may be left out: a new workspace
            if not announced:
                assert reply.error is not None and reply.error["code"] == -32601
        finally:
            await peer.close()


async def test_the_fake_plans_provision_and_upgrade_and_changes_nothing(tmp_path: Path) -> None:
    async with open_peer(FakeDriver(), data_dir=tmp_path) as peer:
        new = await plan(peer, "alpha", fake())
        assert summary(new) == [("create", "workspace alpha", False)]
        assert not (tmp_path / "deployments" / "alpha.json").exists()  # a plan changes nothing
        ref, reply = await provision(peer, "alpha", fake())
        [backend_id] = backend_ids(reply)
        assert backend_id.startswith("fake-alpha-")
        assert (await peer.status(ref)).details["backend_id"] == backend_id
        assert summary(await plan(peer, "alpha", fake())) == [("no_op", "workspace alpha", False)]
        with pytest.raises(RemoteError) as conflict:
            await plan(peer, "alpha", fake("team"))
        assert conflict.value.kind == "conflict"  # as provision would answer
        upgrade = await plan(peer, "alpha", fake("team"), ref)
        assert summary(upgrade) == [("update", "workspace alpha", False)]
        assert "'solo' -> 'team'" in upgrade.actions[0].reason
        assert summary(await plan(peer, "alpha", fake(), ref)) == [("no_op", "workspace alpha", False)]
        wipe = await plan(peer, "alpha", fake("wipe", replace_on_upgrade=True), ref)
        assert summary(wipe) == [("replace", "workspace alpha", True)] and wipe.destructive
        with pytest.raises(RemoteError) as refused:
            await plan(peer, "alpha", fake("team", delya=1), ref)
        assert refused.value.kind == "invalid_profile"
        with pytest.raises(RemoteError) as mismatch:
            await plan(peer, "beta", fake(), ref)
        assert mismatch.value.code == -32602 and "is not the slug" in str(mismatch.value.data["errors"])
        assert (await peer.status(ref)).details["tier"] == "solo"  # none of it changed anything
        upgraded = await peer.upgrade(ref, fake("wipe", replace_on_upgrade=True))
        assert upgraded.created > ref.created  # replaced, as the plan said
        assert (await peer.status(ref)).details["backend_id"] != backend_id
        await peer.teardown(upgraded)
        with pytest.raises(RemoteError) as gone:
            await plan(peer, "alpha", fake("team"), upgraded)
        assert gone.value.kind == "invalid_transition" and gone.value.data["state"] == "tier_torn_down"


# --- docker -------------------------------------------------------------------------------------
IMAGE = os.environ.get("HEARTH_TEST_IMAGE", "hearth-test/httpd:1")


def boxed(tier: str = "solo", memory_mb: int = 64, **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(
        tier=tier,
        driver="docker",
        resource_caps={"cpu": 1, "memory_mb": memory_mb},
        driver_flags={"image": IMAGE, "port": 8080, "data_path": "/www", **flags},
    )


def labelled(engine: docker.DockerClient, slug: str) -> list[str]:
    label = {"label": [f"hearth.workspace_slug={slug}"]}
    return sorted(
        [f"container {c.name} {c.id}" for c in engine.containers.list(all=True, filters=label)]
        + [f"network {n.name}" for n in engine.networks.list(filters=label)]
        + [f"volume {v.name}" for v in engine.volumes.list(filters=label)]
    )


async def test_docker_plans_from_the_engine_and_changes_nothing(
    docker_url: str, engine: docker.DockerClient
) -> None:
    gone = DeploymentRef.model_validate(
        {
            "workspace_slug": "planned",
            "tier": "solo",
            "driver": "docker",
            "created": "2026-01-01T00:00:00Z",
            "last_status": "ready",
        }
    )
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        try:
            new = await plan(peer, "planned", boxed())
            assert summary(new) == [
                ("create", "network hearth-planned", False),
                ("create", "volume hearth-planned-data", False),
                ("create", "container hearth-planned", False),
            ]
            assert "64 MiB" in new.actions[-1].reason and IMAGE in new.actions[-1].reason
            assert labelled(engine, "planned") == []
            ref, reply = await provision(peer, "planned", boxed())
            assert backend_ids(reply) == [engine.containers.get("hearth-planned").id]
            before = labelled(engine, "planned")
            assert summary(await plan(peer, "planned", boxed())) == [
                ("no_op", "container hearth-planned", False)
            ]
            with pytest.raises(RemoteError) as conflict:
                await plan(peer, "planned", boxed("team"))
            assert conflict.value.kind == "conflict"
            upgrade = await plan(peer, "planned", boxed("team", memory_mb=128), ref)
            assert summary(upgrade) == [
                ("replace", "container hearth-planned", False),
                ("no_op", "network hearth-planned", False),
                ("no_op", "volume hearth-planned-data", False),
            ]
            reason = upgrade.actions[0].reason
            assert "tier 'solo' -> 'team'" in reason and "memory 64 MiB -> 128 MiB" in reason
            assert not upgrade.destructive  # the volume outlives the container
            with pytest.raises(RemoteError) as refused:
                await plan(peer, "planned", boxed(memory_mb=4_000_000), ref)
            assert refused.value.kind == "invalid_profile"
            assert labelled(engine, "planned") == before  # nothing was created, replaced or removed
            upgraded, reply = await _upgrade(peer, ref, boxed("team", memory_mb=128))
            assert backend_ids(reply) == [engine.containers.get("hearth-planned").id]
            assert upgraded.tier == "team"
        finally:
            await peer.teardown(gone)
        assert labelled(engine, "planned") == []


async def _upgrade(
    peer: Peer, ref: DeploymentRef, profile: ProvisioningProfile
) -> tuple[DeploymentRef, Reply]:
    reply = await peer.request(
        "upgrade",
        {"ref": ref.model_dump(mode="json"), "profile": profile.model_dump(mode="json")},
        timeout=60,
    )
    return DeploymentRef.model_validate(reply.result), reply


# --- tfgrid, on the simulator -------------------------------------------------------------------


async def test_tfgrid_plans_a_resize_as_a_destructive_replace_and_changes_nothing(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        secret = tmp_path / "data" / "secrets" / "alpha.secret"
        new = await plan(peer, "alpha", gridded())
        assert summary(new) == [
            ("create", f"secret {secret}", False),
            ("create", "vm hearth-alpha", False),
            ("create", "gateway alpha", False),
        ]
        assert (
            "1 slice(s) on tfnode-" in new.actions[1].reason
            and "chosen by placement" in new.actions[1].reason
        )
        assert "to port 8080" in new.actions[2].reason
        assert simulator.vms == {} and "deploy_vm" not in simulator.calls and not secret.exists()
        ref, reply = await provision(peer, "alpha", gridded())
        [vm] = simulator.vms.values()
        assert backend_ids(reply) == [vm.id]
        done = [("no_op", "vm hearth-alpha", False), ("no_op", "gateway alpha", False)]
        assert summary(await plan(peer, "alpha", gridded())) == done
        with pytest.raises(RemoteError) as conflict:
            await plan(peer, "alpha", gridded("team"))
        assert conflict.value.kind == "conflict"
        renamed = await plan(peer, "alpha", gridded("renamed"), ref)
        assert summary(renamed) == [*done, ("update", "workspace alpha", False)]
        with pytest.raises(RemoteError) as refused:  # as the upgrade refuses it
            await plan(peer, "alpha", gridded("team", memory_mb=8192), ref)
        assert refused.value.code == -32022 and "destroys its disk" in refused.value.message
        allowed = gridded("team", memory_mb=8192, allow_destructive_upgrade=True)
        resize = await plan(peer, "alpha", allowed, ref)
        assert summary(resize) == [("replace", "vm hearth-alpha", True), ("replace", "gateway alpha", False)]
        assert resize.destructive
        reason = resize.actions[0].reason
        assert "slices 1 -> 2" in reason and "its disk is destroyed" in reason and "2 slice(s)" in reason
        [same] = simulator.vms.values()
        assert (same.id, same.slices, same.state) == (vm.id, 1, "running")
        assert simulator.calls.count("deploy_vm") == 1 and "delete_vm" not in simulator.calls
        assert json.loads((tmp_path / "data" / "workspaces" / "alpha.json").read_text())["tier"] == "solo"
        await peer.teardown(ref)
        with pytest.raises(RemoteError) as gone:
            await plan(peer, "alpha", allowed, ref)
        assert gone.value.kind == "invalid_transition" and gone.value.data["state"] == "absent"


# --- the host -----------------------------------------------------------------------------------


class OtherNoPlan(NoPlan):
    name: ClassVar[str] = "noplan"


#: The fake and, as ``noplan``, a driver without ``plan``, both in process.
make_host = functools.partial(helpers.make_host, drivers={"noplan": OtherNoPlan})


async def test_host_plan_checks_like_the_verbs_and_records_nothing(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(InvalidInput, match="needs a driver"):
            await host.plan("alpha", tier="solo")
        with pytest.raises(InvalidInput, match="not a workspace slug"):
            await host.plan("Not A Slug", tier="solo", driver="fake")
        with pytest.raises(InvalidInput, match="tier"):
            await host.plan("alpha", tier="nope", driver="fake")
        with pytest.raises(InvalidInput, match="positive number of seconds"):
            await host.plan("alpha", tier="solo", driver="fake", timeout=0)
        assert summary(await host.plan("alpha", tier="solo", driver="fake")) == [
            ("create", "workspace alpha", False)
        ]
        assert await host.deployments() == [] and await host.operations() == []
        await host.provision("alpha", tier="solo", driver="fake")
        team = await host.plan("alpha", tier="team")  # the record's driver, an upgrade's plan
        assert summary(team) == [("update", "workspace alpha", False)]
        assert (await host.plan("alpha", tier="wipe", driver="fake")).destructive
        with pytest.raises(Conflict, match="another driver") as moved:
            await host.plan("alpha", tier="solo", driver="noplan")
        assert moved.value.existing is not None and moved.value.existing.driver == "fake"
        assert [op.verb for op in await host.operations()] == ["provision"]
        assert [(d.tier, d.state) for d in await host.deployments()] == [("solo", "ready")]
        await host.provision("beta", tier="solo", driver="noplan")
        with pytest.raises(Unsupported, match="does not announce plan") as unsupported:
            await host.plan("beta", tier="team")
        assert unsupported.value.data["method"] == "plan"
        await host.teardown("alpha")
        again = await host.plan("alpha", tier="solo")  # a torn-down slug: provision again (--reuse)
        assert [action.action for action in again.actions] == ["create"]
        await host.teardown("beta")


async def test_a_backend_id_in_progress_is_on_the_record_at_once(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        named: list[str] = []
        operation = await host.start_provision(
            "slow",
            tier="glacial",
            driver="fake",
            on_progress=lambda event: named.append(event.backend_id) if event.backend_id else None,
        )
        async for event in host.watch(slug="slow"):
            if event.kind == "progress" and event.message == "creating workspace slow":
                break  # the store wrote the backend id in the same transaction as this event
        record = await host.deployment("slow")
        assert (record.state, record.backend_id) == ("provisioning", named[0])
        assert named[0].startswith("fake-slow-")
        with pytest.raises(Busy, match="busy"):
            await host.plan("slow", tier="solo")
        await operation.cancel("enough")
        assert (await operation.wait(timeout=30)).state == "cancelled"

        await host.provision("alpha", tier="solo", driver="fake")
        first = (await host.deployment("alpha")).backend_id
        assert first is not None and (await host.status("alpha")).details["backend_id"] == first
        await host.upgrade("alpha", tier="wipe")  # replaced: a new backend id
        second = (await host.deployment("alpha")).backend_id
        assert second not in (None, first) and (await host.status("alpha")).details["backend_id"] == second
        await host.upgrade("alpha", tier="team")  # in place: the id stays
        assert (await host.deployment("alpha")).backend_id == second


async def test_the_store_migrates_to_schema_4_with_a_backend_id_column(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 4
        columns = [row[1] for row in db.execute("PRAGMA table_info(deployments)")]
    finally:
        db.close()
    assert "backend_id" in columns


# --- the CLI ------------------------------------------------------------------------------------
SETTINGS = """
[tiers.glacial.driver_flags.fake]
delay = 60
[tiers.wipe.driver_flags.fake]
replace_on_upgrade = true
[tiers.wipe.driver_flags.noplan]
replace_on_upgrade = true
"""
NOPLAN = """
from typing import ClassVar

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import Driver, serve


class NoPlan(FakeDriver):
    name: ClassVar[str] = "noplan"
    plan = Driver.plan


serve(NoPlan)
"""


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    made = Cli(tmp_path, venv_bin)
    (made.project / ".hearth" / "hearth.toml").write_text(SETTINGS)
    folder = tmp_path / "noplan-bin"
    folder.mkdir(mode=0o755)
    install_script(folder, "hearth-adapter-noplan", NOPLAN)
    made.env["PATH"] = f"{folder}{os.pathsep}{made.env['PATH']}"
    return made


@pytest.mark.subprocess
def test_hearth_plan_shows_what_a_verb_would_do(cli: Cli) -> None:
    [create] = cli.json("plan", "alpha", "--tier", "solo", "--driver", "fake")["actions"]
    assert (create["action"], create["resource"], create["destructive"]) == (
        "create",
        "workspace alpha",
        False,
    )
    code, line, error = cli.error("plan", "alpha", "--tier", "solo")
    assert (code, error["kind"]) == (2, "invalid_input") and "needs a driver" in line
    assert cli.json("ls") == []
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    [update] = cli.json("plan", "alpha", "--tier", "team")["actions"]
    assert update["action"] == "update" and "'solo' -> 'team'" in update["reason"]
    shown = cli.run("plan", "alpha", "--tier", "wipe")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        "alpha to tier wipe:",
        "  replace  workspace alpha  (destructive)",
    ]
    assert shown.stdout.splitlines()[-1] == "destructive: data would be destroyed"
    code, line, error = cli.error("plan", "beta", "--tier", "solo", "--driver", "noplan")
    assert (code, error["kind"]) == (1, "unsupported") and "does not announce plan" in line
    assert [e["method"] for e in cli.journal()] == ["plan", "provision", "plan", "plan"]
    assert [d["tier"] for d in cli.json("ls")] == ["solo"]


@pytest.mark.subprocess
def test_off_a_terminal_a_destructive_upgrade_runs_as_before_without_a_question(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    assert cli.json("upgrade", "alpha", "--tier", "wipe")["tier"] == "wipe"  # a script: not asked
    assert [e["method"] for e in cli.journal()] == ["provision", "upgrade"]  # nothing to ask: no plan
    cli.json("upgrade", "alpha", "--tier", "solo", "--yes")
    assert cli.json("upgrade", "alpha", "--tier", "team")["tier"] == "team"  # not destructive: no question
    assert cli.json("upgrade", "alpha", "--tier", "wipe", "--yes")["tier"] == "wipe"
    verbs = [op["verb"] for op in cli.json("logs", "alpha")]
    assert verbs == ["provision", "upgrade", "upgrade", "upgrade", "upgrade"]
    # an adapter that does not announce plan is not asked: the upgrade goes ahead as before
    cli.json("provision", "beta", "--tier", "solo", "--driver", "noplan")
    assert cli.json("upgrade", "beta", "--tier", "wipe")["tier"] == "wipe"


def _upgrade_on_a_terminal(cli: Cli, answer: bytes) -> tuple[int, str]:
    """``hearth upgrade alpha --tier wipe`` with a terminal as stdin; ``answer`` once it asks."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        cli.argv("upgrade", "alpha", "--tier", "wipe"),
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
    )
    os.close(follower)
    assert process.stderr is not None
    asked = b""
    while b"[y/N]" not in asked:  # the question ends without a newline
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"it exited without asking: {asked!r}"
        asked += chunk
    os.write(leader, answer + b"\n")
    _, rest = process.communicate(timeout=60)
    os.close(leader)
    return process.returncode, (asked + rest).decode()


@pytest.mark.subprocess
def test_a_destructive_upgrade_asks_on_a_terminal(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    code, said = _upgrade_on_a_terminal(cli, b"n")
    assert "upgrade workspace alpha to tier wipe? It is destructive: replace workspace alpha" in said
    assert code == 1 and said.strip().endswith("hearth: cancelled: not confirmed; nothing was changed")
    assert [d["tier"] for d in cli.json("ls")] == ["solo"]
    assert "upgrade" not in [e["method"] for e in cli.journal()]
    code, said = _upgrade_on_a_terminal(cli, b"y")
    assert code == 0, said
    assert [d["tier"] for d in cli.json("ls")] == ["wipe"]


@pytest.mark.subprocess
def test_the_backend_id_is_on_the_record_after_a_kill_9_mid_provision(cli: Cli) -> None:
    store = cli.home / "hearth.db"

    def stored() -> str | None:
        if not store.exists():
            return None
        db = sqlite3.connect(store, timeout=30)
        try:
            row = db.execute(
                "SELECT backend_id FROM deployments WHERE slug = 'alpha' AND archived = 0"
            ).fetchone()
        except sqlite3.OperationalError:  # not created (or migrated) yet
            return None
        finally:
            db.close()
        return row[0] if row else None

    host = subprocess.Popen(
        cli.argv("provision", "alpha", "--tier", "glacial", "--driver", "fake"),
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: stored() is not None)
    host.send_signal(signal.SIGKILL)
    host.wait()
    backend_id = stored()
    assert backend_id is not None and backend_id.startswith("fake-alpha-")
    [record] = cli.json("ls")
    assert record["last_status"] == "provisioning"
    status = cli.json("status", "alpha")  # this access settles the record; the id stays on it
    assert status["details"]["recorded_state"] == "failed"
    assert status["details"]["backend_id"] == backend_id
    assert stored() == backend_id
