"""Reconcile, adopt and forget: make the records agree with what the backends hold.

Reconcile deletes nothing. It first ends the queued or running operations no live work is
behind (``_states.dead_owner_end``). It asks each driver once for its ``list``; a record the
list shows, settled, is left alone; a record left transient by a host that died, or marked
*not confirmed*, or missing from the list, is asked about with ``status`` and settled by
``_states.settlement``; a record that claims a backend the adapter confirms absent is a ghost
(marked failed); a ready record whose backend is stopped, or a stopped one whose backend runs,
has drifted (someone stopped or started it outside hearth): it is settled to what the backend
shows and reported as resolved; a listed deployment with no record is an orphan (reported). A slug another
process works on is skipped (busy), an unreachable driver changes nothing, and a dry run writes
nothing. The next access to a slug that a dead host left transient runs the same settlement for
that slug (``settle``).

``adopt`` turns an orphan into a record; ``forget`` archives a record and leaves the backend
alone (Terraform's import and ``removed``, Crossplane's observe and orphan).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

from hearth_adaptersdk import DeploymentRef, StatusReport, codes, utc_now

from .._errors import Busy, HearthError, NotFound, SlugLocked, Unsupported
from .._labels import label_count
from .._models import Deployment, Operation, ReconcileReport, existing_json, synthesized_ref
from .._states import (
    TRANSIENT,
    Settlement,
    adopt_other_tier,
    adopt_recorded,
    needs_status,
    settled_note,
    settlement,
    uncertain_verb,
)
from .._store._base import NewOperation
from ._core import Core

#: The slug's live operation, ending those of dead hosts on the way (``Recovery.active_operation``).
ActiveOf = Callable[[str], Awaitable[Operation | None]]


class Reconciler:
    """One reconcile run over the records of a core."""

    def __init__(self, core: Core, active_of: ActiveOf, *, dry_run: bool, timeout: float | None) -> None:
        self._core = core
        self._active_of = active_of
        self.dry_run = dry_run
        self.timeout = timeout
        self.report = ReconcileReport(dry_run=dry_run)

    async def run(self, slug: str | None = None) -> ReconcileReport:
        core, report = self._core, self.report
        store = core.store
        if not self.dry_run:
            # queued or running operations with no live work (a dead host's, or this host's own
            # that a failed write left) are ended first: a first provision left queued has no
            # record for the loop below to find, and a transient record is settled after
            for busy in sorted({op.slug for op in await store.operations(active=True)}):
                if slug is None or busy == slug:
                    await self._active_of(busy)
        records = [
            r for r in await store.deployments(include_torn_down=False) if slug is None or r.slug == slug
        ]
        by_driver: dict[str, list[Deployment]] = defaultdict(list)
        for record in records:
            by_driver[record.driver].append(record)
        # a driver whose records were all forgotten or torn down may still hold orphans
        for driver in sorted({*by_driver, *await store.drivers()}):
            try:
                listed = await self._list(driver)
            except HearthError as exc:
                if exc.kind == "store_error":
                    raise
                report.unreachable[driver] = exc.message
                continue
            for record in by_driver.get(driver, []):
                try:
                    async with core.locks.hold(record.slug, 0.0):
                        await self._one(record.slug, listed)
                except SlugLocked:
                    report.busy.append(record.slug)
                except HearthError as exc:
                    if exc.kind == "store_error":
                        raise
                    report.unreachable.setdefault(driver, exc.message)
            if listed is not None:
                known = {r.slug for r in await store.deployments(include_torn_down=False)}
                report.orphans.extend(
                    ref
                    for ref in listed.values()
                    if ref.workspace_slug not in known and (slug is None or ref.workspace_slug == slug)
                )
        return report

    async def settle(self, slug: str, observed: StatusReport | None = None) -> None:
        """Settle one slug from its adapter's ``status`` (the caller holds the slug's lock);
        ``observed``: an answer the caller already has."""
        await self._one(slug, None, observed)

    async def _list(self, driver: str) -> dict[str, DeploymentRef] | None:
        """The driver's deployments by slug, from one ``list``; None if it cannot list."""
        core = self._core
        async with core.supervisor.use(driver, timeout=self.timeout) as client:
            if not client.supports("list"):
                return None
            refs = await client.list(timeout=self.timeout or core.timeouts.list)
        return {ref.workspace_slug: ref for ref in refs}

    async def _status(self, record: Deployment) -> StatusReport:
        core = self._core
        ref = record.ref or synthesized_ref(record)
        async with core.supervisor.use(record.driver, timeout=self.timeout) as client:
            return await client.status(ref, timeout=self.timeout or core.timeouts.status)

    async def _one(
        self, slug: str, listed: dict[str, DeploymentRef] | None, observed: StatusReport | None = None
    ) -> None:
        store = self._core.store
        current = await store.get(slug)
        if current is None or current.state == "tier_torn_down":
            return
        seen = None if listed is None else listed.get(slug)
        shown = None if seen is None else seen.last_status
        if not needs_status(current.state, current.unconfirmed, listed=seen is not None, listed_state=shown):
            return
        observed = observed or await self._status(current)
        if observed.state == "unknown":  # never read as absent: the backend could not say
            self.report.unreachable.setdefault(
                current.driver,
                f"{slug}: the backend's state is unknown ({observed.message or 'no reason given'})",
            )
            return
        if current.ref is None and seen is not None:
            current = current.model_copy(update={"ref": seen})
        last = None
        if current.unconfirmed and current.state not in TRANSIENT:
            last = await store.last_operation(current.slug, current.generation)
        verb = uncertain_verb(current.state, current.unconfirmed, None if last is None else last.verb)
        found = settlement(
            current.state,
            current.reason,
            current.unconfirmed,
            observed=observed.state,
            verb=verb,
            backend_id=current.backend_id,
            served_tier=observed.details.get("tier"),
        )
        if found is None:
            return  # nothing new: a second reconcile changes nothing
        settled = _settled(current, found, observed)
        if not self.dry_run:
            note = None
            if current.state in TRANSIENT:
                await self._active_of(slug)  # ends its dead host's operations: interrupted
                note = settled_note(self._core.owner, current.state, settled.state, settled.reason)
            # the save writes the record's ``workspace`` event and the final events that waited
            if not await store.save(settled, replaces=current, note=note):
                self.report.busy.append(slug)  # another host changed it meanwhile: its record stands
                return
        if verb is None and settled.state == "failed":
            self.report.ghosts.append(current.slug)
        else:
            self.report.resolved.append((current.slug, current.state, settled.state))
            if settled.unconfirmed:
                self.report.unconfirmed.append(current.slug)


def _settled(current: Deployment, found: Settlement, observed: StatusReport) -> Deployment:
    """The record a settlement writes: a tier the adapter says it serves, and a ready
    workspace's endpoint as the adapter reports it."""
    tier = found.tier
    settled = current.model_copy(
        update={
            "state": found.state,
            "reason": found.reason,
            "unconfirmed": found.unconfirmed,
            "updated_at": utc_now(),
        }
    )
    if tier is not None:
        ref = current.ref or synthesized_ref(current)
        settled = settled.model_copy(
            update={"tier": tier, "ref": ref.model_copy(update={"tier": tier, "last_status": "ready"})}
        )
    if settled.state == "stopped":  # drift, or a stop that finished while its host died
        base = settled.ref or synthesized_ref(settled)
        settled = settled.model_copy(update={"ref": base.model_copy(update={"last_status": "stopped"})})
    if settled.state == "ready":
        base = settled.ref or synthesized_ref(settled)
        settled = settled.model_copy(
            update={
                "ref": base.model_copy(
                    update={"endpoint": observed.endpoint or base.endpoint, "last_status": "ready"}
                )
            }
        )
    return settled


async def adopt(
    core: Core, active_of: ActiveOf, slug: str, *, driver: str, tier: str, timeout: float | None
) -> Deployment:
    """Record a deployment the adapter lists but hearth has no record of (its state from the
    adapter's ``status``); refuses a slug with a live record or a running operation."""
    store = core.store
    await _refuse_if_busy(active_of, slug)
    _refuse_if_recorded(await store.get(slug), slug)
    async with core.locks.hold(slug, core.timeouts.lock_wait if timeout is None else timeout):
        record = await store.get(slug)  # again, now that the slug is held
        _refuse_if_recorded(record, slug)
        await _refuse_if_busy(active_of, slug)
        async with core.supervisor.use(driver, timeout=timeout) as client:
            if not client.supports("list"):
                raise Unsupported(
                    f"{driver}: the adapter cannot list its deployments, so none can be adopted",
                    codes.UNSUPPORTED,
                    {"kind": "unsupported", "reason": "list is not supported"},
                )
            refs = await client.list(timeout=timeout or core.timeouts.list)
            found = next((ref for ref in refs if ref.workspace_slug == slug), None)
            if found is None:
                raise NotFound(f"driver {driver!r} lists no deployment {slug!r}; there is nothing to adopt")
            refused = adopt_other_tier(slug, found.tier, tier)
            if refused is not None:
                refused.data["existing"] = found.model_dump(mode="json")
                raise refused
            report = await client.status(found, timeout=timeout or core.timeouts.status)
        if report.state in ("absent", "unknown", "tier_torn_down"):
            raise NotFound(f"driver {driver!r} reports {slug!r} {report.state}; there is nothing to adopt")
        now = utc_now()
        state = "ready" if report.state == "ready" else "failed"
        adopted = Deployment(
            slug=slug,
            generation=await store.next_generation(slug),
            tier=tier,
            driver=driver,
            state=state,
            ref=found.model_copy(
                update={"tier": tier, "last_status": state, "endpoint": report.endpoint or found.endpoint}
            ),
            created_at=found.created or now,
            updated_at=now,
            last_activity=now,  # adopting is a verb on the slug: its autostop counts from it
            reason=None if state == "ready" else f"adopted while the backend shows {report.state}",
        )
        if record is not None:
            await store.archive(slug)
        await store.save(adopted)
        await store.create_operation(
            NewOperation(
                slug,
                adopted.generation,
                "adopt",
                core.owner,
                tier=tier,
                driver=driver,
                done=("succeeded", adopted.ref),
                **core.acting(),
            )
        )
    return adopted


async def forget(core: Core, active_of: ActiveOf, slug: str) -> Deployment:
    """Archive the record of ``slug``; the backend is left exactly as it is."""
    store = core.store
    async with _held_record(core, active_of, slug) as record:
        await store.archive(slug)
        await store.create_operation(
            NewOperation(
                slug, record.generation, "forget", core.owner, done=("succeeded", record.ref), **core.acting()
            )
        )
    return record


async def relabel(core: Core, active_of: ActiveOf, slug: str, changes: dict[str, str | None]) -> Deployment:
    """Set and remove labels of ``slug``'s record (None removes); the record as it now is. Under
    the slug's lock, and ``busy`` while an operation runs on it: its outcome writes the record
    it read, and would drop the change."""
    store = core.store
    async with _held_record(core, active_of, slug) as record:
        if record.state in TRANSIENT:  # a dead host's, its adapter not yet able to say
            raise Busy(
                f"workspace {slug!r} is {record.state}, left so by a host that stopped: its labels "
                "change once it is settled (hearth reconcile)"
            )
        labels = dict(record.labels)
        for key, value in changes.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        label_count(labels)
        if labels == record.labels:
            return record
        changed = record.model_copy(update={"labels": labels, "updated_at": utc_now()})
        if not await store.save(changed, replaces=record):
            raise Busy(f"workspace {slug!r} changed while its labels were written; try again")
        return changed


@contextlib.asynccontextmanager
async def _held_record(core: Core, active_of: ActiveOf, slug: str) -> AsyncIterator[Deployment]:
    """``slug``'s record under its lock, for a change no operation runs: ``not_found`` without
    one, ``busy`` at once while an operation runs on it (asked before the lock, so no caller
    waits for it, and again once held)."""
    store = core.store
    if await store.get(slug) is None:
        raise NotFound(f"no workspace {slug!r}")
    await _refuse_if_busy(active_of, slug)
    async with core.locks.hold(slug, core.timeouts.lock_wait):
        record = await store.get(slug)
        if record is None:
            raise NotFound(f"no workspace {slug!r}")
        await _refuse_if_busy(active_of, slug)
        yield record


async def _refuse_if_busy(active_of: ActiveOf, slug: str) -> None:
    """``busy`` at once when an operation runs on the slug (rather than a wait for its lock)."""
    active = await active_of(slug)
    if active is not None:
        raise Busy(
            f"workspace {slug!r} is busy: operation #{active.id} ({active.verb}) is {active.state}", active.id
        )


def _refuse_if_recorded(record: Deployment | None, slug: str) -> None:
    refused = None if record is None else adopt_recorded(slug, record.state, record.driver)
    if refused is not None:
        assert record is not None
        refused.data["existing"] = existing_json(record)
        raise refused
