"""The tfgrid driver against the shipped ComputeService simulator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from hearth import Host, Unsupported
from hearth_adapter_tfgrid import Simulator, TfgridDriver
from hearth_adapter_tfgrid import _compute as compute
from hearth_adapter_tfgrid._compute import ComputeClient, ComputeError, ComputeUnavailable, Endpoint
from hearth_adapter_tfgrid._driver import TfgridConfig
from hearth_adapter_tfgrid._placement import Ledger
from hearth_adapter_tfgrid._simulator import ServedSurface
from hearth_adaptersdk import DeploymentRef, ProvisioningProfile, SubprocessConnection, utc_now
from hearth_adaptersdk.conformance import KitOptions, run_conformance
from hearth_adaptersdk.testing import Peer, RemoteError, open_peer
from tests.test_conformance import STOP_START_CHECKS, not_announced

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnYNXg+KtbLdjvZbHcsS47WEm6JfEDyh1QKwP3ZUW7O me@laptop"
IMAGE = "https://hub.grid.tf/tf-official-vms/ubuntu-24.04-latest.flist"


def _profile(tier: str = "solo", memory_mb: int = 4096, **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(
        tier=tier,
        driver="tfgrid",
        resource_caps={"cpu": 1, "memory_mb": memory_mb},
        driver_flags={"ssh_keys": [KEY], **flags},
    )


@asynccontextmanager
async def grid(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Simulator, Peer]]:
    """A simulator on a socket, and an in-memory tfgrid adapter configured for it."""
    simulator = Simulator(deploy_delay=0.1)
    socket = tmp_path / "rpc.sock"
    await simulator.start(socket)
    try:
        async with open_peer(
            TfgridDriver(),
            data_dir=tmp_path / "data",
            config={"socket": str(socket), "poll_interval": 0.02, **config},
        ) as peer:
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
            timeout=60,
        )
        report = await run_conformance(venv_bin / "hearth-adapter-tfgrid", options)
    finally:
        await simulator.stop()
    assert report.passed, report.render()
    # the simulator deploys every VM at one speed, so the kit has no slow profile here: the checks
    # that need one (progress, concurrency, shutdown during work) are skipped, and only those
    skipped = [check for check in report.checks if check.outcome != "pass" and not not_announced(check)]
    assert all(c.outcome == "skip" and "slow_profile" in (c.detail or "") for c in skipped), report.render()
    assert len(skipped) == 3, report.render()
    # TFGrid cannot stop a VM and keep its disk: the driver does not announce stop and start
    assert {c.name for c in report.checks if not_announced(c)} == STOP_START_CHECKS, report.render()
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


async def test_without_a_data_dir_the_secrets_folder_goes_with_the_session(tmp_path: Path) -> None:
    """No data_dir: the secrets live in a temp folder of the session's own, which no later
    session could find, so closing removes it (it was left in the temp folder, a secret per
    workspace); a data_dir is kept."""
    simulator = Simulator(deploy_delay=0.1)
    socket = tmp_path / "rpc.sock"
    await simulator.start(socket)
    try:
        config = {"socket": str(socket), "poll_interval": 0.02}
        async with open_peer(TfgridDriver(), config=config) as peer:
            ref = await peer.provision("alpha", _profile())
            assert ref.secrets_vault_path is not None
            folder = Path(ref.secrets_vault_path).parent.parent
            assert folder.name.startswith("hearth-tfgrid-") and Path(ref.secrets_vault_path).exists()
        assert not folder.exists()
        async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config) as peer:
            kept = await peer.provision("beta", _profile())
        assert kept.secrets_vault_path is not None and Path(kept.secrets_vault_path).exists()
    finally:
        await simulator.stop()


async def test_a_replica_without_the_secret_says_it_cannot_know_and_changes_nothing(tmp_path: Path) -> None:
    """Two adapters (two replicas) whose data folders are not shared: the one without the
    workspace's secret never reports it absent, never tears it down "successfully", and never
    mints a secret of its own for it."""
    simulator = Simulator(deploy_delay=0.1)
    socket = tmp_path / "rpc.sock"
    await simulator.start(socket)
    config = {"socket": str(socket), "poll_interval": 0.02}
    try:
        async with (
            open_peer(TfgridDriver(), data_dir=tmp_path / "one", config=config) as one,
            open_peer(TfgridDriver(), data_dir=tmp_path / "two", config=config) as two,
        ):
            made = await one.provision("alpha", _profile())
            # the host's record holds the ref; the other replica's vault has the same layout
            ref = made.model_copy(
                update={"secrets_vault_path": str(tmp_path / "two" / "secrets" / "alpha.secret")}
            )
            report = await two.status(ref)
            assert report.state == "unknown" and "not in this adapter's data folder" in (report.message or "")
            for attempt in (two.teardown(ref), two.upgrade(ref, _profile("team"))):
                with pytest.raises(RemoteError) as caught:
                    await attempt
                assert caught.value.kind == "backend_unavailable"
                assert "shared storage" in caught.value.message
            assert [vm.state for vm in simulator.vms.values()] == ["running"]
            assert not (tmp_path / "two" / "secrets" / "alpha.secret").exists()
            await one.teardown(made)  # the replica that holds it tears it down: then it is absent
            assert (await one.status(made)).state == "absent"
            assert simulator.vms == {}
    finally:
        await simulator.stop()


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
        peer.on_progress = lambda event: (
            polling.set() if "waiting for VM" in event["params"]["message"] else None
        )
        sent, future = await peer.start_request(
            "provision", {"slug": "slow", "profile": _profile().model_dump(mode="json")}
        )
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
        bigger = await peer.upgrade(same, _profile("team", memory_mb=8192, allow_destructive_upgrade=True))
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


async def test_the_unreachable_fault_set_over_the_wire_can_be_cleared_over_the_wire(tmp_path: Path) -> None:
    """Issue 20: ``sim_faults`` (which also reads the faults) is exempt from ``unreachable``; every
    other call, a batch that mixes it with one, and a wrong token are still refused."""
    faults = TypeAdapter(dict[str, bool])
    simulator = Simulator(deploy_delay=0.05)
    await simulator.start(host="127.0.0.1", token="the-router-token")
    try:
        assert simulator.url is not None
        async with ComputeClient(Endpoint(url=simulator.url, token="the-router-token")) as client:
            assert (await client._call(faults, "sim_faults", unreachable=True))["unreachable"] is True
            with pytest.raises(ComputeUnavailable, match="HTTP 503"):
                await client.list_slices()
            batch = [
                {"jsonrpc": "2.0", "id": 1, "method": "sim_faults", "params": {}},
                {"jsonrpc": "2.0", "id": 2, "method": "list_slices", "params": {}},
            ]
            assert (await client._http().post(client._url, json=batch)).status_code == 503
            assert (await client._call(faults, "sim_faults"))["unreachable"] is True  # read, unchanged
            assert (await client._call(faults, "sim_faults", unreachable=False))["unreachable"] is False
            assert [s.node_sid for s in await client.list_slices()] == ["tfnode-1", "tfnode-2"]
            await client._call(faults, "sim_faults", unreachable=True)
        async with ComputeClient(Endpoint(url=simulator.url, token="a-wrong-token")) as client:
            with pytest.raises(ComputeError) as caught:
                await client._call(faults, "sim_faults", unreachable=False)
            assert caught.value.code == compute.FORBIDDEN
        assert simulator.faults.unreachable
    finally:
        await simulator.stop()


async def test_the_stubbed_methods_fail_as_documented(tmp_path: Path) -> None:
    simulator = Simulator()
    await simulator.start(tmp_path / "rpc.sock")
    try:
        async with ComputeClient(Endpoint(socket=str(tmp_path / "rpc.sock"))) as client:
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
        f'[adapters.tfgrid]\nsocket = "{tmp_path / "rpc.sock"}"\npoll_interval = 0.02\n'
    )
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    outputs: list[bytes] = []

    async def hearth(*args: str) -> Any:
        process = await asyncio.create_subprocess_exec(
            str(venv_bin / "hearth"),
            *args,
            "--json",
            "--verbose",
            "--project",
            str(project),
            "--home",
            str(home),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
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
    tmp_path: Path, venv_bin: Path
) -> None:
    socket = tmp_path / "rpc.sock"
    process = await asyncio.create_subprocess_exec(
        str(venv_bin / "hearth-tfgrid-sim"),
        "--socket",
        str(socket),
        "--nodes",
        "tfnode-9:3",
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        banner = await asyncio.wait_for(process.stderr.readline(), 30)
        assert b"tfnode-9: 3 slices" in banner
        async with ComputeClient(Endpoint(socket=str(socket))) as client:
            slices = await client.list_slices()
        assert [(s.node_sid, s.slices_free) for s in slices] == [("tfnode-9", 3)]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert not socket.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- placement --------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [12, 14])
async def test_concurrent_provisions_fill_both_nodes(tmp_path: Path, count: int) -> None:
    async with grid(tmp_path) as (simulator, peer):  # tfnode-1: 8 slices, tfnode-2: 4
        answers = await asyncio.gather(
            *(peer.provision(f"w{i}", _profile()) for i in range(count)), return_exceptions=True
        )
        refused = [answer for answer in answers if isinstance(answer, BaseException)]
        assert len(refused) == count - 12, refused  # only what does not fit, and nothing else
        assert all(
            isinstance(error, RemoteError)
            and error.data["rolled_back"] is True
            and "not enough free slices" in error.message
            for error in refused
        )
        assert Counter(vm.node for vm in simulator.vms.values()) == {"tfnode-1": 8, "tfnode-2": 4}
        assert all(vm.state == "running" for vm in simulator.vms.values())
        assert [node.free for node in simulator.nodes.values()] == [0, 0]


def test_a_snapshot_asked_for_before_a_deploy_landed_still_counts_its_slices() -> None:
    ledger = Ledger()
    with ledger.snapshot() as early:
        hold = ledger.hold("tfnode-1", 2)
        with ledger.snapshot() as before:
            ledger.landed(hold)  # deploy_vm answered while both snapshots were being read
            with ledger.snapshot() as after:
                assert ledger.pending("tfnode-1", after) == 0  # the service's figures have it
            assert ledger.pending("tfnode-1", before) == 2  # these figures may not have it
        assert ledger.pending("tfnode-1", early) == 2
    assert len(ledger) == 0  # no snapshot needs it any more
    failed = ledger.hold("tfnode-2", 1)
    with ledger.snapshot() as now:
        assert ledger.pending("tfnode-2", now) == 1
    ledger.release(failed)
    assert len(ledger) == 0


async def test_a_node_full_after_all_moves_the_vm_to_the_next_node_unless_it_was_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with grid(tmp_path) as (simulator, peer):
        deploy_vm = simulator.deploy_vm

        def outsider_first(**params: Any) -> Any:
            """Someone outside this adapter takes tfnode-1's free slices just before our deploy."""
            node = simulator.nodes["tfnode-1"]
            if node.free:
                deploy_vm(
                    name="not-hearth",
                    slice_count=node.free,
                    secret="someone else",
                    image=IMAGE,
                    ssh_keys=[],
                    node_sid="tfnode-1",
                )
            return deploy_vm(**params)

        monkeypatch.setattr(simulator, "deploy_vm", outsider_first)
        warnings: list[str] = []
        peer.on_progress = lambda event: (
            warnings.append(event["params"]["message"]) if event["params"]["level"] == "warning" else None
        )
        ref = await peer.provision("alpha", _profile())  # tfnode-1 looked free when it was chosen
        assert ref.endpoint == "https://alpha.gw1.sim.grid.tf"
        assert [vm.node for vm in simulator.vms.values() if vm.name == "hearth-alpha"] == ["tfnode-2"]
        assert simulator.calls.count("deploy_vm") == 2
        assert any("tfnode-1 has no room after all" in warning for warning in warnings)

        # A node the profile names is kept to: full is an error, not a move to tfnode-2.
        with pytest.raises(RemoteError) as caught:
            await peer.provision("beta", _profile(node="tfnode-1"))
        assert caught.value.kind == "backend_failure"
        assert "not enough free slices on tfnode-1" in caught.value.message
    # So is the config's default_node (see the README: placement never overrides a named node).
    (tmp_path / "second").mkdir()
    async with grid(tmp_path / "second", default_node="tfnode-1") as (simulator, peer):
        simulator.nodes["tfnode-1"].free = 0  # taken outside the adapter
        with pytest.raises(RemoteError) as caught:
            await peer.provision("gamma", _profile())
        assert "not enough free slices on tfnode-1" in caught.value.message
        assert simulator.vms == {} and simulator.nodes["tfnode-2"].free == 4


# --- the vault --------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["status", "upgrade", "teardown"])
async def test_a_secret_path_outside_the_vault_is_refused_and_nothing_is_read_or_sent(
    tmp_path: Path, verb: str
) -> None:
    async with grid(tmp_path) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        assert ref.secrets_vault_path is not None
        secrets = Path(ref.secrets_vault_path).parent
        outside = tmp_path / "hostname"
        outside.write_text("a-file-that-is-no-secret\n")
        (secrets / "sneaky.secret").symlink_to(outside)
        (secrets / "other.secret").write_text("another workspace's secret")
        tampered = [
            str(outside),
            str(secrets / "sneaky.secret"),
            str(secrets / "other.secret"),
            str(tmp_path / "data" / "workspaces" / "alpha.json"),
            str(secrets / ".." / ".." / "hostname"),
        ]
        if Path("/etc/hostname").is_file():
            tampered.append("/etc/hostname")
        calls: dict[str, Callable[[DeploymentRef], Awaitable[Any]]] = {
            "status": peer.status,
            "teardown": peer.teardown,
            "upgrade": lambda ref: peer.upgrade(
                ref, _profile("team", memory_mb=8192, allow_destructive_upgrade=True)
            ),
        }
        for path in tampered:
            before = list(simulator.calls)
            with pytest.raises(RemoteError) as caught:
                await calls[verb](ref.model_copy(update={"secrets_vault_path": path}))
            assert (caught.value.code, caught.value.kind) == (-32602, "invalid_params"), path
            [error] = caught.value.data["errors"]
            assert error.startswith("ref.secrets_vault_path: ") and "nothing" in caught.value.message
            assert simulator.calls == before, f"{path}: the service was asked {simulator.calls}"
        [vm] = simulator.vms.values()
        assert (vm.state, vm.slices) == ("running", 1) and len(simulator.gateways) == 1
        assert (await peer.status(ref)).state == "ready"  # its own path still works


# --- the transport ----------------------------------------------------------------------------
async def test_the_client_reads_chunked_answers_on_one_kept_connection_and_times_out(tmp_path: Path) -> None:
    """Against a server written here byte by byte: chunked bodies, keep-alive, a silent answer."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                assert length is not None and b"connection: close" not in head.lower()
                request = json.loads(await reader.readexactly(int(length.group(1))))
                if request["method"] == "hang":
                    continue  # never answered
                body = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": request["id"],
                        "result": [
                            {
                                "node_sid": "tfnode-7",
                                "slices_total": 2,
                                "slices_free": 1,
                                "disk_gb_per_slice": 50,
                            }
                        ],
                    }
                ).encode()
                half = len(body) // 2
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (half, body[:half])
                    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - half, body[half:])
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(tmp_path / "rpc.sock"))
    try:
        async with ComputeClient(Endpoint(socket=str(tmp_path / "rpc.sock")), timeout=0.2) as client:
            for _ in range(3):
                assert [n.node_sid for n in await client.list_slices()] == ["tfnode-7"]
            assert connections == 1
            with pytest.raises(ComputeUnavailable, match=r"no answer .* within 0\.2 s"):
                await client._call(TypeAdapter(type(None)), "hang")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_service_behind_a_url_takes_its_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = Simulator(deploy_delay=0.05)
    await simulator.start(host="127.0.0.1", token="the-router-token")
    try:
        assert simulator.url is not None and simulator.url.startswith("http://127.0.0.1:")
        async with ComputeClient(Endpoint(url=simulator.url, token="a-wrong-token")) as client:
            with pytest.raises(ComputeError) as caught:
                await client.list_slices()
            assert caught.value.code == compute.FORBIDDEN and "HTTP 401" in caught.value.message
        assert simulator.calls == []
        monkeypatch.setenv("TFGRID_TOKEN", "the-router-token")
        config = {"url": simulator.url, "token_env": "TFGRID_TOKEN", "poll_interval": 0.02}
        async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config) as peer:
            ref = await peer.provision("alpha", _profile())
            assert (await peer.status(ref)).state == "ready"
            await peer.teardown(ref)
        assert simulator.vms == {} and simulator.gateways == {}
    finally:
        await simulator.stop()


@pytest.mark.subprocess
async def test_the_simulator_listens_on_tcp_with_a_token_and_stops_on_sigint(
    tmp_path: Path, venv_bin: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(venv_bin / "hearth-tfgrid-sim"),
        "--listen",
        "127.0.0.1:0",
        "--token-env",
        "SIM_TOKEN",
        "--deploy-delay",
        "0.05",
        env={**os.environ, "SIM_TOKEN": "t0ken"},
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        banner = await asyncio.wait_for(process.stderr.readline(), 30)
        found = re.search(rb"on (http://127\.0\.0\.1:\d+/rpc) ", banner)
        assert found is not None, banner
        async with ComputeClient(Endpoint(url=found.group(1).decode(), token="t0ken")) as client:
            slices = await client.list_slices()
            assert [s.node_sid for s in slices] == ["tfnode-1", "tfnode-2"]
            process.send_signal(signal.SIGINT)  # with the client's connection still kept open
            assert await asyncio.wait_for(process.wait(), 30) == 0
        rest = await process.stderr.read()
        assert b"hearth-tfgrid-sim: stopped" in rest and b"Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- rollback ---------------------------------------------------------------------------------
def _hold_at(simulator: Simulator, method: str) -> tuple[asyncio.Event, asyncio.Event]:
    """(reached, proceed): the simulator's first ``method`` call sets ``reached``, then waits
    for ``proceed`` before it is answered."""
    reached, proceed = asyncio.Event(), asyncio.Event()
    handle = simulator.handle

    async def held(body: bytes) -> dict[str, Any] | list[dict[str, Any]] | None:
        if json.loads(body).get("method") == method and not reached.is_set():
            reached.set()
            await proceed.wait()
        return await handle(body)

    simulator.handle = held  # type: ignore[method-assign]
    return reached, proceed


async def test_a_cancel_during_a_rollback_is_answered_once_the_vm_is_gone(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        simulator.sim_faults(fail_deploy=True)
        reached, proceed = _hold_at(simulator, "vm_logs")  # the first step of the rollback
        sent, future = await peer.start_request(
            "provision", {"slug": "doomed", "profile": _profile().model_dump(mode="json")}
        )
        await reached.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        proceed.set()
        reply = await peer.finish(sent, future, 10)
        assert reply.error is not None and reply.error["code"] == -32800
        assert reply.error["data"].get("rolled_back", True) is True
        assert simulator.vms == {}, "answered before the rollback had deleted the VM"
        assert not list((tmp_path / "data" / "secrets").iterdir())


async def test_a_rollback_that_cannot_delete_the_vm_says_so_and_keeps_the_secret(tmp_path: Path) -> None:
    async with grid(tmp_path) as (simulator, peer):
        simulator.sim_faults(fail_deploy=True)
        reached, proceed = _hold_at(simulator, "vm_logs")
        provision = asyncio.ensure_future(peer.provision("doomed", _profile()))
        await reached.wait()
        simulator.sim_faults(unreachable=True)  # the service goes away in the middle of it
        proceed.set()
        with pytest.raises(RemoteError) as caught:
            await provision
        assert caught.value.kind == "backend_failure" and caught.value.data["rolled_back"] is False
        assert "not confirmed" in caught.value.message
        assert [vm.state for vm in simulator.vms.values()] == ["failed"]  # still there
        secret = tmp_path / "data" / "secrets" / "doomed.secret"
        assert secret.is_file(), "the secret is kept: without it the VM could never be deleted"
        simulator.faults.unreachable = False
        ref = DeploymentRef(
            workspace_slug="doomed", tier="solo", driver="tfgrid", created=utc_now(), last_status="failed"
        )
        assert (await peer.status(ref)).state == "failed"
        await peer.teardown(ref)
        assert simulator.vms == {} and not secret.exists()


@pytest.mark.subprocess
async def test_the_adapter_does_not_exit_in_the_middle_of_a_rollback(tmp_path: Path, venv_bin: Path) -> None:
    simulator = Simulator(deploy_delay=0.1)
    await simulator.start(tmp_path / "rpc.sock")
    peer = await Peer.spawn([str(venv_bin / "hearth-adapter-tfgrid")])
    try:
        await peer.initialize(
            config={"socket": str(tmp_path / "rpc.sock"), "poll_interval": 0.02}, data_dir=tmp_path / "data"
        )
        simulator.sim_faults(fail_deploy=True)
        reached, proceed = _hold_at(simulator, "vm_logs")
        sent, future = await peer.start_request(
            "provision", {"slug": "doomed", "profile": _profile().model_dump(mode="json")}
        )
        await reached.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        assert isinstance(peer.connection, SubprocessConnection)
        peer.connection.close_stdin()  # and the host goes away
        proceed.set()
        reply = await peer.finish(sent, future, 30)
        assert reply.error is not None and reply.error["code"] == -32800
        assert (await peer.wait_closed(30)).returncode == 0
        assert simulator.vms == {}, "the adapter exited before its rollback deleted the VM"
    finally:
        await peer.close()
        await simulator.stop()


async def test_a_cancelled_destructive_upgrade_says_that_the_workspace_has_no_vm(tmp_path: Path) -> None:
    async with grid(tmp_path, deploy_timeout=60) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        simulator.sim_faults(no_ip=True)  # the new VM never becomes usable
        polling = asyncio.Event()
        peer.on_progress = lambda event: (
            polling.set() if "waiting for VM" in event["params"]["message"] else None
        )
        bigger = _profile("team", memory_mb=8192, allow_destructive_upgrade=True)
        sent, future = await peer.start_request(
            "upgrade", {"ref": ref.model_dump(mode="json"), "profile": bigger.model_dump(mode="json")}
        )
        await polling.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, future, 10)
        # Not -32800 "rolled back": the old VM and its disk are gone and cannot come back.
        assert reply.error is not None and reply.error["code"] == -32031
        assert reply.error["data"]["rolled_back"] is False and "no VM now" in reply.error["message"]
        assert simulator.vms == {}
        assert (await peer.status(ref)).state == "absent"


@pytest.mark.subprocess
@pytest.mark.parametrize("run", range(4))
async def test_ctrl_c_mid_provision_through_the_cli_leaves_no_vm_and_a_truthful_record(
    tmp_path: Path, venv_bin: Path, run: int
) -> None:
    """Issue 9, defect 1: the VM used to leak while the record said it was rolled back."""
    simulator = Simulator(deploy_delay=1.0)
    await simulator.start(tmp_path / "rpc.sock")
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        f'[adapters.tfgrid]\nsocket = "{tmp_path / "rpc.sock"}"\npoll_interval = 0.2\n'
    )
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}

    async def hearth(*args: str) -> tuple[int, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            str(venv_bin / "hearth"),
            *args,
            "--json",
            "--project",
            str(project),
            "--home",
            str(home),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out, err

    try:
        process = await asyncio.create_subprocess_exec(
            str(venv_bin / "hearth"),
            "provision",
            "tc",
            "--tier",
            "solo",
            "--driver",
            "tfgrid",
            "--project",
            str(project),
            "--home",
            str(home),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        for _ in range(3000):  # the VM is being deployed: strike now (a bounded wait, not a sleep)
            if simulator.vms:
                break
            await asyncio.sleep(0.01)
        assert simulator.vms, "the deploy never started"
        await asyncio.sleep(0.1 * run)  # a different point of the deploy in each run
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 130
        [line] = err.decode().strip().splitlines()
        assert line.startswith("hearth: cancelled: interrupted by SIGINT; ")
        assert simulator.vms == {} and simulator.gateways == {}  # nothing leaked
        assert all(node.free == node.total for node in simulator.nodes.values())
        code, out, _ = await hearth("ls")
        assert code == 0 and json.loads(out) == []  # rolled back: the slug is free
        code, out, _ = await hearth("logs", "tc")
        [operation] = json.loads(out)
        assert operation["outcome"] == "cancelled" and operation["error"]["rolled_back"] is True
    finally:
        await simulator.stop()


async def test_the_secret_of_an_interrupted_teardown_is_removed_once_the_vm_is_confirmed_gone(
    tmp_path: Path,
) -> None:
    """Issue 20: a teardown cut short after delete_vm (here: the VM outlived ``delete_timeout``)
    keeps the secret, as it must while the VM may still be there; the status that finds the VM
    gone (what reconcile settles as torn down) removes it. A workspace whose VM is merely not
    deployed yet keeps its secret."""
    async with grid(tmp_path, delete_timeout=0.1) as (simulator, peer):
        ref = await peer.provision("alpha", _profile())
        secret = tmp_path / "data" / "secrets" / "alpha.secret"
        simulator.deploy_delay = 3600.0  # the grid takes its time: the VM outlives delete_timeout
        with pytest.raises(RemoteError) as caught:
            await peer.teardown(ref)
        assert "still there" in caught.value.message
        assert secret.is_file(), "kept while the VM may still be there"
        assert (await peer.status(ref)).state == "tearing_down"
        assert secret.is_file()
        [vm] = simulator.vms.values()
        simulator.vms.pop(vm.id)  # the grid finishes the deletion
        simulator.gateways.clear()
        assert (await peer.status(ref)).state == "absent"
        assert not secret.exists(), "the VM is confirmed gone: its secret must go too"
        assert not (tmp_path / "data" / "workspaces" / "alpha.json").exists()
        assert (await peer.status(ref)).state == "absent"
        await peer.teardown(ref)  # idempotent

        # a secret minted for a VM not deployed yet is not a teardown's: status leaves it alone
        (tmp_path / "data" / "secrets" / "beta.secret").write_text("minted-before-deploy")
        beta = ref.model_copy(
            update={
                "workspace_slug": "beta",
                "secrets_vault_path": str(tmp_path / "data" / "secrets" / "beta.secret"),
            }
        )
        assert (await peer.status(beta)).state == "absent"
        assert (tmp_path / "data" / "secrets" / "beta.secret").is_file()


# --- the service's surface, checked at initialize ------------------------------------------------


async def test_initialize_refuses_a_service_whose_surface_differs_naming_each_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator = Simulator(deploy_delay=0.05)
    simulator.surface = ServedSurface(
        prefix="ComputeService.", renamed={"secret": "key"}, missing=frozenset({"vm_logs"})
    )
    await simulator.start(tmp_path / "rpc.sock")
    try:
        config = {"socket": str(tmp_path / "rpc.sock"), "method_prefix": "ComputeService."}
        with pytest.raises(RemoteError) as caught:
            async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config):
                pass
        assert caught.value.code == -32022 and caught.value.kind == "unsupported"
        message = caught.value.message
        assert "ComputeService.vm_logs: no such method on the service" in message
        for method in ("deploy_vm", "get_vm", "list_vms", "delete_vm", "get_webgateway", "list_webgateways"):
            assert f"ComputeService.{method}: takes no param 'secret'" in message, method
            assert f"ComputeService.{method}: requires param 'key'" in message, method
        assert "list_slices" not in message  # it matches
        assert "ComputeService.get_vm" in caught.value.data["reason"]
        assert "ComputeService.list_slices" in capsys.readouterr().err  # the service's methods, logged
        assert simulator.calls == ["rpc.discover"]  # nothing else was asked
        # without the prefix, every method is named as missing
        with pytest.raises(RemoteError) as caught:
            async with open_peer(
                TfgridDriver(), data_dir=tmp_path / "data", config={**config, "method_prefix": ""}
            ):
                pass
        for method in compute.SURFACE:
            assert f"{method}: no such method on the service" in caught.value.message
    finally:
        await simulator.stop()


async def test_the_check_compares_result_fields_and_needs_a_document() -> None:
    simulator = Simulator()
    document = simulator.openrpc()
    assert compute.check_surface(document).problems == []
    del document["components"]["schemas"]["Vm"]["properties"]["node_sid"]
    problems = compute.check_surface(document).problems
    assert "get_vm: its result has no field 'node_sid' (Vm)" in problems
    assert "list_vms: its result has no field 'node_sid' (Vm)" in problems
    next(m for m in document["methods"] if m["name"] == "delete_vm")["paramStructure"] = "by-position"
    assert "delete_vm: takes its params by position; this adapter sends them by name" in (
        compute.check_surface(document).problems
    )
    assert compute.check_surface({"openrpc": "1.2.6"}).problems == [
        "rpc.discover: the answer is not an OpenRPC document (no 'methods' list)"
    ]


async def test_a_matching_service_with_a_prefix_and_sid_params_is_driven_end_to_end(tmp_path: Path) -> None:
    simulator = Simulator(deploy_delay=0.05)
    simulator.surface = ServedSurface(prefix="ComputeService.", renamed={"vm_id": "sid", "gateway_id": "sid"})
    await simulator.start(tmp_path / "rpc.sock")
    try:
        config = {
            "socket": str(tmp_path / "rpc.sock"),
            "poll_interval": 0.02,
            "method_prefix": "ComputeService.",
        }
        async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config) as peer:
            ref = await peer.provision("pfx", _profile())
            assert (await peer.status(ref)).state == "ready"
            await peer.teardown(ref)
            assert (await peer.status(ref)).state == "absent"
        assert simulator.vms == {} and simulator.gateways == {}
        assert "ComputeService.deploy_vm" in simulator.calls and "ComputeService.get_vm" in simulator.calls
        assert not any(c in compute.SURFACE for c in simulator.calls)  # never an unprefixed name
    finally:
        await simulator.stop()


async def test_a_service_unreachable_at_initialize_is_checked_before_the_first_call(tmp_path: Path) -> None:
    socket = tmp_path / "rpc.sock"
    config = {"socket": str(socket), "poll_interval": 0.02, "method_prefix": "ComputeService."}
    async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config) as peer:
        simulator = Simulator(deploy_delay=0.05)  # it comes up after initialize, without the prefix
        await simulator.start(socket)
        try:
            with pytest.raises(RemoteError) as caught:
                await peer.provision("late", _profile())
            assert (
                caught.value.code == -32022
                and "ComputeService.deploy_vm: no such method" in caught.value.message
            )
            assert simulator.calls == ["rpc.discover"]
        finally:
            await simulator.stop()


async def test_a_url_through_a_router_sends_the_configured_headers_and_no_token_unless_set(
    tmp_path: Path,
) -> None:
    simulator = Simulator(deploy_delay=0.05)
    await simulator.start(host="127.0.0.1")
    try:
        assert simulator.url is not None
        config = {"url": simulator.url, "headers": {"X-Hero-Context": "ws-1"}, "poll_interval": 0.02}
        async with open_peer(TfgridDriver(), data_dir=tmp_path / "data", config=config) as peer:
            assert await peer.list() == []
        assert simulator.headers["x-hero-context"] == "ws-1"
        assert "authorization" not in simulator.headers
    finally:
        await simulator.stop()


async def test_an_empty_secret_is_never_sent(tmp_path: Path) -> None:
    async with Simulator() as simulator:
        await simulator.start(tmp_path / "rpc.sock")
        async with ComputeClient(Endpoint(socket=str(tmp_path / "rpc.sock"))) as client:
            with pytest.raises(ComputeError, match="empty secret"):
                await client.list_vms("")
        assert simulator.calls == []


def test_the_default_socket_follows_the_hero_socket_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERO_SOCKET_DIR", raising=False)
    assert TfgridConfig().socket == "/run/hero_compute/rpc.sock"
    monkeypatch.setenv("HERO_SOCKET_DIR", "/run/hero")
    assert TfgridConfig().socket == "/run/hero/hero_compute_zos/rpc.sock"
    monkeypatch.setenv("MY_HERO", "/srv/hero")
    assert TfgridConfig(socket_dir_env="MY_HERO").socket == "/srv/hero/hero_compute_zos/rpc.sock"
    assert TfgridConfig(socket="/tmp/x.sock").socket == "/tmp/x.sock"


@pytest.mark.subprocess
async def test_the_host_answers_unsupported_to_stop_and_start_on_tfgrid(tmp_path: Path) -> None:
    """Issue 25: TFGrid's stop_vm and start_vm are stubs and deleting the VM would lose its disk,
    so the adapter does not announce stop and start; the host says so, naming the driver, and
    leaves the workspace as it was."""
    simulator = Simulator(deploy_delay=0.1)
    await simulator.start(tmp_path / "rpc.sock")
    try:
        project = tmp_path / "project"
        (project / ".hearth").mkdir(parents=True)
        (project / ".hearth" / "hearth.toml").write_text(
            "[tiers.solo]\nresource_caps = { cpu = 1, memory_mb = 4096 }\n"
            f'[tiers.solo.driver_flags.tfgrid]\nssh_keys = ["{KEY}"]\n'
            f'[adapters.tfgrid]\nsocket = "{tmp_path / "rpc.sock"}"\npoll_interval = 0.02\n'
        )
        async with Host(project_dir=project, home=tmp_path / "home") as host:
            await host.provision("alpha", tier="solo", driver="tfgrid")
            for verb in (host.stop, host.start):
                with pytest.raises(Unsupported, match="tfgrid"):
                    await verb("alpha")
            assert (await host.deployment("alpha")).state == "ready"
            assert [op.verb for op in await host.logs("alpha")] == ["provision"]  # nothing recorded
            await host.teardown("alpha")
    finally:
        await simulator.stop()
