"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hearth import Deployment, Host, Tier
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import Connection, Driver, MemoryConnection, ProvisioningProfile, ResourceCaps


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


#: The tiers an in-process host has besides the built-in ones: the ``fake`` driver's flags by name.
FAKE_TIERS: dict[str, dict[str, Any]] = {
    "slow": {"delay": 60},  # still working when the test looks (cancel, join, time out)
    "glacial": {"delay": 60},
    "brisk": {"delay": 1},  # done soon, but not at once
    "typo": {"delya": 1},  # a misspelt flag: the adapter refuses the profile
    "rejected": {"reject": True},
    "flaky": {"fail_at": "upgrade"},
    "failing": {"fail_at": "provision"},
    "wipe": {"replace_on_upgrade": True},  # an upgrade replaces the workspace: destructive
}


def make_host(
    tmp_path: Path,
    *,
    tiers: Mapping[str, Mapping[str, Any]] | None = None,
    driver: Driver | Callable[[], Driver] = FakeDriver,
    drivers: Mapping[str, Callable[[], Driver]] | None = None,
    **options: Any,
) -> Host:
    """A host on a fresh home whose ``fake`` driver runs in process (real SQLite, real locks).

    The project is ``tmp_path/project``, the home ``tmp_path/home``. Beside the built-in tiers it has
    ``tiers`` (the fake's flags by tier name, FAKE_TIERS unless given), each with ``cpu=1``.
    ``driver`` is the fake: a factory called for each connection the host opens (a new
    ``FakeDriver`` by default) or one instance behind every connection. ``drivers`` adds other
    in-process drivers by name, each a factory. ``options`` go to ``Host`` (``idle_timeout``,
    ``drain_grace``, ``lock_wait``, ...).
    """
    flags = FAKE_TIERS if tiers is None else tiers

    def connect(make: Driver | Callable[[], Driver]) -> Callable[[], Connection]:
        if isinstance(make, Driver):
            return lambda: MemoryConnection(make)
        return lambda: MemoryConnection(make())

    return Host(
        project_dir=tmp_path / "project",
        home=tmp_path / "home",
        tiers={name: Tier(name, ResourceCaps(cpu=1), {"fake": dict(fake)}) for name, fake in flags.items()},
        in_process={name: connect(make) for name, make in {"fake": driver, **(drivers or {})}.items()},
        **options,
    )
