"""Typed errors (issue 21): a console switches on ``kind`` and ``reason``, never on the message.

Every error says whether it is ``retryable`` (``_errors.RETRYABLE``); a ``conflict`` says why
(``reason``, one of ``CONFLICT_REASONS``, decided in ``_states.py``) on the Host, over HTTP and
through ``RemoteHost``; 503 and 423 answers carry ``Retry-After``; a request pydantic refuses
lists its problems in ``invalid_input.errors``. The document's side is in ``test_openapi.py``.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from hearth import (
    BackendUnavailable,
    Busy,
    CallTimeout,
    Conflict,
    Host,
    InvalidInput,
    InvalidTransition,
    NotFound,
    RemoteHost,
    SlugLocked,
    Unavailable,
)
from hearth._errors import CONFLICT_REASONS, RETRYABLE, error_from_json
from hearth._server._app import create_app
from hearth._server._schemas import RETRY_AFTER, STATUS
from hearth._states import (
    ConflictReason,
    Recorded,
    adapter_conflict_reason,
    adopt_other_tier,
    adopt_recorded,
    key_reused,
    preview_verb,
    rules,
)
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import DeploymentRef, codes, utc_now
from tests import helpers
from tests.test_remote import daemon

BOUND = 30.0
Json = dict[str, Any]


class Other(FakeDriver):
    """The fake under another driver's name."""

    name: ClassVar[str] = "other"


def make_host(tmp_path: Path) -> Host:
    return helpers.make_host(tmp_path, drivers={"other": Other}, idle_timeout=None)


@contextlib.asynccontextmanager
async def api(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(host))
    async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
        yield client


def error_of(response: httpx.Response) -> Json:
    body = response.json()
    assert set(body) == {"error"}, body
    return typing.cast(Json, body["error"])


# --- the tables ----------------------------------------------------------------------------------
def test_the_reasons_are_one_fixed_set_and_every_kind_says_if_it_is_retryable() -> None:
    assert set(typing.get_args(ConflictReason)) == set(CONFLICT_REASONS)
    assert set(STATUS) <= set(RETRYABLE)
    assert {kind for kind, again in RETRYABLE.items() if again} == {
        "busy",
        "timeout",
        "slug_locked",
        "closed",
        "store_error",
        "daemon_unavailable",
        "unavailable",
        "backend_unavailable",
    }


def test_the_exceptions_expose_retryable_and_their_json_carries_it() -> None:
    for error, again in (
        (Busy("busy", 3), True),
        (SlugLocked("held"), True),
        (Unavailable("draining", 4), True),
        (CallTimeout("slow"), True),
        (BackendUnavailable("down", codes.BACKEND_UNAVAILABLE, {"kind": "backend_unavailable"}), True),
        (InvalidInput("bad"), False),
        (NotFound("none"), False),
        (key_reused("'k'", 7, "provision", "alpha"), False),
        (InvalidTransition("final", codes.INVALID_TRANSITION, {"kind": "invalid_transition"}), False),
    ):
        assert error.retryable is again, error
        assert error.to_json()["retryable"] is again, error


def test_the_rules_name_each_conflicts_reason() -> None:
    ref = DeploymentRef(
        workspace_slug="alpha",
        driver="fake",
        tier="solo",
        created=utc_now(),
        last_status="ready",
    )
    assert key_reused("'k'", 7, "provision", "alpha").reason == "key_reused"
    assert key_reused("'k'", 7, "provision", "alpha").data["operation"] == 7
    refused = adopt_recorded("alpha", "ready", "fake")
    assert refused is not None and refused.reason == "recorded"
    assert adopt_recorded("alpha", "tier_torn_down", "fake") is None
    other = adopt_other_tier("alpha", "solo", "team")
    assert other is not None and other.reason == "other_tier"
    assert adopt_other_tier("alpha", "solo", "solo") is None and adopt_other_tier("alpha", None, "x") is None
    assert adapter_conflict_reason(ref, "team", "fake") == "other_tier"
    assert adapter_conflict_reason(ref, "solo", "docker") == "other_driver"
    assert adapter_conflict_reason(ref, "solo", "fake") == "backend"
    assert adapter_conflict_reason(None, "solo", "fake") == "backend"
    # an adapter's conflict that names no reason (or one not of the set) says ``backend``
    plain = Conflict("in the way", codes.CONFLICT, {"kind": "conflict", "reason": "whatever"})
    assert plain.reason == "backend" and plain.to_json()["reason"] == "backend"


@pytest.mark.parametrize(
    ("recorded", "tier", "driver", "reason"),
    [
        (Recorded("ready", "solo", "fake"), "team", "fake", "other_tier"),
        (Recorded("failed", "solo", "fake"), "team", "fake", "other_tier"),
        (Recorded("ready", "solo", "fake"), "solo", "other", "other_driver"),
        (Recorded("failed", "solo", "fake"), "team", "other", "other_driver"),
    ],
)
def test_the_rules_of_a_provision_name_the_conflicts_reason(
    recorded: Recorded, tier: str, driver: str, reason: str
) -> None:
    with pytest.raises(Conflict) as refused:
        rules("provision", recorded, "alpha", tier=tier, driver=driver)
    assert refused.value.reason == reason and refused.value.to_json()["reason"] == reason
    with pytest.raises(Conflict) as previewed:
        preview_verb(Recorded("ready", "solo", "fake"), "alpha", "other")
    assert previewed.value.reason == "other_driver"


def test_an_error_read_back_from_its_json_keeps_reason_and_retryable() -> None:
    conflict = error_from_json(key_reused("'k'", 7, "provision", "alpha").to_json())
    assert isinstance(conflict, Conflict)
    assert (conflict.reason, conflict.retryable, conflict.data["operation"]) == ("key_reused", False, 7)
    busy = error_from_json({"kind": "busy", "message": "m", "operation": 2, "retryable": True})
    assert isinstance(busy, Busy) and busy.retryable and busy.operation == 2
    said = error_from_json({"kind": "conflict", "message": "m", "code": codes.CONFLICT, "retryable": True})
    assert said.retryable is True  # what the daemon said wins over this version's table
    invalid = error_from_json(
        {"kind": "invalid_input", "message": "m", "errors": [{"loc": ["body", "tier"], "msg": "missing"}]}
    )
    assert isinstance(invalid, InvalidInput)
    assert invalid.to_json()["errors"] == [{"loc": ["body", "tier"], "msg": "missing"}]


# --- each conflict path, on the Host and over HTTP -----------------------------------------------
async def _conflicts_of_the_host(host: Host) -> dict[str, Conflict]:
    """Each conflict the host can refuse with, by the path that raised it."""
    seen: dict[str, Conflict] = {}

    async def caught(name: str, call: typing.Awaitable[Any]) -> None:
        with pytest.raises(Conflict) as refused:
            await call
        seen[name] = refused.value

    await host.provision("alpha", tier="solo", driver="fake")
    await caught("provision, other tier", host.provision("alpha", tier="team", driver="fake"))
    await caught("provision, other driver", host.provision("alpha", tier="solo", driver="other"))
    await caught("plan, other driver", host.plan("alpha", tier="solo", driver="other"))
    await caught("adopt, recorded", host.adopt("alpha", driver="fake", tier="solo"))
    await host.forget("alpha")
    await caught("adopt, other tier", host.adopt("alpha", driver="fake", tier="team"))
    await caught("provision, the adapter's", host.provision("alpha", tier="team", driver="fake"))
    first = await host.start_provision("beta", tier="brisk", driver="fake", key="k-1")
    await caught("key", host.start_provision("beta", tier="solo", driver="fake", key="k-1"))
    await first.wait()
    return seen


EXPECTED: dict[str, str] = {
    "provision, other tier": "other_tier",
    "provision, other driver": "other_driver",
    "plan, other driver": "other_driver",
    "adopt, recorded": "recorded",
    "adopt, other tier": "other_tier",
    "provision, the adapter's": "other_tier",
    "key": "key_reused",
}


async def test_every_conflict_of_the_host_says_its_reason(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        seen = await _conflicts_of_the_host(host)
    assert {name: error.reason for name, error in seen.items()} == EXPECTED
    for name, error in seen.items():
        body = error.to_json()
        assert (body["kind"], body["reason"], body["retryable"]) == ("conflict", EXPECTED[name], False)
    assert seen["key"].data["operation"] >= 1
    assert seen["adopt, recorded"].existing is not None and seen["adopt, other tier"].existing is not None
    assert seen["provision, the adapter's"].existing is not None  # what the backend holds


async def test_every_conflict_over_http_says_its_reason(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:

        async def refused(reason: str, answer: httpx.Response) -> Json:
            assert answer.status_code == 409, answer.text
            error = error_of(answer)
            assert (error["kind"], error["reason"], error["retryable"]) == ("conflict", reason, False), error
            return error

        solo = {"slug": "alpha", "tier": "solo", "driver": "fake"}
        made = await client.post("/v1/workspaces", json=solo, params={"wait": 20})
        assert made.status_code == 200, made.text
        await refused("other_tier", await client.post("/v1/workspaces", json={**solo, "tier": "team"}))
        await refused("other_driver", await client.post("/v1/workspaces", json={**solo, "driver": "other"}))
        await refused("other_driver", await client.post("/v1/plan", json={**solo, "driver": "other"}))
        adopt = {"driver": "fake", "tier": "solo"}
        recorded = await refused("recorded", await client.post("/v1/workspaces/alpha/adopt", json=adopt))
        assert recorded["existing"]["workspace_slug"] == "alpha"
        assert (await client.post("/v1/workspaces/alpha/forget")).status_code == 200
        adopt_team = {**adopt, "tier": "team"}
        await refused("other_tier", await client.post("/v1/workspaces/alpha/adopt", json=adopt_team))
        # the adapter's own conflict: the operation's error says the reason too
        team = await client.post("/v1/workspaces", json={**solo, "tier": "team"}, params={"wait": 20})
        assert team.status_code == 200 and team.json()["state"] == "failed", team.text
        recorded_error = team.json()["error"]
        assert (recorded_error["kind"], recorded_error["reason"]) == ("conflict", "other_tier")
        assert recorded_error["retryable"] is False
        beta = {"slug": "beta", "tier": "brisk", "driver": "fake"}
        first = await client.post("/v1/workspaces", json=beta, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202, first.text
        other = await client.post(
            "/v1/workspaces", json={**beta, "tier": "solo"}, headers={"Idempotency-Key": "k-1"}
        )
        assert (await refused("key_reused", other))["operation"] == first.json()["id"]
        await client.get(f"/v1/operations/{first.json()['id']}/wait", params={"timeout": 20})


async def test_remote_host_raises_each_conflict_with_its_reason(tmp_path: Path) -> None:
    async with (
        daemon(tmp_path, drivers={"other": Other}, idle_timeout=None) as (sock, _),
        RemoteHost(sock) as remote,
    ):
        seen = await _conflicts_of_the_host(typing.cast(Host, remote))
    assert {name: error.reason for name, error in seen.items()} == EXPECTED
    assert all(error.retryable is False for error in seen.values())


# --- retryable, Retry-After and invalid_input.errors over HTTP -----------------------------------
async def test_busy_is_retryable_over_http(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        body = {"slug": "alpha", "tier": "slow", "driver": "fake"}
        started = await client.post("/v1/workspaces", json=body)
        assert started.status_code == 202, started.text
        busy = await client.delete("/v1/workspaces/alpha")
        assert busy.status_code == 409, busy.text
        error = error_of(busy)
        assert (error["kind"], error["retryable"], error["operation"]) == ("busy", True, started.json()["id"])
        missing = await client.get("/v1/workspaces/nope")
        assert error_of(missing)["retryable"] is False
        ident = started.json()["id"]
        assert (await client.delete(f"/v1/operations/{ident}")).status_code == 202
        done = await client.get(f"/v1/operations/{ident}/wait", params={"timeout": 20})
        # an error the host recorded by hand (not from an exception) says it too
        recorded = done.json()["error"]
        assert (recorded["kind"], recorded["retryable"]) == ("cancelled", False), recorded


async def test_503_and_423_answers_carry_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_host(tmp_path) as host:
        app = create_app(host)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            await host.provision("alpha", tier="solo", driver="fake")

            async def locked(slug: str, **_: Any) -> Any:
                raise SlugLocked(f"another process holds {slug!r}")

            async def unreachable(slug: str, **_: Any) -> Any:
                raise BackendUnavailable(
                    "fake: down", codes.BACKEND_UNAVAILABLE, {"kind": "backend_unavailable"}
                )

            monkeypatch.setattr(host, "forget", locked)
            monkeypatch.setattr(host, "status", unreachable)
            held = await client.post("/v1/workspaces/alpha/forget")
            assert held.status_code == 423 and error_of(held)["kind"] == "slug_locked", held.text
            assert error_of(held)["retryable"] is True
            assert held.headers["Retry-After"] == str(RETRY_AFTER["slug_locked"])
            down = await client.get("/v1/workspaces/alpha/status")
            assert down.status_code == 503 and error_of(down)["kind"] == "backend_unavailable", down.text
            assert error_of(down)["retryable"] is True
            assert down.headers["Retry-After"] == str(RETRY_AFTER["backend_unavailable"])
            app.state.hearth.stopping.set()  # as the daemon does on SIGTERM
            closed = await client.get("/v1/ready")
            assert closed.status_code == 503 and error_of(closed)["kind"] == "closed", closed.text
            assert error_of(closed)["retryable"] is True and int(closed.headers["Retry-After"]) >= 1
            refused = await client.post(
                "/v1/workspaces", json={"slug": "b", "tier": "solo", "driver": "fake"}
            )
            assert refused.status_code == 503 and error_of(refused)["kind"] == "unavailable"
            assert int(refused.headers["Retry-After"]) == error_of(refused)["retry_after"] >= 1
            # a 4xx or other 5xx says no Retry-After
            missing = await client.get("/v1/workspaces/nope")
            assert missing.status_code == 404 and "Retry-After" not in missing.headers


async def test_an_invalid_request_body_lists_its_problems(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        answer = await client.post("/v1/workspaces", json={"slug": "alpha", "tier": 5, "colour": "x"})
        assert answer.status_code == 400, answer.text
        error = error_of(answer)
        assert error["kind"] == "invalid_input" and error["retryable"] is False
        problems = {tuple(item["loc"]): item["msg"] for item in error["errors"]}
        assert set(problems) == {("body", "tier"), ("body", "driver"), ("body", "colour")}, problems
        assert all(isinstance(msg, str) and msg for msg in problems.values())
        assert all(set(item) == {"loc", "msg"} for item in error["errors"])
        wrong_query = await client.get("/v1/operations", params={"limit": "many"})
        assert wrong_query.status_code == 400
        assert [item["loc"] for item in error_of(wrong_query)["errors"]] == [["query", "limit"]]
