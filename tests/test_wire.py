"""The wire models follow the protocol page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hearth_adaptersdk import (
    DeploymentRef,
    ErrorData,
    InitializeParams,
    Progress,
    ProvisioningProfile,
    ResourceCaps,
    StatusReport,
)
from hearth_adaptersdk.wire import ProvisionParams


@pytest.mark.parametrize("slug", ["a", "alpha", "a-1", "x" * 63, "0abc"])
def test_dns_labels_are_slugs(slug: str) -> None:
    ProvisionParams(slug=slug, profile=ProvisioningProfile(tier="t", driver="fake"))


@pytest.mark.parametrize("slug", ["", "A", "-a", "a-", "a_b", "x" * 64, "a.b"])
def test_other_strings_are_not_slugs(slug: str) -> None:
    with pytest.raises(ValidationError):
        ProvisionParams(slug=slug, profile=ProvisioningProfile(tier="t", driver="fake"))


def test_unknown_caps_and_flags_are_kept_and_passed_on() -> None:
    profile = ProvisioningProfile.model_validate(
        {"tier": "t", "driver": "d", "resource_caps": {"cpu": 1, "gpu": 2}, "driver_flags": {"x": [1]}}
    )
    dumped = profile.model_dump(mode="json", exclude_none=True)
    assert dumped["resource_caps"] == {"cpu": 1.0, "gpu": 2}
    assert dumped["driver_flags"] == {"x": [1]}


def test_timestamps_are_rfc3339_utc_and_round_trip() -> None:
    ref = DeploymentRef(
        workspace_slug="a",
        tier="t",
        driver="d",
        created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        last_status="ready",
    )
    dumped = ref.model_dump(mode="json")
    assert dumped["created"] == "2026-01-02T03:04:05Z"
    assert DeploymentRef.model_validate(dumped) == ref


def test_naive_timestamps_and_unknown_states_are_refused() -> None:
    with pytest.raises(ValidationError):
        StatusReport.model_validate({"state": "ready", "observed_at": "2026-01-02T03:04:05"})
    with pytest.raises(ValidationError):
        StatusReport.model_validate({"state": "on fire", "observed_at": "2026-01-02T03:04:05Z"})


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (ResourceCaps, {"cpu": INF}),
        (ResourceCaps, {"cpu": NAN}),
        (ResourceCaps, {"gpu": INF}),  # an unknown cap, kept by extra="allow"
        (ResourceCaps, {"gpu": {"count": [1, -INF]}}),
        (ProvisioningProfile, {"tier": "t", "driver": "d", "driver_flags": {"delay": NAN}}),
        (
            StatusReport,
            {"state": "ready", "observed_at": "2026-01-02T03:04:05Z", "details": {"load": [0.5, INF]}},
        ),
        (
            InitializeParams,
            {"protocol_versions": [1], "host": {"name": "h", "version": "1"}, "config": {"timeout": INF}},
        ),
        (Progress, {"request_id": 1, "message": "m", "fraction": NAN}),
        (ErrorData, {"kind": "backend_failure", "load": NAN}),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(model: type[BaseModel], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"finite|NaN and infinities"):
        model.model_validate(data)


def test_unknown_caps_are_free_form_but_finite() -> None:
    caps = ResourceCaps.model_validate({"cpu": 0.5, "gpu": {"count": [1, 2.5]}, "note": "x"})
    assert caps.model_extra == {"gpu": {"count": [1, 2.5]}, "note": "x"}
    with pytest.raises(ValidationError, match=r"found one at gpu\.count\.1"):
        ResourceCaps.model_validate({"cpu": 0.5, "gpu": {"count": [1, NAN]}, "note": "x"})
