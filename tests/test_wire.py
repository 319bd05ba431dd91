"""The wire models follow the protocol page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from hearth_adaptersdk import DeploymentRef, ProvisioningProfile, StatusReport
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
    ref = DeploymentRef(workspace_slug="a", tier="t", driver="d",
                        created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), last_status="ready")
    dumped = ref.model_dump(mode="json")
    assert dumped["created"] == "2026-01-02T03:04:05Z"
    assert DeploymentRef.model_validate(dumped) == ref


def test_naive_timestamps_and_unknown_states_are_refused() -> None:
    with pytest.raises(ValidationError):
        StatusReport.model_validate({"state": "ready", "observed_at": "2026-01-02T03:04:05"})
    with pytest.raises(ValidationError):
        StatusReport.model_validate({"state": "on fire", "observed_at": "2026-01-02T03:04:05Z"})
