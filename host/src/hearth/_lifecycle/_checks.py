"""Input checks and deadlines: what a caller passed, refused with ``invalid_input`` before any
work, and the rules of ``_states`` as they apply to one request."""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from hearth_adaptersdk import ProvisioningProfile, codes

from .._adapters._discovery import candidates, discover_all
from .._errors import Conflict, InvalidInput, NotFound
from .._models import Deployment, existing_json
from .._settings import positive_seconds
from .._states import Recorded, Rules, Verb, rules
from ._core import Core

#: How much of a caller's input an error message repeats.
ECHO = 80
#: The longest idempotency key accepted.
KEY_MAX = 200


@dataclass(frozen=True)
class Request:
    """One start's arguments, checked."""

    verb: Verb
    slug: str
    tier: str | None = None
    driver: str | None = None
    reuse: bool = False
    key: str | None = None
    deadline: float | None = None
    #: A provision's labels, checked: the record it writes carries them (``Runner._provisioning``).
    labels: dict[str, str] = field(default_factory=dict)
    #: An autostop's stop: the activity the sweep read (``begin`` is fenced on it: a touch since
    #: withdraws the stop) and why it stops (its first log line).
    idle_since: datetime | None = None
    why: str | None = None


def echo(value: object, size: int = ECHO) -> str:
    """``repr`` of a caller's input, cut: an error never repeats a 100,000-character slug."""
    text = repr(value)
    if len(text) <= size:
        return text
    return repr(value[:size]) + "…" if isinstance(value, str) else text[:size] + "…"


def check_slug(slug: str) -> None:
    if not isinstance(slug, str) or not re.fullmatch(codes.SLUG_PATTERN, slug):
        raise InvalidInput(
            f"{echo(slug)} is not a workspace slug: use 1 to 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        )


def check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= KEY_MAX or not key.isprintable()):
        raise InvalidInput(f"{echo(key)} is not an idempotency key: use 1 to {KEY_MAX} printable characters")


def check_tier(tier: object) -> None:
    if not isinstance(tier, str):
        raise InvalidInput(f"{echo(tier)} is not a tier name")


def check_driver_name(driver: object) -> None:
    if not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver):
        raise InvalidInput(f"{echo(driver)} is not a driver name")


def page(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput(f"limit must be a whole number of at least 0, not {echo(limit)}")
    return limit


def sequence(after: int) -> int:
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidInput(f"after must be a whole number of at least 0, not {echo(after)}")
    return after


def cursor(after: int | None) -> int | None:
    return None if after is None else sequence(after)


def deadline(timeout: float | None) -> float | None:
    """The loop time at which ``timeout`` ends; nan, inf, 0 and negatives are invalid input."""
    if timeout is None:
        return None
    return asyncio.get_running_loop().time() + positive_seconds(timeout, "timeout")


def remaining(until: float | None) -> float:
    if until is None:
        return math.inf
    return until - asyncio.get_running_loop().time()


def rules_for(request: Request, record: Deployment | None) -> Rules:
    """The rules of ``_states.rules`` for ``request`` on ``record``; a conflict carries the
    existing workspace's ref."""
    recorded = None if record is None else Recorded(record.state, record.tier, record.driver)
    try:
        return rules(
            request.verb,
            recorded,
            request.slug,
            tier=request.tier,
            driver=request.driver,
            reuse=request.reuse,
        )
    except Conflict as exc:
        assert record is not None
        exc.data["existing"] = existing_json(record)
        raise


class Checks:
    """The checks that need the host's settings, adapters or store."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def driver(self, driver: str) -> None:
        """A driver name that is well formed and installed (or in process); else ``invalid_input``
        listing the available ones."""
        if not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver):
            raise InvalidInput(
                f"{echo(driver)} is not a driver name (lowercase letters, digits and '-', at most 40)"
            )
        core = self._core
        supervisor = core.supervisor
        if supervisor.knows(driver) or driver in supervisor.running():
            return
        if candidates(driver, core.project_dir, core.home):
            return  # whether it may run is for discover() to say, with its reasons
        available = {
            c.driver for c in discover_all(project_dir=core.project_dir, home=core.home) if c.acceptable
        }
        available |= supervisor.in_process_drivers()
        choices = ", ".join(sorted(available)) or "none installed"
        raise InvalidInput(
            f"unknown driver {driver!r}: no hearth-adapter-{driver} found; available: {choices}"
        )

    def profile(self, tier: str, driver: str) -> ProvisioningProfile:
        try:
            return self._core.settings.profile(tier, driver)
        except ValidationError as exc:
            raise InvalidInput(
                f"tier {echo(tier)} does not make a valid profile for driver "
                f"{driver!r}: {exc.errors(include_url=False)[0]['msg']}"
            ) from None

    async def existing(self, slug: str, record: Deployment | None = None) -> Deployment:
        """The record of ``slug``; ``not_found`` (saying how its last operation ended) if none."""
        store = self._core.store
        found = record or await store.get(slug)
        if found is None:
            hint = ""
            history = await store.operations(slug=slug)
            if history:
                last = history[-1]
                hint = (
                    f" (its last operation, {last.verb} #{last.id}, ended {last.outcome} "
                    "and left no workspace)"
                )
            raise NotFound(f"no workspace {slug!r}{hint}")
        return found

    def lock_wait(self, until: float | None) -> float:
        left = None if until is None else remaining(until)
        return self._core.timeouts.lock_wait if left is None else max(left, 0.0)

    def verb_deadline(self, until: float | None, verb: Verb) -> float:
        """The caller's deadline, else the verb's default bound from now."""
        if until is not None:
            return until
        return asyncio.get_running_loop().time() + float(getattr(self._core.timeouts, verb))
