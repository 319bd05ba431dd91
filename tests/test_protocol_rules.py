"""The rules docs/protocol.md decides (protocol 1.1), checked on the SDK and the host.

Each test names the rule of the page it proves: how strict a receiver is (unknown members
ignored both ways, types still checked, whole floats as integers, timestamps with a zone, integer
ids), what a request after ``shutdown`` gets, that every request in flight is answered before
``shutdown`` is, what an invalid config says, and the decisions the reference adapter follows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from hearth import AdapterClient, AdapterError, Progress
from hearth._states import resolve
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    MemoryConnection,
    ProvisioningProfile,
    RequestContext,
    ResourceCaps,
    StatusReport,
    codes,
    encode,
    utc_now,
)
from hearth_adaptersdk._codec import LineDecoder, decode_line
from hearth_adaptersdk.testing import Peer, open_peer
from hearth_adaptersdk.wire import METHODS, CancelParams, ErrorResponse, InitializeParams, ValidationResult
from hearth_adaptersdk.wire import Progress as WireProgress
from tests.helpers import profile

#: Members whose content the driver judges (its flags, caps, config, details) or that are
#: free-form (a JSON Schema): a receiver passes them on as they are.
FREE_FORM = frozenset({"driver_flags", "resource_caps", "config", "config_schema", "details"})
FUTURE = {"x_future": {"added_in": "1.2", "items": [1, 2.5, None]}}


def _with_unknown_members(value: Any) -> Any:
    """``value`` with an unknown member added to every protocol object in it."""
    if isinstance(value, list):
        return [_with_unknown_members(item) for item in value]
    if not isinstance(value, dict):
        return value
    decorated = {
        key: item if key in FREE_FORM else _with_unknown_members(item) for key, item in value.items()
    }
    return {**decorated, **FUTURE}


def _decorate(data: bytes) -> bytes:
    decoder = LineDecoder()
    return b"".join(encode(_with_unknown_members(item)) for item in decoder.feed(data))


class FutureAdapter(MemoryConnection):
    """An in-memory adapter whose every answer and notification carries members from the future."""

    def _deliver(self, data: bytes) -> None:
        super()._deliver(_decorate(data))


class FutureBothWays(FutureAdapter):
    """... and whose host also sends members from the future in every request."""

    async def send(self, data: bytes) -> None:
        await super().send(_decorate(data))


def _ref(slug: str, **changes: Any) -> dict[str, Any]:
    return {
        "workspace_slug": slug,
        "tier": "solo",
        "driver": "fake",
        "endpoint": None,
        "secrets_vault_path": None,
        "created": "2026-01-01T00:00:00Z",
        "last_status": "ready",
        **changes,
    }


def _profile(**changes: Any) -> dict[str, Any]:
    return {"tier": "solo", "driver": "fake", "resource_caps": {}, "driver_flags": {}, **changes}


async def _raw(peer: Peer, *messages: dict[str, Any]) -> list[Any]:
    """Send ``messages`` as lines in one write; the answers (notifications skipped), in the
    order of the requests, and ``order`` the order in which they came."""
    await peer.send_raw(b"".join(encode(message) for message in messages))
    answers: dict[Any, Any] = {}
    wanted = [message["id"] for message in messages if "id" in message]
    while len(answers) < len(wanted):
        answer = await peer.next_unmatched(5)
        assert isinstance(answer, dict), answer
        if "id" in answer:
            answers[answer["id"]] = answer
    return [answers[ident] for ident in wanted]


# --- 1. how strict a receiver is ---------------------------------------------------------------
async def test_an_sdk_adapter_ignores_unknown_members_in_envelopes_params_and_objects() -> None:
    peer = Peer(MemoryConnection(FakeDriver()))
    [hello] = await _raw(
        peer,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "trace": "abc",
            "params": {
                "protocol_versions": [1],
                "host": {"name": "h", "version": "1", "build": "x"},
                "host_capabilities": {"streams": True},
                "config": {},
                "data_dir": None,
            },
        },
    )
    assert hello["result"]["driver"] == "fake", hello
    [provisioned] = await _raw(
        peer,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "provision",
            "meta": {"a": 1},
            "params": {"slug": "alpha", "profile": {**_profile(), "priority": 3}, "dry": False},
        },
    )
    assert provisioned["result"]["workspace_slug"] == "alpha", provisioned
    ref = _ref("alpha", zone="eu-1")
    status, listed = await _raw(
        peer,
        {"jsonrpc": "2.0", "method": "a_future_notification", "params": {"x": 1}},
        {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 99, "reason": "x"}},
        {"jsonrpc": "2.0", "id": 3, "method": "status", "params": {"ref": ref, "ctx": 1, "verbose": True}},
        {"jsonrpc": "2.0", "id": 4, "method": "list", "params": {"page": 2}},
    )
    assert status["result"]["state"] == "ready", status
    assert [item["workspace_slug"] for item in listed["result"]] == ["alpha"], listed
    await peer.close()


async def test_unknown_members_are_ignored_but_known_ones_are_still_checked() -> None:
    async with open_peer(FakeDriver()) as peer:
        missing = await peer.request("provision", {"slug": "alpha", "extra": 1})
        assert missing.error is not None and missing.error["code"] == codes.INVALID_PARAMS
        assert missing.error["data"]["errors"] == ["profile: Field required"]
        wrong = await peer.request("status", {"ref": _ref("alpha", tier=7, colour="red")})
        assert wrong.error is not None and wrong.error["code"] == codes.INVALID_PARAMS
        assert wrong.error["data"]["errors"] == ["ref.tier: Input should be a valid string"]


async def test_a_driver_still_judges_its_own_flags_caps_and_config() -> None:
    async with open_peer(FakeDriver()) as peer:
        flags = await peer.request("provision", {"slug": "a", "profile": _profile(driver_flags={"x": 1})})
        assert flags.error is not None and flags.error["code"] == codes.INVALID_PROFILE
        caps = await peer.request("provision", {"slug": "a", "profile": _profile(resource_caps={"gpu": 1})})
        assert caps.error is not None and caps.error["code"] == codes.INVALID_PROFILE
    peer = Peer(MemoryConnection(FakeDriver()))
    config = await peer.request(
        "initialize", {"protocol_versions": [1], "host": {"name": "h", "version": "1"}, "config": {"x": 1}}
    )
    assert config.error is not None and config.error["code"] == codes.INVALID_PARAMS
    await peer.close()


async def test_the_host_client_accepts_unknown_members_in_every_answer_and_notification() -> None:
    events: list[Progress] = []
    async with await AdapterClient.connect(FutureAdapter(FakeDriver()), driver="fake") as client:
        assert client.info is not None and client.supports("list")
        ref = await client.provision("alpha", profile(), on_progress=events.append)
        assert ref.workspace_slug == "alpha" and events and events[-1].fraction == 1.0
        assert (await client.status(ref)).state == "ready"
        assert await client.list() == [ref]
        assert (await client.validate_profile(profile())).valid
        with pytest.raises(AdapterError) as conflict:
            await client.provision("alpha", profile(tier="team"))
        assert conflict.value.kind == "conflict" and conflict.value.data["existing"]["x_future"]
        upgraded = await client.upgrade(ref, profile(tier="team"))
        assert upgraded.tier == "team"
        await client.teardown(upgraded)
        assert (await client.status(upgraded)).state == "tier_torn_down"


async def test_a_whole_session_with_unknown_members_both_ways() -> None:
    async with await AdapterClient.connect(FutureBothWays(FakeDriver()), driver="fake") as client:
        ref = await client.provision("alpha", profile())
        assert (await client.upgrade(ref, profile(tier="team"))).tier == "team"
        await client.teardown(ref)
        assert (await client.status(ref)).state == "tier_torn_down"


@pytest.mark.parametrize("literal", ["1024", "1024.0", "1.024e3", "102400e-2"])
def test_whole_floats_are_integers(literal: str) -> None:
    caps = decode_line(f'{{"memory_mb": {literal}}}'.encode())
    assert ResourceCaps.model_validate(caps).memory_mb == 1024
    hello = decode_line(
        f'{{"protocol_versions": [{literal}], "host": {{"name": "h", "version": "1"}}}}'.encode()
    )
    assert InitializeParams.model_validate(hello).protocol_versions == [1024]


@pytest.mark.parametrize("value", [1024.5, "1024", True, float("inf")])
def test_integers_refuse_fractions_strings_booleans_and_infinities(value: object) -> None:
    with pytest.raises(ValidationError):
        ResourceCaps.model_validate({"memory_mb": value})


@pytest.mark.parametrize("value", ["1.5", True, float("nan")])
def test_numbers_are_finite_json_numbers(value: object) -> None:
    with pytest.raises(ValidationError):
        ResourceCaps.model_validate({"cpu": value})
    assert ResourceCaps.model_validate({"cpu": 2}).cpu == 2.0


@pytest.mark.parametrize("value", ["true", 1, None])
def test_booleans_are_true_or_false(value: object) -> None:
    with pytest.raises(ValidationError):
        ValidationResult.model_validate({"valid": value})


async def test_a_whole_float_reaches_the_driver_as_an_integer() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request(
            "provision", {"slug": "alpha", "profile": _profile(resource_caps={"cpu": 1, "memory_mb": 1024.0})}
        )
        assert reply.ok, reply.response
        fractional = await peer.request(
            "provision", {"slug": "beta", "profile": _profile(resource_caps={"memory_mb": 1024.5})}
        )
        assert fractional.error is not None and fractional.error["code"] == codes.INVALID_PARAMS
        assert fractional.error["data"]["errors"] == [
            "profile.resource_caps.memory_mb: Input should be a valid integer, got a number with a "
            "fractional part"
        ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:06:01Z", datetime(2026, 11, 22, 10, 6, 1, tzinfo=UTC)),
        ("2026-11-22T10:06:01.5Z", datetime(2026, 11, 22, 10, 6, 1, 500000, tzinfo=UTC)),
        ("2026-11-22T10:06:01.692914123Z", datetime(2026, 11, 22, 10, 6, 1, 692914, tzinfo=UTC)),
        ("2026-11-22T11:06:01+01:00", datetime(2026, 11, 22, 10, 6, 1, tzinfo=UTC)),
        ("2026-11-22t10:06:01z", datetime(2026, 11, 22, 10, 6, 1, tzinfo=UTC)),
        ("2026-11-22 10:06:01-00:00", datetime(2026, 11, 22, 10, 6, 1, tzinfo=UTC)),
    ],
)
def test_timestamps_are_rfc3339_with_any_fractional_precision(text: str, expected: datetime) -> None:
    report = StatusReport.model_validate({"state": "ready", "observed_at": text})
    assert report.observed_at == expected
    written = report.model_dump(mode="json")["observed_at"]
    assert (
        written.endswith("Z")
        and StatusReport.model_validate({**report.model_dump(), "observed_at": written}) == report
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-11-22T10:06:01", "timezone"),
        ("2026-11-22T10:06:01.5", "timezone"),
        ("2026-11-22", "RFC 3339"),
        ("2026-11-22T10:06Z", "RFC 3339"),
        ("2026-11-22T10:06:01+0100", "RFC 3339"),
        ("1763805961", "RFC 3339"),
        (1763805961, "RFC 3339 timestamp string"),
    ],
)
def test_timestamps_without_a_zone_or_not_rfc3339_are_refused(value: object, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        DeploymentRef.model_validate(_ref("alpha", created=value))


async def test_a_timestamp_without_a_zone_is_invalid_params_on_the_wire() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request("status", {"ref": _ref("alpha", created="2026-01-01T00:00:00")})
        assert reply.error is not None and reply.error["code"] == codes.INVALID_PARAMS
        assert reply.error["data"]["errors"][0].startswith("ref.created: Input should have timezone info")


async def test_ids_are_integers_written_as_integers() -> None:
    async with open_peer(FakeDriver()) as peer:
        for ident, echoed in ((7.0, None), ("7", "7"), (True, None)):
            await peer.send_raw(encode({"jsonrpc": "2.0", "id": ident, "method": "list"}))
            answer = await peer.next_unmatched(5)
            assert isinstance(answer, dict) and answer["id"] == echoed
            assert answer["error"]["code"] == codes.INVALID_REQUEST, answer
            assert answer["error"]["data"]["reason"] == "id must be an integer"
    for model, data in ((WireProgress, {"request_id": 2.0, "message": "m"}), (CancelParams, {"id": True})):
        with pytest.raises(ValidationError):
            model.model_validate(data)


async def test_params_may_be_omitted_and_then_mean_an_empty_object() -> None:
    async with open_peer(FakeDriver()) as peer:
        [listed] = await _raw(peer, {"jsonrpc": "2.0", "id": 40, "method": "list"})
        assert listed["result"] == []
        [missing] = await _raw(peer, {"jsonrpc": "2.0", "id": 41, "method": "status"})
        assert missing["error"]["data"]["errors"] == ["ref: Field required"]
        [stopped] = await _raw(peer, {"jsonrpc": "2.0", "id": 42, "method": "shutdown"})
        assert stopped == {"jsonrpc": "2.0", "id": 42, "result": None}


# --- 2. invalid config -------------------------------------------------------------------------
async def test_an_invalid_config_names_the_key_and_where_it_is_set() -> None:
    peer = Peer(MemoryConnection(FakeDriver()))
    reply = await peer.request(
        "initialize",
        {"protocol_versions": [1], "host": {"name": "h", "version": "1"}, "config": {"colour": "blue"}},
    )
    assert reply.error == {
        "code": codes.INVALID_PARAMS,
        "message": "Invalid config ([adapters.fake] in .hearth/hearth.toml)",
        "data": {"kind": "invalid_params", "errors": ["config.colour: Extra inputs are not permitted"]},
    }
    await peer.close()
    with pytest.raises(AdapterError) as caught:
        await AdapterClient.connect(MemoryConnection(FakeDriver()), config={"colour": "blue"}, driver="fake")
    assert caught.value.kind == "invalid_params"
    assert caught.value.message == (
        "hearth-adapter-fake: Invalid config ([adapters.fake] in .hearth/hearth.toml): "
        "config.colour: Extra inputs are not permitted"
    )


# --- 4. shutdown ---------------------------------------------------------------------------------
class Holding(Driver):
    """``hold`` rolls back through ctx.cleanup once cancelled; ``finish`` completes its work
    although cancelled (the result wins); every verb that starts is recorded."""

    name: ClassVar[str] = "holding"

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {"hold": asyncio.Event(), "finish": asyncio.Event()}
        self.cancelled: dict[str, asyncio.Event] = {"hold": asyncio.Event(), "finish": asyncio.Event()}
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        self.calls.append(f"provision {slug}")
        ref = DeploymentRef(
            workspace_slug=slug, tier=profile.tier, driver=self.name, created=utc_now(), last_status="ready"
        )
        self.started[slug].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled[slug].set()
            await ctx.cleanup(self.release.wait())
            if slug == "hold":
                raise
        return ref

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        self.calls.append(f"status {ref.workspace_slug}")
        return StatusReport(state="absent", observed_at=utc_now())


def _append(order: list[str], label: str, _: object) -> None:
    order.append(label)


def _provision(slug: str) -> dict[str, Any]:
    return {"slug": slug, "profile": {"tier": "solo", "driver": "holding"}}


async def test_every_request_in_flight_is_answered_before_shutdown_is() -> None:
    driver = Holding()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    order: list[str] = []
    hold, held = await peer.start_request("provision", _provision("hold"))
    finish, finished = await peer.start_request("provision", _provision("finish"))
    await driver.started["hold"].wait()
    await driver.started["finish"].wait()
    stop, stopped = await peer.start_request("shutdown", {})
    for label, future in (("hold", held), ("finish", finished), ("shutdown", stopped)):
        future.add_done_callback(functools.partial(_append, order, label))
    await driver.cancelled["hold"].wait()  # shutdown cancelled both ...
    await driver.cancelled["finish"].wait()
    assert not stopped.done() and order == []  # ... and waits for their answers
    driver.release.set()
    cancelled = await peer.finish(hold, held, 5)
    result = await peer.finish(finish, finished, 5)
    assert (await peer.finish(stop, stopped, 5)).ok
    assert order[-1] == "shutdown" and sorted(order) == ["finish", "hold", "shutdown"]
    assert cancelled.error == {
        "code": codes.CANCELLED,
        "message": "Request cancelled",
        "data": {"kind": "cancelled", "rolled_back": True},
    }
    assert result.ok and result.response["result"]["workspace_slug"] == "finish"  # the result wins
    await peer.close()


async def test_a_request_after_shutdown_is_invalid_request_and_never_starts() -> None:
    driver = Holding()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    # shutdown and a request on the very next line, in one write: the request is still "after"
    stopped, late = await _raw(
        peer,
        {"jsonrpc": "2.0", "id": 50, "method": "shutdown", "params": {}},
        {"jsonrpc": "2.0", "id": 51, "method": "status", "params": {"ref": _ref("a", driver="holding")}},
    )
    if stopped["id"] == 51:
        stopped, late = late, stopped
    assert stopped == {"jsonrpc": "2.0", "id": 50, "result": None}
    after = [late]
    after += await _raw(
        peer,
        {"jsonrpc": "2.0", "id": 52, "method": "shutdown", "params": {}},
        {"jsonrpc": "2.0", "id": 53, "method": "initialize", "params": {}},
    )
    for answer in after:
        assert answer["error"] == {
            "code": codes.INVALID_REQUEST,
            "message": "Invalid request",
            "data": {"kind": "invalid_request", "reason": "the adapter is shutting down"},
        }, answer
    assert driver.calls == []
    await peer.close()


async def test_a_second_initialize_and_an_id_in_flight_are_invalid_request_with_a_reason() -> None:
    driver = Holding()
    peer = Peer(MemoryConnection(driver))
    await peer.initialize()
    hello = {"protocol_versions": [1], "host": {"name": "h", "version": "1"}}
    again = await peer.request("initialize", hello)
    assert again.error is not None
    assert again.error["data"] == {"kind": "invalid_request", "reason": "initialize was already answered"}
    hold, held = await peer.start_request("provision", _provision("hold"))
    await driver.started["hold"].wait()
    status = {"ref": _ref("hold", driver="holding")}
    try:
        await peer.send_raw(
            encode({"jsonrpc": "2.0", "id": hold["id"], "method": "status", "params": status})
        )
        twice = await asyncio.wait_for(held, 5)  # same id: the refusal is the first answer with it
        reason = f"id {hold['id']} is already in flight"
        assert twice["error"]["data"] == {"kind": "invalid_request", "reason": reason}
        assert not driver.cancelled["hold"].is_set()  # the request in flight goes on undisturbed
        assert driver.calls == ["provision hold"]  # and the second one never started
    finally:
        driver.release.set()
        await peer.close()


# --- 6, 7, 8: the decisions the reference adapter follows -----------------------------------------
def test_unknown_is_an_observed_state_that_never_reads_as_absent() -> None:
    report = StatusReport.model_validate({"state": "unknown", "observed_at": "2026-01-01T00:00:00Z"})
    assert report.state == "unknown"
    for recorded in ("ready", "provisioning", "upgrading", "tearing_down", "failed"):
        for verb in (None, "provision", "upgrade", "teardown"):
            assert resolve(recorded, "unknown", verb=verb) is None
    assert resolve("ready", "absent") is not None  # while absent does make a ghost


async def test_invalid_transition_on_a_slug_never_seen_names_the_state_absent() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request("upgrade", {"ref": _ref("never"), "profile": _profile(tier="team")})
        assert reply.error is not None and reply.error["code"] == codes.INVALID_TRANSITION
        assert reply.error["data"] == {"kind": "invalid_transition", "state": "absent"}


async def test_a_torn_down_slug_can_be_provisioned_again() -> None:
    async with open_peer(FakeDriver()) as peer:
        first = await peer.provision("alpha", profile())
        await peer.teardown(first)
        again = await peer.provision("alpha", profile(tier="team"))
        assert (again.tier, again.last_status) == ("team", "ready")
        assert again.created >= first.created
        assert (await peer.status(again)).state == "ready"


async def test_a_profile_for_another_driver_is_invalid_profile_naming_driver() -> None:
    async with open_peer(FakeDriver()) as peer:
        reply = await peer.request("provision", {"slug": "new", "profile": _profile(driver="docker")})
        assert reply.error is not None and reply.error["code"] == codes.INVALID_PROFILE
        assert reply.error["data"]["errors"][0].startswith("driver: ")


# --- the page itself ---------------------------------------------------------------------------
def _page_examples() -> list[list[dict[str, Any]]]:
    """The one-line JSON-RPC messages of each ```json block of docs/protocol.md."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", page, flags=re.DOTALL)
    found = []
    decoder = json.JSONDecoder()
    for block in blocks:  # one message per line, or one spread over several lines
        messages, at = [], 0
        while block[at:].strip():
            at += len(block[at:]) - len(block[at:].lstrip())
            message, at = decoder.raw_decode(block, at)
            messages.append(message)
        found.append(messages)
    inline = re.findall(r"`(\{\"jsonrpc\".*?\})`", page)
    shortened = "…"  # an example with a part left out is prose, not a message
    return [block for block in found if block] + [
        [json.loads(text)] for text in inline if shortened not in text
    ]


def test_every_example_on_the_page_fits_the_models() -> None:
    checked = 0
    for block in _page_examples():
        requests = {m["id"]: m for m in block if "method" in m and "id" in m}
        for message in block:
            if "error" in message:
                error = message["error"]
                assert error["data"]["kind"] == codes.kind_of(error["code"]), message
                ErrorResponse.model_validate(message)
            elif "method" in message and "id" not in message:
                if message["method"] == "progress":
                    WireProgress.model_validate(message["params"])
                else:
                    CancelParams.model_validate(message["params"])
            elif "method" in message:
                params_model, _ = METHODS[message["method"]]
                answer = next((m for m in block if m.get("id") == message["id"] and m is not message), None)
                refused = answer is not None and answer.get("error", {}).get("code") == codes.INVALID_PARAMS
                if refused:
                    with pytest.raises(ValidationError):
                        params_model.model_validate(message.get("params", {}))
                else:
                    params_model.model_validate(message.get("params", {}))
            elif message["id"] in requests:
                _, shape = METHODS[requests[message["id"]]["method"]]
                if shape is None:
                    assert message["result"] is None
                elif isinstance(shape, list):
                    for item in message["result"]:
                        shape[0].model_validate(item)
                else:
                    shape.model_validate(message["result"])
            checked += 1
    assert checked >= 40
