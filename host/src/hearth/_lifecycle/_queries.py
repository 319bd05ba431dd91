"""Queries: the records, the logs and what a workspace's backend shows now. Each read of a slug
first settles what a dead host left there (``Recovery.heal``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hearth_adaptersdk import DeploymentRef, StatusReport, utc_now

from .._errors import InvalidInput, NotFound, StoreError
from .._labels import labels_given
from .._models import Deployment, Operation, synthesized_ref
from .._states import STATES, TRANSIENT, autostop_at, reported_activity
from ._checks import Checks, check_driver_name, check_slug, deadline, echo, page, remaining
from ._core import Core
from ._recovery import Recovery


class Queries:
    """What ``Host`` answers without starting an operation."""

    def __init__(self, core: Core, checks: Checks, recovery: Recovery) -> None:
        self._core = core
        self._checks = checks
        self._recovery = recovery

    async def ready(self) -> None:
        """Whether the store can be used now: opened, one read answered the way every call
        reads, and the store's own check passed (SQLite: its pages are whole; PostgreSQL: a
        query is answered), all within ``[timeouts] store``; else a ``StoreError`` saying what
        is wrong."""
        core = self._core
        bound = core.timeouts.store
        try:
            async with asyncio.timeout(bound):
                store = await core.opened()
                await store.last_seq()
                check = getattr(core.raw, "check", None)
                if check is not None:
                    await check(bound)
        except TimeoutError:
            where = getattr(core.raw, "where", None) or getattr(core.raw, "path", None)
            named = f"the store {where}" if where else "the store"
            raise StoreError(f"{named} did not answer within {bound:g} s ([timeouts] store)") from None

    async def status(self, slug: str, timeout: float | None) -> StatusReport:
        """What the backend shows now; ``tier_torn_down`` (a state, not an error) once torn down.
        A record a dead host left transient is settled first, from this same ``status``."""
        check_slug(slug)
        until = deadline(timeout)
        core = self._core
        record = await self._checks.existing(slug, (await self._recovery.heal(slug))[0])
        if record.state == "tier_torn_down":
            return StatusReport(
                state="tier_torn_down",
                observed_at=utc_now(),
                message=f"torn down at {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
                details={"recorded_state": record.state},
            )
        ref = record.ref or synthesized_ref(record)
        async with core.supervisor.use(record.driver, timeout=remaining(until)) as client:
            report = await client.status(
                ref, timeout=core.timeouts.status if until is None else max(remaining(until), 0.001)
            )
        if record.unconfirmed and record.state not in TRANSIENT:
            record = await self._recovery.confirm(record, report)
        reported = reported_activity(report.details, utc_now())
        if reported is not None:  # the backend's own activity counts as a touch (README "Autostop")
            record = await core.store.touch(record.slug, reported) or record
        details = {**report.details, "recorded_state": record.state}
        tier = core.settings.tiers.get(record.tier)
        stops = autostop_at(record, None if tier is None else tier.autostop)
        if stops is not None:  # when the autostop sweep would stop it (README "Autostop")
            details["autostop_at"] = stops.isoformat()
        if record.backend_id is not None:
            details.setdefault("backend_id", record.backend_id)
        active = await self._recovery.active_operation(record.slug) if record.state in TRANSIENT else None
        last = await core.store.last_operation(record.slug, record.generation)
        notes = status_notes(
            report.message,
            record.state,
            record.reason,
            active=None if active is None else (active.id, active.verb, active.state),
            last=None if last is None else (last.id, last.verb, last.outcome, last.error),
        )
        return report.model_copy(update={"details": details, "message": "; ".join(notes) or None})

    async def refs(self) -> list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the host recorded it."""
        return [
            (d.ref or synthesized_ref(d)).model_copy(update={"last_status": d.state})
            for d in await self._core.store.deployments()
        ]

    async def deployments(
        self,
        *,
        state: str | None,
        driver: str | None,
        include_torn_down: bool,
        limit: int | None,
        after: str | None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Deployment]:
        if state is not None and state not in STATES:
            raise InvalidInput(f"{echo(state)} is not a workspace state: {', '.join(sorted(STATES))}")
        if driver is not None:
            check_driver_name(driver)
        if after is not None and not isinstance(after, str):
            raise InvalidInput(f"after must be the last slug of the previous page, not {echo(after)}")
        wanted = labels_given(labels)
        store = self._core.store
        found = await store.deployments(
            state=state,
            driver=driver,
            include_torn_down=include_torn_down,
            limit=page(limit),
            after=after,
            labels=wanted or None,
        )
        if not found:
            return found
        running: dict[str, int] = {}
        for op in await store.operations(active=True):  # the first of a slug's runs, the rest queue
            if op.slug not in running and await self._recovery.owner_alive(op):  # a dead host's: none
                running[op.slug] = op.id
        return [self._with_operation(record, running.get(record.slug)) for record in found]

    def _with_operation(self, record: Deployment, operation: int | None) -> Deployment:
        """The record with what is not stored: its running operation, its ``autostop_at``."""
        return self.with_autostop(
            record if operation is None else record.model_copy(update={"operation": operation})
        )

    def with_autostop(self, record: Deployment) -> Deployment:
        tier = self._core.settings.tiers.get(record.tier)
        at = autostop_at(record, None if tier is None else tier.autostop)
        return record if at is None else record.model_copy(update={"autostop_at": at})

    async def deployment(self, slug: str) -> Deployment:
        check_slug(slug)
        record, active = await self._recovery.heal(slug)
        found = await self._checks.existing(slug, record)
        return self._with_operation(found, None if active is None else active.id)

    async def logs(self, slug: str, limit: int | None) -> list[Operation]:
        check_slug(slug)
        store = self._core.store
        record, _ = await self._recovery.look(slug)  # a dead host's operations say interrupted, not running
        found = await store.operations(slug=slug, with_log=True)
        if not found and record is None:
            raise NotFound(f"no workspace {slug!r}, and no operation was ever run on it")
        count = page(limit)
        if count is not None:
            found = found[len(found) - count :] if count else []
        return found


def status_notes(
    message: str | None,
    state: str,
    reason: str | None,
    *,
    active: tuple[int, str, str] | None,
    last: tuple[int, str, str, dict[str, Any] | None] | None,
) -> list[str]:
    """What ``status`` says beside the adapter's message: why the record is as it is, who works
    on a transient one, and a last operation that changed nothing."""
    notes = [message] if message else []
    if reason:
        notes.append(
            f"the last operation failed: {reason}" if state == "failed" else f"the record notes: {reason}"
        )
    if state in TRANSIENT:
        if active is not None:
            notes.append(f"operation #{active[0]} ({active[1]}) is {active[2]}")
        else:
            notes.append(
                f"the record says {state}, but no hearth process is working on it (one stopped "
                "in the middle) and its adapter could not settle it; reconcile looks again"
            )
    if last is not None and last[3] is not None and last[3].get("changed_nothing"):
        ident, verb, outcome, error = last
        assert error is not None
        notes.append(
            f"the last {verb} (#{ident}) ended {outcome} and changed "
            f"nothing: {error.get('message') or error.get('kind')}"
        )
    return notes
