"""Tiers and adapter configuration: built-in tiers, overridden and extended by the project.

A project's ``.hearth/hearth.toml``::

    [tiers.solo]
    resource_caps = { cpu = 1, memory_mb = 512 }
    autostop = 3600                       # seconds without activity before the daemon stops it
    [tiers.solo.driver_flags.docker]      # the profile's driver_flags when the driver is docker
    image = "example/workspace:1"
    [adapters.tfgrid]                     # sent as ``config`` in the tfgrid adapter's initialize
    socket = "/run/hero_compute/rpc.sock"
    [timeouts]                            # seconds; every wait has a bound (see ``Timeouts``)
    status = 30
    [serve]                               # the daemon (``hearth serve``, see ``ServeSettings``)
    reconcile_interval = 300
    autostop_interval = 60                # seconds between autostop sweeps
    max_body = 1048576                    # bytes: the largest request body the daemon reads
    request_timeout = 30                  # seconds a client has to send a whole request
    max_connections = 4096                # open connections per listener (socket, TCP)
    [events]                              # the event log (see ``EventSettings``)
    keep_days = 30                        # progress of operations finished longer ago is pruned

A project tier with a built-in tier's name overrides it key by key: ``[tiers.team.driver_flags.x]``
alone keeps team's caps. ``SettingsFile`` (pydantic, unknown keys refused) is the file's schema;
every problem is an ``InvalidInput`` naming the file, the dotted key and, where it helps, the
choices. ``SettingsSource`` reads the file again when it changes, for hosts that live long.
"""

from __future__ import annotations

import math
import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from hearth_adaptersdk import ProvisioningProfile, ResourceCaps
from hearth_adaptersdk.wire import DriverName, non_finite_path

from ._dirs import has_password
from ._errors import InvalidInput

SETTINGS_FILE = Path(".hearth") / "hearth.toml"
#: How an error names the settings file: never by its path on the host, which an error answered
#: to a daemon's client would disclose (the host's folders, its user's name); the project is the
#: one the host was started in (``hearth serve`` logs it, ``/v1/health`` says it).
NAMED = "the project's hearth.toml"
TIER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
#: How many of pydantic's problems one message lists.
MAX_PROBLEMS = 3

TierName = Annotated[str, StringConstraints(pattern=TIER_PATTERN)]
#: The longest ``autostop`` a tier may set: 30 days.
AUTOSTOP_MAX = 30 * 86400.0
#: A bound in seconds: a number (not a bool, not a string), above zero.
Seconds = Annotated[float, Field(gt=0, strict=True)]


@dataclass(frozen=True)
class Tier:
    """A named size: resource caps for every driver, and flags per driver.

    JSON-ready for queries: ``TypeAdapter(Tier).dump_python(tier, mode="json")`` gives
    ``{"name", "resource_caps", "driver_flags", "autostop"}`` and ``validate_python`` reads it back (unknown
    keys refused). A plain dataclass, so building one validates nothing, as before.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    name: str
    resource_caps: ResourceCaps = field(default_factory=ResourceCaps)
    driver_flags: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Seconds without activity after which a ready workspace on this tier is stopped (the
    #: daemon's autostop sweep, ``Host.autostop_sweep``); None (the default): never.
    autostop: float | None = None

    def profile(self, driver: str) -> ProvisioningProfile:
        return ProvisioningProfile(
            tier=self.name,
            driver=driver,
            resource_caps=self.resource_caps,
            driver_flags=dict(self.driver_flags.get(driver, {})),
        )


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
    Pydantic validates ``[timeouts]`` against this class (``SettingsFile.timeouts``): unknown
    keys are refused, every value is a positive number.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: Whole verbs (the adapter's work, from the request to its answer).
    provision: Seconds = 1800.0
    upgrade: Seconds = 1800.0
    teardown: Seconds = 900.0
    #: ``stop`` and ``start`` (protocol 1.3, for drivers that announce them).
    stop: Seconds = 600.0
    start: Seconds = 1800.0
    #: One ``status`` or ``list`` call (reconcile makes one of each per driver or workspace).
    status: Seconds = 30.0
    list: Seconds = 60.0
    #: Starting an adapter: from spawn to the end of the handshake.
    handshake: Seconds = 10.0
    #: How long a cancelled verb waits for the adapter to confirm its rollback.
    cancel_grace: Seconds = 30.0
    #: How long a verb waits for another process working on the same slug.
    lock_wait: Seconds = 600.0
    #: How long ``Host.close`` lets verbs in flight finish before it cancels them.
    drain_grace: Seconds = 10.0
    #: How long ``hearth adapters`` waits for each adapter's ``--version``.
    version_probe: Seconds = 5.0
    #: With a store other hosts share (PostgreSQL): how long a host's operations stay its own
    #: after it stops renewing its lease (it renews every third of this); then another host
    #: settles them from the adapter's ``status``.
    lease: Seconds = 10.0
    #: How long a call waits for the store before it fails with ``store_error`` (PostgreSQL: a
    #: connection from the pool, or a new one), so an outage fails fast; also the bound of the
    #: daemon's readiness check (``/v1/ready``). Read when the store opens.
    store: Seconds = 5.0


@dataclass(frozen=True)
class ServeSettings:
    """``[serve]`` in hearth.toml: what the daemon (``hearth serve``) does on its own."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: Seconds between the daemon's self-healing reconciles (each waits this long plus or minus
    #: ``reconcile_jitter`` of it, so replicas do not reconcile in step); 0 turns them off.
    reconcile_interval: Annotated[float, Field(ge=0, strict=True)] = 300.0
    #: The fraction of the interval by which each wait varies at random (0 to 0.5).
    reconcile_jitter: Annotated[float, Field(ge=0, le=0.5, strict=True)] = 0.1
    #: Seconds between the daemon's autostop sweeps (``Host.autostop_sweep``; jittered as
    #: reconcile is); 0 turns them off. A tier's ``autostop`` is kept within it plus this.
    autostop_interval: Annotated[float, Field(ge=0, le=86400, strict=True)] = 60.0
    #: The largest request body the daemon reads (bytes; 1 MiB): a larger one answers 413
    #: ``invalid_input`` before it is read (``Content-Length``) or as soon as it passes the limit.
    max_body: Annotated[int, Field(ge=1, strict=True)] = 1024 * 1024
    #: Seconds a client has from connecting (or from the first byte of its next request on a
    #: kept-alive connection) to the end of a request's head and body; past it the daemon
    #: answers 408 and closes, so a client that dribbles bytes holds no connection for long.
    #: Read when the daemon starts.
    request_timeout: Annotated[float, Field(gt=0, le=3600, strict=True)] = 30.0
    #: Open connections per listener (the Unix socket and the TCP port each); one past it is
    #: answered 503 and closed. The daemon lowers it to what its open-file limit can hold (and
    #: says so): a flood on the TCP port then leaves the socket room. Read when it starts.
    max_connections: Annotated[int, Field(ge=1, strict=True)] = 4096


@dataclass(frozen=True)
class EventSettings:
    """``[events]`` in hearth.toml: how long the event log keeps what only showed progress."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: Days the ``progress`` events of a finished operation are kept after it finished; the
    #: daemon prunes older ones (at start, then hourly). State, workspace and log events stay:
    #: what happened is kept, how far along it was is not. 0 keeps everything.
    keep_days: Annotated[float, Field(ge=0, strict=True)] = 30.0


class TierTable(BaseModel):
    """One ``[tiers.NAME]`` table as written; ``load_settings`` lays it over a built-in tier."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    #: None when the table does not set it (a built-in tier then keeps its caps).
    resource_caps: ResourceCaps | None = None
    #: One free-form table per driver; the driver judges its flags.
    driver_flags: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Seconds without activity before a ready workspace is stopped (1 to 30 days' worth);
    #: None keeps the base tier's (the built-in tiers have none).
    autostop: Annotated[float, Field(gt=0, le=AUTOSTOP_MAX, strict=True)] | None = None


class SettingsFile(BaseModel):
    """The schema of ``.hearth/hearth.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    tiers: dict[TierName, TierTable] = Field(default_factory=dict)
    #: One free-form table per driver, sent as ``config`` in its adapter's initialize.
    adapters: dict[DriverName, dict[str, Any]] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    #: The registry, when not the home's SQLite file: ``postgresql://...`` (no password here:
    #: the project's file is no place for a secret; use ~/.pgpass or PGPASSWORD).
    store: str | None = None


@dataclass(frozen=True)
class Settings:
    tiers: Mapping[str, Tier]
    adapters: Mapping[str, Mapping[str, Any]]
    source: Path | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    serve: ServeSettings = field(default_factory=ServeSettings)
    store: str | None = None
    events: EventSettings = field(default_factory=EventSettings)

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            where = f" (built in, or from {NAMED})" if self.source else ""
            raise InvalidInput(
                f"unknown tier {name!r}; choose one of {', '.join(sorted(self.tiers))}{where}"
            ) from None

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
        raise InvalidInput(f"{NAMED}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise InvalidInput(f"{NAMED}: cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{NAMED}: not valid TOML: {exc}") from None
    where = non_finite_path(data)  # TOML allows inf and nan; JSON (the wire) has neither
    if where is not None:  # checked over the whole file, free-form tables included
        raise InvalidInput(f"{NAMED}: {where}: the value is not a finite number (NaN or infinity)")
    try:
        parsed = SettingsFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{NAMED}: {_problems(exc)}") from None
    tiers = dict(BUILTIN_TIERS)
    for name, table in parsed.tiers.items():
        tiers[name] = _tier(name, table, BUILTIN_TIERS.get(name))
    if parsed.store is not None and has_password(parsed.store):
        raise InvalidInput(
            f"{NAMED}: store: the URL holds a password; the project's file is no place for a secret "
            "(put it in ~/.pgpass, mode 0600, or PGPASSWORD)"
        )
    return Settings(
        tiers, dict(parsed.adapters), path, parsed.timeouts, parsed.serve, parsed.store, parsed.events
    )


def _tier(name: str, table: TierTable, base: Tier | None) -> Tier:
    """A project tier; one with a built-in tier's name overrides ``base`` key by key."""
    if base is None:
        return Tier(name, table.resource_caps or ResourceCaps(), table.driver_flags, table.autostop)
    caps = base.resource_caps
    if table.resource_caps is not None:
        caps = ResourceCaps.model_validate(
            {**caps.model_dump(exclude_none=True), **table.resource_caps.model_dump(exclude_unset=True)}
        )
    autostop = table.autostop if table.autostop is not None else base.autostop
    return Tier(name, caps, {**base.driver_flags, **table.driver_flags}, autostop)


def _problems(exc: ValidationError) -> str:
    """Pydantic's first few problems as ``key: problem``, joined on one line."""
    problems = list(dict.fromkeys(_problem(error) for error in exc.errors(include_url=False)))
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    return f"{shown}; and {more} more" if more > 0 else shown


def _problem(error: ErrorDetails) -> str:
    """One pydantic error in the words of the file: the dotted key, the problem, the choices."""
    loc = [str(part) for part in error["loc"]]
    kind, msg = error["type"], error["msg"]
    unknown = kind in ("extra_forbidden", "unexpected_keyword_argument")
    match loc:
        case [key] if unknown:
            return (
                f"unknown key {key!r}; the file holds store, [tiers.*], [adapters.*], [timeouts] and [serve]"
            )
        case ["store"]:
            return f"store: {msg}"
        case [key]:
            return f"{key} must be a table"
        case ["tiers", name, "[key]"]:
            return f"tiers.{name}: a tier name is lowercase letters, digits, '-' and '_'"
        case ["tiers", name]:
            return f"tiers.{name} must be a table"
        case ["tiers", name, key] if unknown:
            return f"tiers.{name}.{key}: unknown key; a tier has resource_caps, driver_flags and autostop"
        case ["tiers", name, "resource_caps"] if kind == "model_type":
            return f"tiers.{name}.resource_caps must be a table, e.g. {{ cpu = 1, memory_mb = 512 }}"
        case ["tiers", name, "resource_caps", *cap]:
            return f"tiers.{name}.resource_caps: {'.'.join(cap) or '(root)'}: {msg}"
        case ["tiers", name, "driver_flags", *_]:
            return (
                f"tiers.{name}.driver_flags must hold one table per driver, "
                f"e.g. [tiers.{name}.driver_flags.docker]"
            )
        case ["adapters", driver, "[key]"]:
            return f"adapters.{driver}: not a driver name"
        case ["adapters", driver]:
            return f"adapters.{driver} must be a table"
        case ["timeouts", key] if unknown:
            return f"timeouts.{key}: unknown key; choose one of {', '.join(f.name for f in fields(Timeouts))}"
        case ["timeouts", key]:
            return f"timeouts.{key}: must be a positive number of seconds"
        case ["serve", key] if unknown:
            names = ", ".join(f.name for f in fields(ServeSettings))
            return f"serve.{key}: unknown key; choose one of {names}"
        case ["serve", key]:
            return f"serve.{key}: {msg}"
        case ["events", key] if unknown:
            names = ", ".join(f.name for f in fields(EventSettings))
            return f"events.{key}: unknown key; choose one of {names}"
        case ["events", key]:
            return f"events.{key}: {msg}"
    return f"{'.'.join(loc)}: {msg}"


#: A file's identity as ``os.stat`` sees it: ``(st_ino, st_size, st_mtime_ns, st_ctime_ns)``;
#: None when the file does not exist.
_Identity = tuple[int, int, int, int] | None
#: File systems stamp times with a coarse clock: a file written this close to now may be
#: written again within the same tick, size unchanged, and keep its identity. Such a file is
#: read again on each call until its mtime is older (git's "racy" files).
RACY_NS = 2_000_000_000


class SettingsSource:
    """The project's settings, read again whenever ``.hearth/hearth.toml`` changes.

    A host that lives for days should not need a restart to see a new tier. ``current()`` costs
    one ``stat`` while the file is unchanged; a changed, created or removed file is read again
    (removed: the built-in tiers). A file that became invalid raises the ``InvalidInput``
    ``load_settings`` raises, on every call until it is fixed: stale settings are never served
    silently. ``overlay_tiers`` and ``timeout_overrides`` (the host's constructor arguments)
    are laid over every load, as ``Host`` lays them over its one load at startup.
    """

    def __init__(
        self,
        project_dir: str | Path | None,
        overlay_tiers: Mapping[str, Tier] | None = None,
        timeout_overrides: Mapping[str, float] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir) if project_dir is not None else None
        #: The file watched; None without a project (then the built-ins, always).
        self.path = self.project_dir / SETTINGS_FILE if self.project_dir is not None else None
        self._tiers = dict(overlay_tiers or {})
        self._overrides = _checked_overrides(timeout_overrides or {})
        #: The settings last returned, and the identity they were read at when it can be trusted,
        #: in a one-tuple so that "no file" (None inside) differs from "read again" (None).
        self._last: Settings | None = None
        self._read_at: tuple[_Identity] | None = None
        #: Goes up by one each time ``current()`` returns settings that differ from the ones it
        #: returned before (the first load counts): compare it to know a reload changed something.
        self.generation = 0

    def current(self) -> Settings:
        """The settings now; raises ``InvalidInput`` while the file is invalid."""
        identity, known = self._stat()
        if self._last is not None and known and self._read_at == (identity,):
            return self._last
        # Forget first: after a failed load the next call reads the file again, so a fix the
        # identity cannot show (a chmod, a folder made readable) is seen too.
        self._read_at = None
        loaded = self._overlaid(load_settings(self.project_dir))
        if loaded != self._last:
            self._last = loaded
            self.generation += 1
        if known and not _racy(identity):
            self._read_at = (identity,)
        return loaded

    def _stat(self) -> tuple[_Identity, bool]:
        """The file's identity, and whether it is known (not when ``stat`` failed oddly)."""
        if self.path is None:
            return None, True
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None, True
        except OSError:
            return None, False  # load_settings says what is wrong
        return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns), True

    def _overlaid(self, settings: Settings) -> Settings:
        if self._tiers:
            settings = replace(settings, tiers={**settings.tiers, **self._tiers})
        if self._overrides:
            settings = replace(settings, timeouts=replace(settings.timeouts, **self._overrides))
        return settings


def _racy(identity: _Identity) -> bool:
    """Whether the file's mtime is too close to now for its identity to be trusted."""
    return identity is not None and abs(time.time_ns() - identity[2]) < RACY_NS


def positive_seconds(value: object, name: str) -> float:
    """``value`` as seconds: a positive, finite number (nan, inf, 0, negatives and bools are
    invalid input, with the value repeated at most 80 characters long)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:80] + "…"
        raise InvalidInput(f"{name} must be a positive number of seconds, not {shown}")
    return float(value)


def _checked_overrides(overrides: Mapping[str, float]) -> dict[str, float]:
    """``overrides`` checked once: ``Timeouts`` field names, positive finite seconds."""
    names = {f.name for f in fields(Timeouts)}
    checked = {}
    for name, value in overrides.items():
        if name not in names:
            raise InvalidInput(f"unknown timeout {name!r}; choose one of {', '.join(sorted(names))}")
        checked[name] = positive_seconds(value, name)
    return checked
