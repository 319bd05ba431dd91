"""The tfgrid driver against the shipped ComputeService simulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from hearth_adapter_tfgrid import Simulator, TfgridDriver
from hearth_adapter_tfgrid.compute import ComputeClient, ComputeError, Endpoint
from hearth_adaptersdk import ProvisioningProfile
from hearth_adaptersdk.conformance import KitOptions, run_conformance
from hearth_adaptersdk.testing import Peer, RemoteError, open_peer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnYNXg+KtbLdjvZbHcsS47WEm6JfEDyh1QKwP3ZUW7O me@laptop"


def _profile(tier: str = "solo", memory_mb: int = 4096, **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(tier=tier, driver="tfgrid", resource_caps={"cpu": 1, "memory_mb": memory_mb},
                               driver_flags={"ssh_keys": [KEY], **flags})


@asynccontextmanager
async def grid(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Simulator, Peer]]:
    """A simulator on a socket, and an in-memory tfgrid adapter configured for it."""
    simulator = Simulator(deploy_delay=0.1)
    socket = tmp_path / "rpc.sock"
    await simulator.start(socket)
    try:
        async with open_peer(TfgridDriver(), data_dir=tmp_path / "data",
                             config={"socket": str(socket), "poll_interval": 0.02, **config}) as peer:
            yield simulator, peer
    finally:
        await simulator.stop()


@pytest.mark.subprocess
async def test_the_conformance_kit_passes_on_the_simulator(tmp_path: Path, venv_bin: Path) -> None:
    simulator = Simulator(deploy_delay=0.1)
    await simulator.start(tmp_path / "rpc.sock")
    try:
        options = KitOptions(
            config={"socket": str(tmp_path / "rpc.sock"), "poll_interval": 0.02},
            profile=_profile("conformance").model_dump(mode="json"),
            refused_profile=_profile("huge", memory_mb=400_000).model_dump(mode="json"),
            failing_profile=_profile("bad", image="not-a-flist").model_dump(mode="json"),
            timeout=60)
        report = await run_conformance(venv_bin / "hearth-adapter-tfgrid", options)
    finally:
        await simulator.stop()
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()
    assert simulator.vms == {} and simulator.gateways == {}


async def test_a_workspace_is_a_vm_behind_a_name_gateway_with_a_private_secret(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        assert ref.endpoint == "https://alpha.gw1.sim.grid.tf"
        assert ref.secrets_vault_path is not None
        vault = Path(ref.secrets_vault_path)
        assert vault.stat().st_mode & 0o777 == 0o600
        [vm] = simulator.vms.values()
        assert (vm.name, vm.slices, vm.state) == ("hearth-alpha", 1, "running")
        assert vm.owner != vault.read_text()  # the service keeps a hash, never the secret
        assert await peer.provision("alpha", _profile()) == ref
        assert (await peer.status(ref)).state == "ready"
        await peer.teardown(ref)
        assert simulator.vms == {} and simulator.gateways == {}
        assert not vault.exists()
        assert (await peer.status(ref)).state == "absent"
        await peer.teardown(ref)  # idempotent


async def test_caps_that_need_more_slices_than_the_node_has_show_the_arithmetic(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        with pytest.raises(RemoteError) as caught:
            await peer.provision("big", _profile(memory_mb=20_000, node="tfnode-2"))
        assert caught.value.kind == "invalid_profile"
        [error] = caught.value.data["errors"]
        assert "needs 5 slices" in error and "20000 MB / 4096 MB per slice = 5" in error
        assert "tfnode-2 has 4" in error
        assert simulator.calls.count("deploy_vm") == 0


async def test_exhausted_capacity_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        await peer.provision("one", _profile(memory_mb=12_000, node="tfnode-2"))
        with pytest.raises(RemoteError) as caught:
            await peer.provision("two", _profile(memory_mb=12_000, node="tfnode-2"))
        assert caught.value.kind == "backend_failure"
        assert "not enough free slices on tfnode-2: asked 3, free 1" in caught.value.message
        assert [vm.name for vm in simulator.vms.values()] == ["hearth-one"]


async def test_a_wrong_secret_is_an_error_and_nothing_is_deleted(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        assert ref.secrets_vault_path is not None
        Path(ref.secrets_vault_path).write_text("not-the-secret")
        with pytest.raises(RemoteError) as caught:
            await peer.teardown(ref)
        assert caught.value.kind == "backend_failure" and "does not own" in caught.value.message
        assert [vm.state for vm in simulator.vms.values()] == ["running"]
        assert len(simulator.gateways) == 1


@pytest.mark.parametrize("fault", ["fail_deploy", "no_ip"])
async def test_a_deploy_that_fails_or_never_gets_an_ip_is_rolled_back(tmp_path: Path, fault: str) -> None:
    async with grid(tmp_path, deploy_timeout=0.5) as (simulator, peer):
        simulator.sim_faults(**{fault: True})
        with pytest.raises(RemoteError) as caught:
            await peer.provision("doomed", _profile())
        assert caught.value.code == -32031 and caught.value.data["rolled_back"] is True
        assert caught.value.data["logs"], "the VM's logs explain the failure"
        for _ in range(200):  # deletion is asynchronous in the service, as on the grid
            if not simulator.vms:
                break
            await asyncio.sleep(0.01)
        assert simulator.vms == {} and simulator.gateways == {}
        assert all(node.free == node.total for node in simulator.nodes.values())
        assert not list((tmp_path / "data" / "secrets").iterdir())


async def test_cancel_while_polling_deletes_the_vm(tmp_path: Path) -> None:
    async with grid(tmp_path, deploy_timeout=60) as (simulator, peer):
        simulator.sim_faults(no_ip=True)
        polling = asyncio.Event()
        peer.on_progress = lambda event: polling.set() if "waiting for VM" in event["params"][
            "message"] else None
        sent, future = await peer.start_request("provision", {
            "slug": "slow", "profile": _profile().model_dump(mode="json")})
        await polling.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, future, 10)
        assert reply.error is not None and reply.error["code"] == -32800
        assert simulator.vms == {}


async def test_a_destructive_upgrade_is_refused_and_the_vm_keeps_running(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        with pytest.raises(RemoteError) as caught:
            await peer.upgrade(ref, _profile("team", memory_mb=8192))
        assert caught.value.code == -32022 and "destroys its disk" in caught.value.message
        [vm] = simulator.vms.values()
        assert (vm.state, vm.slices) == ("running", 1)
        same = await peer.upgrade(ref, _profile("renamed"))  # no change on the grid
        assert same.tier == "renamed" and same.endpoint == ref.endpoint
        bigger = await peer.upgrade(same, _profile("team", memory_mb=8192,
                                                   allow_destructive_upgrade=True))
        assert [v.slices for v in simulator.vms.values()] == [2] and bigger.tier == "team"


async def test_an_unreachable_service_is_backend_unavailable(tmp_path: Path) -> None:
    async with open_peer(TfgridDriver(), config={"socket": str(tmp_path / "none.sock")}) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.provision("x", _profile())
        assert caught.value.code == -32030 and "none.sock" in caught.value.message
    async with grid(tmp_path) as (simulator, peer):
        simulator.sim_faults(unreachable=True)
        with pytest.raises(RemoteError) as caught:
            await peer.provision("x", _profile())
        assert caught.value.code == -32030


async def test_the_stubbed_methods_fail_as_documented(tmp_path: Path) -> None:
    simulator = Simulator()
    await simulator.start(tmp_path / "rpc.sock")
    try:
        client = ComputeClient(Endpoint(socket=str(tmp_path / "rpc.sock")))
        for method in ("start_vm", "stop_vm", "inject_ssh_keys", "vm_exec"):
            with pytest.raises(ComputeError, match=f"{method} is not supported on TFGrid"):
                await client._call(TypeAdapter(type(None)), method, vm_id="vm-1", secret="s")
    finally:
        await simulator.stop()


async def test_the_secret_appears_nowhere_but_its_file(tmp_path: Path, venv_bin: Path) -> None:
    simulator = Simulator(deploy_delay=0.05)
    await simulator.start(tmp_path / "rpc.sock")
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        f'[tiers.solo.driver_flags.tfgrid]\nssh_keys = ["{KEY}"]\n'
        f'[adapters.tfgrid]\nsocket = "{tmp_path / "rpc.sock"}"\npoll_interval = 0.02\n')
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    outputs: list[bytes] = []

    async def hearth(*args: str) -> Any:
        process = await asyncio.create_subprocess_exec(
            str(venv_bin / "hearth"), *args, "--json", "--verbose", "--project", str(project),
            "--home", str(home), env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        outputs.extend([out, err])
        assert process.returncode == 0, err.decode()
        return json.loads(out)

    try:
        ref = await hearth("provision", "alpha", "--tier", "solo", "--driver", "tfgrid")
        await hearth("status", "alpha")
        await hearth("ls")
        await hearth("logs", "alpha")
        secret = Path(ref["secrets_vault_path"]).read_text().encode()
        assert len(secret) >= 32
        store_files = b"".join(path.read_bytes() for path in home.glob("hearth.db*"))
        assert store_files and secret not in store_files
        assert all(secret not in output for output in outputs)
        others = [p for p in home.rglob("*") if p.is_file() and p != Path(ref["secrets_vault_path"])]
        assert all(secret not in p.read_bytes() for p in others)
        await hearth("teardown", "alpha")
        assert all(secret not in output for output in outputs)
        assert simulator.vms == {}
    finally:
        await simulator.stop()


@pytest.mark.subprocess
async def test_the_simulator_runs_in_the_foreground_and_stops_on_sigterm(
        tmp_path: Path, venv_bin: Path) -> None:
    socket = tmp_path / "rpc.sock"
    process = await asyncio.create_subprocess_exec(
        str(venv_bin / "hearth-tfgrid-sim"), "--socket", str(socket), "--nodes", "tfnode-9:3",
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    assert process.stderr is not None
    banner = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"tfnode-9: 3 slices" in banner
    slices = await ComputeClient(Endpoint(socket=str(socket))).list_slices()
    assert [(s.node_sid, s.slices_free) for s in slices] == [("tfnode-9", 3)]
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert not socket.exists()
