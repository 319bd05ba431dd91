"""The fake adapter: deterministic, persistent in its data_dir, faults on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import READS_KEPT, FakeStore, read_journal
from hearth_adaptersdk.testing import RemoteError, open_peer
from tests.helpers import profile


async def test_the_endpoint_is_derived_from_the_slug() -> None:
    async with open_peer(FakeDriver()) as peer:
        ref = await peer.provision("alpha", profile())
        assert ref.endpoint == "fake://alpha"
        assert ref.last_status == "ready"


async def test_state_survives_a_restart_when_there_is_a_data_dir(tmp_path: Path) -> None:
    async with open_peer(FakeDriver(), data_dir=tmp_path) as peer:
        ref = await peer.provision("alpha", profile())
    async with open_peer(FakeDriver(), data_dir=tmp_path) as peer:
        assert (await peer.status(ref)).state == "ready"
        assert await peer.provision("alpha", profile()) == ref
        assert await peer.list() == [ref]


async def test_without_a_data_dir_state_lives_in_memory_only() -> None:
    async with open_peer(FakeDriver()) as peer:
        ref = await peer.provision("alpha", profile())
    async with open_peer(FakeDriver()) as peer:
        assert (await peer.status(ref)).state == "absent"


async def test_every_call_is_journaled(tmp_path: Path) -> None:
    async with open_peer(FakeDriver(), data_dir=tmp_path) as peer:
        ref = await peer.provision("alpha", profile())
        await peer.provision("alpha", profile())
        await peer.status(ref)
        await peer.teardown(ref)
    methods = [(entry["method"], entry["slug"]) for entry in read_journal(tmp_path)]
    assert methods == [
        ("provision", "alpha"),
        ("provision", "alpha"),
        ("status", "alpha"),
        ("teardown", "alpha"),
    ]


async def test_reads_leave_data_dir_alone_and_are_journaled_with_the_next_write(tmp_path: Path) -> None:
    """status, list and plan must leave data_dir byte for byte (the kit checks it)."""
    async with open_peer(FakeDriver(), data_dir=tmp_path) as peer:
        ref = await peer.provision("alpha", profile())
        journal = (tmp_path / "journal.jsonl").read_bytes()
        await peer.status(ref)
        await peer.list()
        await peer.request(
            "plan", {"slug": "beta", "ref": None, "profile": profile().model_dump(mode="json")}
        )
        assert (tmp_path / "journal.jsonl").read_bytes() == journal
        await peer.teardown(ref)
        methods = [entry["method"] for entry in read_journal(tmp_path)]
        assert methods == ["provision", "status", "list", "plan", "teardown"]
        await peer.status(ref)
    assert [entry["method"] for entry in read_journal(tmp_path)][-1] == "status"  # written at close


async def test_teardown_leaves_a_torn_down_record_and_list_hides_it() -> None:
    async with open_peer(FakeDriver()) as peer:
        ref = await peer.provision("alpha", profile())
        await peer.teardown(ref)
        assert (await peer.status(ref)).state == "tier_torn_down"
        assert await peer.list() == []


async def test_fail_at_provision_rolls_back_and_reports_logs() -> None:
    async with open_peer(FakeDriver()) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.provision("alpha", profile(fail_at="provision"))
        assert caught.value.kind == "backend_failure"
        assert caught.value.data["rolled_back"] is True
        assert caught.value.data["logs"]
        assert await peer.list() == []


async def test_fail_at_upgrade_keeps_the_previous_deployment() -> None:
    async with open_peer(FakeDriver()) as peer:
        ref = await peer.provision("alpha", profile())
        with pytest.raises(RemoteError) as caught:
            await peer.upgrade(ref, profile(tier="team", fail_at="upgrade"))
        assert caught.value.data["rolled_back"] is True
        assert (await peer.list())[0].tier == "solo"


async def test_upgrade_of_a_torn_down_workspace_is_an_invalid_transition() -> None:
    async with open_peer(FakeDriver()) as peer:
        ref = await peer.provision("alpha", profile())
        await peer.teardown(ref)
        with pytest.raises(RemoteError) as caught:
            await peer.upgrade(ref, profile(tier="team"))
        assert caught.value.kind == "invalid_transition"
        assert caught.value.data["state"] == "tier_torn_down"


async def test_profiles_it_cannot_honour_are_refused_with_every_reason() -> None:
    async with open_peer(FakeDriver()) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.provision("alpha", profile(reject=True, colour="red", fail_at="never"))
        assert caught.value.kind == "invalid_profile"
        errors = caught.value.data["errors"]
        assert len(errors) == 3
        reply = await peer.request("validate_profile", {"profile": profile(delay=-1).model_dump()})
        assert reply.result["valid"] is False


def test_reads_waiting_for_the_next_write_are_bounded(tmp_path: Path) -> None:
    """A fake answering status for days between two writes keeps only the newest reads for its
    journal: memory stays bounded, and each read costs the same (the pipelined bench fell from
    20,000 to 1,100 calls a second when every read copied all those before it)."""
    store = FakeStore(tmp_path)
    for n in range(READS_KEPT + 500):
        store.record_call({"method": "status", "slug": f"s{n}"})
    assert read_journal(tmp_path) == []  # reads leave data_dir as they found it
    store.record_call({"method": "provision", "slug": "last"})
    written = read_journal(tmp_path)
    assert len(written) == READS_KEPT + 1
    assert written[0]["slug"] == "s500" and written[-1]["slug"] == "last"
    store.close()
