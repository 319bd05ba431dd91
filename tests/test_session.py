"""The SDK's server session, driven in memory through the same codec as stdio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import (
    DEFAULT_ROLLBACK_GRACE,
    ROLLBACK_GRACE_ENV,
    DeploymentRef,
    Driver,
    MemoryConnection,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    codes,
    encode,
    utc_now,
)
from hearth_adaptersdk._stdio import rollback_grace_from_env
from hearth_adaptersdk.testing import Peer, open_peer
from tests.helpers import profile


def _ref(slug: str) -> dict[str, Any]:
    return {
        "workspace_slug": slug,
        "tier": "solo",
        "driver": "fake",
        "endpoint": None,
        "secrets_vault_path": None,
        "created": "2026-01-01T00:00:00Z",
        "last_status": "ready",
    }


class Rendezvous(Driver):
    """Provision of "a" waits until provision of "b" has started: proves concurrency."""

    name: ClassVar[str] = "rendezvous"

    def __init__(self) -> None:
        self.b_started = asyncio.Event()

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        if slug == "a":
            await self.b_started.wait()
        else:
            self.b_started.set()
        return DeploymentRef(
            workspace_slug=slug, tier=profile.tier, driver=self.name, created=utc_now(), last_status="ready"
        )


class Broken(Driver):
    name: ClassVar[str] = "broken"

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        raise KeyError("the driver has a bug")


async def test_requests_before_initialize_are_refused_with_not_initialized() -> None:
    peer = Peer(MemoryConnection(FakeDriver()))
    reply = await peer.request("status", {"ref": _ref("a")})
    assert reply.error is not None
    assert reply.error["code"] == codes.NOT_INITIALIZED
    assert reply.error["data"]["kind"] == "not_initialized"
    await peer.close()


async def test_no_common_version_names_the_supported_ones() -> None:
    peer = Peer(MemoryConnection(FakeDriver()))
    reply = await peer.request(
        "initialize", {"protocol_versions": [7], "host": {"name": "h", "version": "1"}}
    )
    assert reply.error is not None
    assert reply.error["code"] == codes.UNSUPPORTED_VERSION
    assert reply.error["data"] == {"kind": "unsupported_version", "supported": [1]}
    await peer.close()


async def test_an_invalid_config_is_invalid_params_listing_the_problems() -> None:
    peer = Peer(MemoryConnection(FakeDriver()))
    reply = await peer.request(
        "initialize",
        {"protocol_versions": [1], "host": {"name": "h", "version": "1"}, "config": {"colour": "blue"}},
    )
    assert reply.error is not None
    assert reply.error["code"] == codes.INVALID_PARAMS
    assert any("colour" in problem for problem in reply.error["data"]["errors"])
    await peer.close()


async def test_the_handshake_announces_methods_and_the_config_schema() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request(
            "initialize", {"protocol_versions": [1], "host": {"name": "h", "version": "1"}}
        )
        assert reply.error is not None, "a second initialize is refused"
    peer = Peer(MemoryConnection(FakeDriver()))
    info = await peer.initialize()
    assert info.driver == "fake"
    assert info.capabilities.methods == [
        "provision",
        "status",
        "upgrade",
        "teardown",
        "list",
        "validate_profile",
        "plan",
        "stop",
        "start",
    ]
    assert info.config_schema is not None and info.config_schema["type"] == "object"
    await peer.close()


async def test_requests_run_concurrently() -> None:
    async with open_peer(Rendezvous()) as peer:
        first = asyncio.create_task(
            peer.request("provision", {"slug": "a", "profile": {"tier": "t", "driver": "rendezvous"}})
        )
        second = await peer.request(
            "provision", {"slug": "b", "profile": {"tier": "t", "driver": "rendezvous"}}
        )
        assert second.ok
        assert (await first).ok


async def test_cancel_answers_minus_32800_and_the_driver_rolls_back() -> None:
    async with open_peer(FakeDriver()) as peer:
        slow = profile(delay=30).model_dump(mode="json")
        sent, future = await peer.start_request("provision", {"slug": "slow", "profile": slow})
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, future, 5)
        assert reply.error is not None
        assert reply.error["code"] == codes.CANCELLED
        assert reply.error["data"] == {"kind": "cancelled", "rolled_back": True}
        status = await peer.request("status", {"ref": _ref("slow")})
        assert status.result["state"] == "absent"


async def test_cancel_of_an_unknown_id_is_ignored() -> None:
    async with open_peer(FakeDriver()) as peer:
        await peer.notify("cancel", {"id": 999})
        assert (await peer.request("status", {"ref": _ref("x")})).ok


async def test_a_handler_exception_is_internal_error_and_the_adapter_lives_on() -> None:
    async with open_peer(Broken()) as peer:
        reply = await peer.request("status", {"ref": _ref("x")})
        assert reply.error is not None
        assert reply.error["code"] == codes.INTERNAL_ERROR
        assert reply.error["data"]["kind"] == "internal"
        assert "KeyError" in reply.error["message"]
        again = await peer.request("status", {"ref": _ref("x")})
        assert again.error is not None and again.error["code"] == codes.INTERNAL_ERROR


async def test_a_verb_the_driver_does_not_implement_is_method_not_found() -> None:
    async with open_peer(Broken()) as peer:
        reply = await peer.request("teardown", {"ref": _ref("x")})
        assert reply.error is not None and reply.error["code"] == codes.METHOD_NOT_FOUND


async def test_optional_methods_not_announced_are_method_not_found() -> None:
    async with open_peer(Broken()) as peer:
        reply = await peer.request("list", {})
        assert reply.error is not None
        assert reply.error["data"] == {"kind": "method_not_found", "method": "list"}


async def test_invalid_params_list_every_problem() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request("provision", {"slug": "UPPER", "profile": {"tier": "t"}})
        assert reply.error is not None and reply.error["code"] == codes.INVALID_PARAMS
        errors = reply.error["data"]["errors"]
        assert any(e.startswith("slug") for e in errors)
        assert any(e.startswith("profile.driver") for e in errors)
        # an unknown member is ignored (tests/test_protocol_rules.py); a known one of the wrong type is not
        wrong = await peer.request("status", {"ref": {**_ref("a"), "created": 1767225600}, "colour": 1})
        assert wrong.error is not None and wrong.error["code"] == codes.INVALID_PARAMS
        assert wrong.error["data"]["errors"] == [
            "ref.created: Input should be an RFC 3339 timestamp string, such as 2026-11-22T10:06:01Z"
        ]


async def test_envelope_errors_are_invalid_request() -> None:
    async with open_peer(FakeDriver()) as peer:
        await peer.send_raw(encode({"jsonrpc": "1.0", "id": 5, "method": "status"}))
        answer = await peer.next_unmatched(5)
        assert isinstance(answer, dict)
        assert answer["error"]["code"] == codes.INVALID_REQUEST
        await peer.send_raw(encode({"jsonrpc": "2.0", "id": "text", "method": "status"}))
        answer = await peer.next_unmatched(5)
        assert isinstance(answer, dict)
        assert answer["id"] == "text" and answer["error"]["data"]["kind"] == "invalid_request"


async def test_a_batch_is_answered_with_an_array() -> None:
    async with open_peer(FakeDriver()) as peer:
        batch = [
            {"jsonrpc": "2.0", "id": 100, "method": "status", "params": {"ref": _ref("a")}},
            {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 1}},
            {"jsonrpc": "2.0", "id": 101, "method": "nope"},
        ]
        await peer.send_raw(encode(batch))
        answer = await peer.next_unmatched(5)
        assert isinstance(answer, list)
        assert sorted(item["id"] for item in answer) == [100, 101]


async def test_progress_reaches_the_host_during_provision() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request("provision", {"slug": "p", "profile": profile().model_dump(mode="json")})
        fractions = [event["params"]["fraction"] for event in reply.progress]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0
        assert fractions == sorted(fractions)
        assert all(event["params"]["request_id"] == reply.sent["id"] for event in reply.progress)


async def test_shutdown_cancels_work_in_flight_and_refuses_new_requests() -> None:
    async with open_peer(FakeDriver()) as peer:
        slow = profile(delay=30).model_dump(mode="json")
        sent, future = await peer.start_request("provision", {"slug": "s", "profile": slow})
        shutdown = await peer.request("shutdown", {})
        assert shutdown.ok and shutdown.result is None
        cancelled = await peer.finish(sent, future, 5)
        assert cancelled.error is not None and cancelled.error["code"] == codes.CANCELLED
        late = await peer.request("status", {"ref": _ref("s")})
        assert late.error is not None and late.error["code"] == codes.INVALID_REQUEST


async def test_the_data_dir_is_created_private(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "fake"
    async with open_peer(FakeDriver(), data_dir=folder):
        assert folder.is_dir()
        assert folder.stat().st_mode & 0o777 == 0o700


class SlowUndo(Driver):
    """Provision works until cancelled, then rolls back through ``ctx.cleanup``; the test
    decides when the undo may finish (``release``). Teardown removes under ``ctx.cleanup``."""

    name: ClassVar[str] = "slowundo"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.undo_started = asyncio.Event()
        self.release = asyncio.Event()
        self.undone = asyncio.Event()
        self.events: list[str] = []

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        try:
            self.started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await ctx.cleanup(self._undo())
            raise
        raise AssertionError("unreachable")

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        self.started.set()
        await ctx.cleanup(self._undo())

    async def _undo(self) -> None:
        self.undo_started.set()
        await self.release.wait()
        self.events.append("undone")
        self.undone.set()

    async def close(self) -> None:
        self.events.append("driver closed")


class PlainRollback(Driver):
    """Rolls back with a plain ``await`` (no ``ctx.cleanup``): a second cancel would break it."""

    name: ClassVar[str] = "plain"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.rolling_back = asyncio.Event()
        self.release = asyncio.Event()
        self.finished_rollback = False

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        try:
            self.started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.rolling_back.set()
            await self.release.wait()
            self.finished_rollback = True
            raise
        raise AssertionError("unreachable")


def _provision(driver: str) -> dict[str, Any]:
    return {"slug": "undo", "profile": {"tier": "t", "driver": driver}}


async def _round_trip(peer: Peer) -> None:
    """A request answered after everything sent before it was handled."""
    await peer.request("status", {"ref": _ref("x")})


async def test_a_cancelled_request_is_answered_only_after_its_cleanup_finished() -> None:
    driver = SlowUndo()
    async with open_peer(driver) as peer:
        sent, future = await peer.start_request("provision", _provision("slowundo"))
        await driver.started.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        await driver.undo_started.wait()
        await _round_trip(peer)
        assert not future.done(), "answered while the rollback was still running"
        driver.release.set()
        reply = await peer.finish(sent, future, 5)
        assert driver.undone.is_set()
        assert reply.error is not None and reply.error["code"] == codes.CANCELLED
        assert reply.error["data"] == {"kind": "cancelled", "rolled_back": True}


async def test_a_cancel_during_cleanup_work_lets_it_finish_first() -> None:
    driver = SlowUndo()
    async with open_peer(driver) as peer:
        sent, future = await peer.start_request("teardown", {"ref": _ref("a")})
        await driver.undo_started.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        await _round_trip(peer)
        assert not future.done() and not driver.undone.is_set()
        driver.release.set()
        reply = await peer.finish(sent, future, 5)
        assert driver.undone.is_set()
        assert reply.error is not None
        assert reply.error["data"] == {"kind": "cancelled", "rolled_back": True}


async def test_a_rollback_past_the_grace_is_answered_rolled_back_false() -> None:
    driver = SlowUndo()
    peer = Peer(MemoryConnection(driver, rollback_grace=0.05))
    await peer.initialize()
    sent, future = await peer.start_request("provision", _provision("slowundo"))
    await driver.started.wait()
    await peer.notify("cancel", {"id": sent["id"]})
    reply = await peer.finish(sent, future, 5)
    assert reply.error is not None and reply.error["code"] == codes.CANCELLED
    assert reply.error["data"] == {"kind": "cancelled", "rolled_back": False}
    assert not driver.undone.is_set()
    driver.release.set()  # the cleanup was not abandoned: it runs on in the background
    await driver.undone.wait()
    await peer.close()


async def test_a_request_is_cancelled_at_most_once() -> None:
    driver = PlainRollback()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    sent, future = await peer.start_request("provision", _provision("plain"))
    await driver.started.wait()
    await peer.notify("cancel", {"id": sent["id"]})
    await driver.rolling_back.wait()
    await peer.notify("cancel", {"id": sent["id"]})  # again: must not interrupt the rollback
    # nor must shutdown, whose answer waits for the rollback's (in-flight requests answer first)
    stop, stopped = await peer.start_request("shutdown", {})
    closing = asyncio.create_task(peer.close())  # nor stdin EOF
    # Callbacks run in order: close() reaches its cancels before the rollback may finish.
    asyncio.get_running_loop().call_soon(driver.release.set)
    reply = await peer.finish(sent, future, 5)
    assert (await peer.finish(stop, stopped, 5)).ok
    await closing
    assert driver.finished_rollback
    assert reply.error is not None and reply.error["code"] == codes.CANCELLED


async def test_closing_waits_for_the_rollback_before_closing_the_driver() -> None:
    driver = SlowUndo()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    sent, future = await peer.start_request("provision", _provision("slowundo"))
    await driver.started.wait()
    closing = asyncio.create_task(peer.close())  # like stdin EOF: cancels, then waits
    await driver.undo_started.wait()
    assert not closing.done()
    driver.release.set()
    await closing
    assert driver.events == ["undone", "driver closed"]
    reply = await peer.finish(sent, future, 5)
    assert reply.error is not None
    assert reply.error["data"] == {"kind": "cancelled", "rolled_back": True}


async def test_a_deeply_nested_line_is_a_parse_error_and_the_server_carries_on() -> None:
    async with open_peer(FakeDriver()) as peer:
        for line in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
            await peer.send_raw(line + b"\n")
            answer = await peer.next_unmatched(5)
            assert isinstance(answer, dict)
            assert answer["id"] is None and answer["error"]["code"] == codes.PARSE_ERROR
            assert "nested too deeply" in answer["error"]["data"]["reason"]
        assert (await peer.request("status", {"ref": _ref("x")})).ok


async def test_non_finite_numbers_in_a_request_are_a_parse_error() -> None:
    async with open_peer(FakeDriver()) as peer:
        for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
            await peer.send_raw(
                b'{"jsonrpc":"2.0","id":50,"method":"status","params":{"ref":{"x":' + constant + b"}}}\n"
            )
            answer = await peer.next_unmatched(5)
            assert isinstance(answer, dict) and answer["error"]["code"] == codes.PARSE_ERROR
            assert "non-finite" in answer["error"]["data"]["reason"]
        assert (await peer.request("status", {"ref": _ref("x")})).ok


class NonFinite(Driver):
    name: ClassVar[str] = "nonfinite"

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        # A careless driver answering with a dict of its own, not the validated model.
        answer: Any = {
            "state": "ready",
            "observed_at": "2026-01-01T00:00:00Z",
            "details": {"load": float("nan")},
        }
        return cast(StatusReport, answer)


async def test_an_answer_with_a_non_finite_number_becomes_an_internal_error() -> None:
    async with open_peer(NonFinite()) as peer:
        reply = await peer.request("status", {"ref": _ref("x")})
        assert reply.error is not None and reply.error["code"] == codes.INTERNAL_ERROR
        assert "NaN" in reply.error["message"]
        assert (await peer.request("status", {"ref": _ref("x")})).error is not None  # still alive


@pytest.mark.parametrize(
    ("raw", "expected"), [("2.5", 2.5), ("0", 0.0), (" 7 ", 7.0), ("", 30.0), (None, 30.0)]
)
def test_the_rollback_grace_comes_from_the_environment(raw: str | None, expected: float) -> None:
    assert DEFAULT_ROLLBACK_GRACE == 30.0
    environ = {} if raw is None else {ROLLBACK_GRACE_ENV: raw}
    assert rollback_grace_from_env(environ) == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_an_invalid_rollback_grace_is_ignored_with_a_warning(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hearth_adaptersdk"):
        assert rollback_grace_from_env({ROLLBACK_GRACE_ENV: raw}) == DEFAULT_ROLLBACK_GRACE
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"ignoring HEARTH_ROLLBACK_GRACE={raw!r}" in caplog.records[0].getMessage()


class FailingRollback(Driver):
    name: ClassVar[str] = "failingundo"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await ctx.cleanup(_refused_delete())
            raise
        raise AssertionError("not reached")


async def _refused_delete() -> None:
    raise OSError("the backend refused the delete")


async def test_a_cleanup_that_raises_is_answered_rolled_back_false() -> None:
    driver = FailingRollback()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    sent, future = await peer.start_request("provision", _provision("failingundo"))
    await driver.started.wait()
    await peer.notify("cancel", {"id": sent["id"]})
    reply = await peer.finish(sent, future, 5)
    assert reply.error is not None and reply.error["code"] == codes.CANCELLED
    assert reply.error["data"] == {"kind": "cancelled", "rolled_back": False}
    await peer.close()
