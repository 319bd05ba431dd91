"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

from hearth_adaptersdk import ProvisioningProfile


def profile(driver: str = "fake", tier: str = "solo", **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(tier=tier, driver=driver, driver_flags=flags)
