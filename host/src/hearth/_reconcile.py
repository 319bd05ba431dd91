"""Reconcile, adopt and forget: make the records agree with what the backends hold.

Reconcile deletes nothing. It asks each driver once for its ``list``; a record the list shows,
settled, is left alone; a record left transient by a host that died, or marked *not confirmed*,
or missing from the list, is asked about with ``status`` and settled by ``_states.resolve``; a
record that claims a backend the adapter confirms absent is a ghost (marked failed); a listed
deployment with no record is an orphan (reported). A slug another process works on is skipped
(busy), an unreachable driver changes nothing, and a dry run writes nothing. The next access to
a slug that a dead host left transient runs the same settlement for that slug (``settle``).

``adopt`` turns an orphan into a record; ``forget`` archives a record and leaves the backend
alone (Terraform's import and ``removed``, Crossplane's observe and orphan).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from hearth_adaptersdk import DeploymentRef, StatusReport, codes, utc_now

from ._errors import Busy, Conflict, HearthError, NotFound, SlugLocked, Unsupported
from ._host import VERB_OF, ReconcileReport, _synthesized_ref
from ._models import Deployment, existing_json
from ._states import TRANSIENT, resolve
from ._store import NewOperation

if TYPE_CHECKING:
    from ._host import Host


class Reconciler:
    """One reconcile run over a host's records."""

    def __init__(self, host: Host, *, dry_run: bool, timeout: float | None) -> None:
        self.host = host
        self.dry_run = dry_run
        self.timeout = timeout
        self.report = ReconcileReport(dry_run=dry_run)

    async def run(self, slug: str | None = None) -> ReconcileReport:
        host, report = self.host, self.report
        records = [
            r for r in await host.store.deployments(include_torn_down=False) if slug is None or r.slug == slug
        ]
        by_driver: dict[str, list[Deployment]] = defaultdict(list)
        for record in records:
            by_driver[record.driver].append(record)
        # a driver whose records were all forgotten or torn down may still hold orphans
        for driver in sorted({*by_driver, *await host.store.drivers()}):
            try:
                listed = await self._list(driver)
            except HearthError as exc:
                if exc.kind == "store_error":
                    raise
                report.unreachable[driver] = exc.message
                continue
            for record in by_driver.get(driver, []):
                try:
                    async with host._locks.hold(record.slug, 0.0):
                        await self._one(record.slug, listed)
                except SlugLocked:
                    report.busy.append(record.slug)
                except HearthError as exc:
                    if exc.kind == "store_error":
                        raise
                    report.unreachable.setdefault(driver, exc.message)
            if listed is not None:
                known = {r.slug for r in await host.store.deployments(include_torn_down=False)}
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
        host = self.host
        async with host.supervisor.use(driver, timeout=self.timeout) as client:
            if not client.supports("list"):
                return None
            refs = await client.list(timeout=self.timeout or host.timeouts.list)
        return {ref.workspace_slug: ref for ref in refs}

    async def _status(self, record: Deployment) -> StatusReport:
        host = self.host
        ref = record.ref or _synthesized_ref(record)
        async with host.supervisor.use(record.driver, timeout=self.timeout) as client:
            return await client.status(ref, timeout=self.timeout or host.timeouts.status)

    async def _one(
        self, slug: str, listed: dict[str, DeploymentRef] | None, observed: StatusReport | None = None
    ) -> None:
        host = self.host
        current = await host.store.get(slug)
        if current is None or current.state == "tier_torn_down":
            return
        seen = None if listed is None else listed.get(slug)
        if seen is not None and current.state not in TRANSIENT and not current.unconfirmed:
            return  # the list shows it and nothing about the record is uncertain
        observed = observed or await self._status(current)
        if observed.state == "unknown":  # never read as absent: the backend could not say
            self.report.unreachable.setdefault(
                current.driver,
                f"{slug}: the backend's state is unknown ({observed.message or 'no reason given'})",
            )
            return
        if current.ref is None and seen is not None:
            current = current.model_copy(update={"ref": seen})
        verb: str | None = None
        if current.state in TRANSIENT:
            verb = VERB_OF[current.state]
        elif current.unconfirmed:
            last = await host.store.last_operation(current.slug, current.generation)
            verb = last.verb if last is not None else "provision"
        resolution = resolve(current.state, observed.state, verb=verb)
        if resolution is None or (resolution.state, resolution.reason, resolution.unconfirmed) == (
            current.state,
            current.reason,
            current.unconfirmed,
        ):
            return  # nothing new: a second reconcile changes nothing
        reason = resolution.reason
        if reason and current.backend_id and resolution.state != "ready":
            reason += f" (its backend id, reported while it worked: {current.backend_id})"
        settled = current.model_copy(
            update={
                "state": resolution.state,
                "reason": reason,
                "unconfirmed": resolution.unconfirmed,
                "updated_at": utc_now(),
            }
        )
        ref = current.ref or _synthesized_ref(current)
        if verb == "upgrade" and observed.state == "ready":
            tier = observed.details.get("tier")
            if isinstance(tier, str) and tier:  # the adapter says which tier it serves
                settled = settled.model_copy(
                    update={
                        "tier": tier,
                        "reason": None,
                        "ref": ref.model_copy(update={"tier": tier, "last_status": "ready"}),
                    }
                )
        if settled.state == "ready":
            base = settled.ref or _synthesized_ref(settled)
            settled = settled.model_copy(
                update={
                    "ref": base.model_copy(
                        update={"endpoint": observed.endpoint or base.endpoint, "last_status": "ready"}
                    )
                }
            )
        if not self.dry_run:
            if current.state in TRANSIENT:
                await host._active_operation(slug)  # ends its dead host's operations: interrupted
            if not await host.store.save(settled, replaces=current):
                self.report.busy.append(slug)  # another host changed it meanwhile: its record stands
                return
        if verb is None:
            self.report.ghosts.append(current.slug)
        else:
            self.report.resolved.append((current.slug, current.state, settled.state))


async def adopt(host: Host, slug: str, *, driver: str, tier: str, timeout: float | None) -> Deployment:
    """Record a deployment the adapter lists but hearth has no record of (its state from the
    adapter's ``status``); refuses a slug with a live record or a running operation."""
    store = host.store
    await _refuse_if_busy(host, slug)
    _refuse_if_recorded(await store.get(slug), slug)
    async with host._locks.hold(slug, host._lock_wait(None if timeout is None else _at(timeout))):
        record = await store.get(slug)  # again, now that the slug is held
        _refuse_if_recorded(record, slug)
        await _refuse_if_busy(host, slug)
        async with host.supervisor.use(driver, timeout=timeout) as client:
            if not client.supports("list"):
                raise Unsupported(
                    f"{driver}: the adapter cannot list its deployments, so none can be adopted",
                    codes.UNSUPPORTED,
                    {"kind": "unsupported", "reason": "list is not supported"},
                )
            refs = await client.list(timeout=timeout or host.timeouts.list)
            found = next((ref for ref in refs if ref.workspace_slug == slug), None)
            if found is None:
                raise NotFound(f"driver {driver!r} lists no deployment {slug!r}; there is nothing to adopt")
            if found.tier and found.tier != tier:
                raise Conflict(
                    f"the deployment {slug!r} runs tier {found.tier!r}, not {tier!r}; "
                    "adopt it with that tier",
                    codes.CONFLICT,
                    {"kind": "conflict", "existing": found.model_dump(mode="json")},
                )
            report = await client.status(found, timeout=timeout or host.timeouts.status)
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
                host.owner,
                tier=tier,
                driver=driver,
                done=("succeeded", adopted.ref),
            )
        )
    host._bus.bump()
    return adopted


async def forget(host: Host, slug: str) -> Deployment:
    """Archive the record of ``slug``; the backend is left exactly as it is."""
    store = host.store
    if await store.get(slug) is None:
        raise NotFound(f"no workspace {slug!r}")
    await _refuse_if_busy(host, slug)
    async with host._locks.hold(slug, host.timeouts.lock_wait):
        record = await store.get(slug)
        if record is None:
            raise NotFound(f"no workspace {slug!r}")
        await _refuse_if_busy(host, slug)
        await store.archive(slug)
        await store.create_operation(
            NewOperation(slug, record.generation, "forget", host.owner, done=("succeeded", record.ref))
        )
    host._bus.bump()
    return record


async def _refuse_if_busy(host: Host, slug: str) -> None:
    """``busy`` at once when an operation runs on the slug (rather than a wait for its lock)."""
    active = await host._active_operation(slug)
    if active is not None:
        raise Busy(
            f"workspace {slug!r} is busy: operation #{active.id} ({active.verb}) is {active.state}", active.id
        )


def _refuse_if_recorded(record: Deployment | None, slug: str) -> None:
    if record is not None and record.state != "tier_torn_down":
        raise Conflict(
            f"workspace {slug!r} already has a record ({record.state} on {record.driver!r}); "
            "only a deployment without one can be adopted",
            codes.CONFLICT,
            {"kind": "conflict", "existing": existing_json(record)},
        )


def _at(timeout: float) -> float:
    import asyncio

    return asyncio.get_running_loop().time() + timeout
