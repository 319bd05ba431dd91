"""Tiers and adapter configuration: built-in tiers, overridden and extended by the project.

A project's ``.hearth/hearth.toml``::

    [tiers.solo]
    resource_caps = { cpu = 1, memory_mb = 512 }
    [tiers.solo.driver_flags.docker]      # the profile's driver_flags when the driver is docker
    image = "example/workspace:1"
    [adapters.tfgrid]                     # sent as ``config`` in the tfgrid adapter's initialize
    socket = "/run/hero_compute/rpc.sock"
    [timeouts]                            # seconds; every wait has a bound (see ``Timeouts``)
    status = 30

A project tier with a built-in tier's name overrides it key by key: ``[tiers.team.driver_flags.x]``
alone keeps team's caps. Every problem is an ``InvalidInput`` naming the file, the key and,
where it helps, the choices.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hearth_adaptersdk import ProvisioningProfile, ResourceCaps, codes
from hearth_adaptersdk.wire import validation_problems

from .errors import InvalidInput

SETTINGS_FILE = Path(".hearth") / "hearth.toml"
TIER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"


@dataclass(frozen=True)
class Tier:
    """A named size: resource caps for every driver, and flags per driver."""

    name: str
    resource_caps: ResourceCaps = field(default_factory=ResourceCaps)
    driver_flags: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def profile(self, driver: str) -> ProvisioningProfile:
        return ProvisioningProfile(tier=self.name, driver=driver, resource_caps=self.resource_caps,
                                   driver_flags=dict(self.driver_flags.get(driver, {})))


#: CPU and memory only: every driver can honour these (docker cannot cap a local volume's size).
BUILTIN_TIERS: dict[str, Tier] = {
    "solo": Tier("solo", ResourceCaps(cpu=1, memory_mb=1024)),
    "team": Tier("team", ResourceCaps(cpu=2, memory_mb=4096)),
    "studio": Tier("studio", ResourceCaps(cpu=4, memory_mb=8192)),
}


@dataclass(frozen=True)
class Timeouts:
    """The default bound of every wait, in seconds; ``[timeouts]`` in hearth.toml changes them.

    A verb's ``timeout=`` (the CLI's ``--timeout``) replaces the verb's default for one call.
    """

    #: Whole verbs (the adapter's work, from the request to its answer).
    provision: float = 1800.0
    upgrade: float = 1800.0
    teardown: float = 900.0
    #: One ``status`` or ``list`` call (reconcile makes one of each per driver or workspace).
    status: float = 30.0
    list: float = 60.0
    #: Starting an adapter: from spawn to the end of the handshake.
    handshake: float = 10.0
    #: How long a cancelled verb waits for the adapter to confirm its rollback.
    cancel_grace: float = 30.0
    #: How long a verb waits for another process working on the same slug.
    lock_wait: float = 600.0
    #: How long ``Host.close`` lets verbs in flight finish before it cancels them.
    drain_grace: float = 10.0
    #: How long ``hearth adapters`` waits for each adapter's ``--version``.
    version_probe: float = 5.0


@dataclass(frozen=True)
class Settings:
    tiers: Mapping[str, Tier]
    adapters: Mapping[str, Mapping[str, Any]]
    source: Path | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            where = f" (built in, or from {self.source})" if self.source else ""
            raise InvalidInput(f"unknown tier {name!r}; choose one of "
                               f"{', '.join(sorted(self.tiers))}{where}") from None

    def profile(self, tier: str, driver: str) -> ProvisioningProfile:
        """The ProvisioningProfile a tier resolves to for ``driver``."""
        return self.tier(tier).profile(driver)

    def adapter_config(self, driver: str) -> dict[str, Any]:
        return dict(self.adapters.get(driver, {}))


def load_settings(project_dir: str | Path | None) -> Settings:
    """The built-in tiers, with the project's ``.hearth/hearth.toml`` applied when it exists."""
    if project_dir is None:
        return Settings(dict(BUILTIN_TIERS), {})
    path = Path(project_dir) / SETTINGS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(dict(BUILTIN_TIERS), {})
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML: {exc}") from None
    _refuse_non_finite(data, path, "")
    return _parse(data, path)


def _refuse_non_finite(value: Any, path: Path, key: str) -> None:
    """TOML allows ``inf`` and ``nan``; JSON (the wire) does not, and no bound is infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{path}: {key}: {value} is not a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_non_finite(item, path, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, path, f"{key}[{index}]")


def _parse(data: dict[str, Any], path: Path) -> Settings:
    unknown = sorted(set(data) - {"tiers", "adapters", "timeouts"})
    if unknown:
        raise InvalidInput(f"{path}: unknown key {unknown[0]!r}; the file holds [tiers.*], "
                           "[adapters.*] and [timeouts]")
    tiers = dict(BUILTIN_TIERS)
    for name, body in _table(data, "tiers", path).items():
        tiers[name] = _tier(name, body, path, BUILTIN_TIERS.get(name))
    adapters: dict[str, dict[str, Any]] = {}
    for driver, config in _table(data, "adapters", path).items():
        if not re.fullmatch(codes.DRIVER_PATTERN, driver):
            raise InvalidInput(f"{path}: adapters.{driver}: not a driver name")
        if not isinstance(config, dict):
            raise InvalidInput(f"{path}: adapters.{driver} must be a table")
        adapters[driver] = config
    return Settings(tiers, adapters, path, _timeouts(_table(data, "timeouts", path), path))


def _timeouts(table: dict[str, Any], path: Path) -> Timeouts:
    known = [f.name for f in fields(Timeouts)]
    values: dict[str, float] = {}
    for key, value in table.items():
        if key not in known:
            raise InvalidInput(f"{path}: timeouts.{key}: unknown key; choose one of "
                               f"{', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidInput(f"{path}: timeouts.{key}: must be a positive number of seconds")
        values[key] = float(value)
    return replace(Timeouts(), **values)


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidInput(f"{path}: {key} must be a table")
    return value


def _tier(name: str, body: Any, path: Path, base: Tier | None) -> Tier:
    """A project tier; one with a built-in tier's name overrides ``base`` key by key."""
    key = f"tiers.{name}"
    if not re.fullmatch(TIER_PATTERN, name):
        raise InvalidInput(f"{path}: {key}: a tier name is lowercase letters, digits, '-' and '_'")
    if not isinstance(body, dict):
        raise InvalidInput(f"{path}: {key} must be a table")
    unknown = sorted(set(body) - {"resource_caps", "driver_flags"})
    if unknown:
        raise InvalidInput(f"{path}: {key}.{unknown[0]}: unknown key; a tier has resource_caps "
                           "and driver_flags")
    caps_body = body.get("resource_caps", {})
    if not isinstance(caps_body, dict):
        raise InvalidInput(f"{path}: {key}.resource_caps must be a table, e.g. "
                           "{ cpu = 1, memory_mb = 512 }")
    if base is not None:
        caps_body = {**base.resource_caps.model_dump(exclude_none=True), **caps_body}
    try:
        caps = ResourceCaps.model_validate(caps_body)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {key}.resource_caps: "
                           f"{'; '.join(validation_problems(exc))}") from None
    flags = body.get("driver_flags", {})
    if not isinstance(flags, dict) or not all(isinstance(v, dict) for v in flags.values()):
        raise InvalidInput(f"{path}: {key}.driver_flags must hold one table per driver, "
                           f"e.g. [{key}.driver_flags.docker]")
    if base is not None:
        flags = {**base.driver_flags, **flags}
    return Tier(name, caps, flags)
