"""AdapterClient in memory: typed verbs, typed errors, progress, timeouts and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth import (
    AdapterClient,
    AdapterRefused,
    BackendFailure,
    CallTimeout,
    Conflict,
    InvalidProfile,
    InvalidTransition,
    Progress,
    ProtocolViolation,
)
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import MemoryConnection, MessageTooLarge, codes
from tests.helpers import profile


async def connect(data_dir: Path | None = None) -> AdapterClient:
    return await AdapterClient.connect(MemoryConnection(FakeDriver()), driver="fake", data_dir=data_dir)


async def test_the_four_verbs_and_list_take_and_return_the_sdk_models() -> None:
    async with await connect() as client:
        ref = await client.provision("alpha", profile())
        assert (await client.status(ref)).state == "ready"
        upgraded = await client.upgrade(ref, profile(tier="team"))
        assert upgraded.workspace_slug == "alpha" and upgraded.tier == "team"
        assert await client.list() == [upgraded]
        await client.teardown(upgraded)
        assert (await client.status(upgraded)).state == "tier_torn_down"


async def test_adapter_errors_become_typed_errors_with_their_data() -> None:
    async with await connect() as client:
        ref = await client.provision("alpha", profile())
        with pytest.raises(Conflict) as conflict:
            await client.provision("alpha", profile(tier="team"))
        assert conflict.value.existing == ref
        assert conflict.value.kind == "conflict"
        with pytest.raises(BackendFailure) as failure:
            await client.provision("beta", profile(fail_at="provision"))
        assert failure.value.rolled_back and failure.value.logs
        with pytest.raises(InvalidProfile) as invalid:
            await client.provision("gamma", profile(reject=True))
        assert invalid.value.errors
        await client.teardown(ref)
        with pytest.raises(InvalidTransition) as transition:
            await client.upgrade(ref, profile(tier="team"))
        assert transition.value.state == "tier_torn_down"


async def test_progress_events_reach_the_callback_in_order() -> None:
    events: list[Progress] = []
    async with await connect() as client:
        await client.provision("alpha", profile(), on_progress=events.append)
    assert events and events[-1].fraction == 1.0
    assert [e.fraction for e in events] == sorted(e.fraction or 0 for e in events)


async def test_many_calls_in_flight_are_matched_by_id() -> None:
    async with await connect() as client:
        refs = await asyncio.gather(*(client.provision(f"w{i}", profile()) for i in range(50)))
        assert [ref.workspace_slug for ref in refs] == [f"w{i}" for i in range(50)]


async def test_a_call_past_its_timeout_is_cancelled_and_rolled_back() -> None:
    async with await connect() as client:
        with pytest.raises(CallTimeout) as caught:
            await client.provision("slow", profile(delay=60), timeout=0.05)
        assert "cancelled" in str(caught.value)
        assert "did not confirm" not in str(caught.value)
        assert await client.list() == []


async def test_task_cancellation_tells_the_adapter_to_cancel() -> None:
    async with await connect() as client:
        started = asyncio.Event()
        call = asyncio.create_task(
            client.provision("slow", profile(delay=60), on_progress=lambda _: started.set())
        )
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await client.list() == []  # the cancel arrived before this request


async def test_a_driver_name_other_than_expected_is_refused() -> None:
    with pytest.raises(AdapterRefused, match="serves driver 'fake'"):
        await AdapterClient.connect(MemoryConnection(FakeDriver()), driver="docker")


async def test_a_request_over_the_size_limit_is_not_sent_and_the_session_lives(tmp_path: Path) -> None:
    async with await connect() as client:
        with pytest.raises(ProtocolViolation, match="not sent"):
            await client.provision("big", profile(blob="x" * (codes.MAX_MESSAGE_BYTES + 1)))
        assert (await client.provision("small", profile())).workspace_slug == "small"
    assert issubclass(MessageTooLarge, ValueError)


@pytest.mark.subprocess
async def test_a_deeply_nested_line_from_an_adapter_is_a_protocol_violation(
    make_adapter: Callable[..., Path],
) -> None:
    path = make_adapter("raw", MODE="deep_nesting", DRIVER="raw")
    async with await AdapterClient.launch(path) as client:
        with pytest.raises(ProtocolViolation, match="not JSON-RPC") as caught:
            await client.provision("deep", profile(driver="raw"))
        assert caught.value.kind == "protocol_violation"


async def test_a_call_on_a_client_you_closed_says_closed_not_crashed() -> None:
    from hearth import ClientClosed
    from hearth_adaptersdk.transport import SessionState

    client = await AdapterClient.connect(MemoryConnection(FakeDriver()))
    assert client.state is SessionState.OPEN
    await client.close()
    state: SessionState = client.state
    assert state is SessionState.CLOSED and not client.alive
    with pytest.raises(ClientClosed, match="was closed") as caught:
        await client.provision("alpha", profile())
    assert caught.value.kind == "closed"
    await client.close()  # closing again is harmless
