"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

from hearth import Deployment, Host
from hearth_adaptersdk import ProvisioningProfile


def profile(driver: str = "fake", tier: str = "solo", **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(tier=tier, driver=driver, driver_flags=flags)


async def left_by_a_dead_host(host: Host, working: Deployment, verb: str) -> None:
    """What a host killed in the middle of ``verb`` leaves: the record in its transient state
    and the operation running, owned by a process that no longer exists."""
    from hearth._store._base import NewOperation

    store = host.store
    operation, _ = await store.create_operation(
        NewOperation(working.slug, working.generation, verb, owner="gone:1:deadbeef")
    )
    await store.begin(operation.id, working)
