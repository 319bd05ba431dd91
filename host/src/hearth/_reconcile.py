"""Reconcile: make the records agree with what the backends hold, deleting nothing.

A record left transient by a host that died, or marked *not confirmed*, is settled from the
adapter's ``status`` by ``_states.resolve``; a record that claims a backend the adapter confirms
absent is a ghost (marked failed); a deployment an adapter lists with no record is an orphan
(reported). Another process's slug is skipped (busy), an unreachable driver changes nothing. A
dry run reports the same and writes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from hearth_adaptersdk import utc_now

from ._errors import HearthError
from ._host import VERB_OF, ReconcileReport, _synthesized_ref
from ._states import TRANSIENT, resolve
from ._store import Deployment

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
        store, report = self.host.store, self.report
        records = [
            r for r in store.deployments() if r.state != "tier_torn_down" and (slug is None or r.slug == slug)
        ]
        for record in records:
            if record.driver in report.unreachable:
                continue
            try:
                async with self.host._locks.hold(record.slug, 0.0):
                    await self._one(record.slug)
            except HearthError as exc:
                if exc.kind == "slug_locked":
                    report.busy.append(record.slug)
                elif exc.kind == "store_error":
                    raise
                else:
                    report.unreachable.setdefault(record.driver, exc.message)
        await self._orphans({r.driver for r in records} - set(report.unreachable), slug)
        return report

    async def _one(self, slug: str) -> None:
        host, timeout = self.host, self.timeout
        current = host.store.get(slug)
        if current is None or current.state == "tier_torn_down":
            return
        ref = current.ref or _synthesized_ref(current)
        async with host.supervisor.use(current.driver, timeout=timeout) as client:
            observed = await client.status(ref, timeout=timeout or host.timeouts.status)
            if current.ref is None and observed.state == "ready" and client.supports("list"):
                listed = await client.list(timeout=timeout or host.timeouts.list)
                found = next((r for r in listed if r.workspace_slug == current.slug), None)
                if found is not None:
                    current = replace(current, ref=found)
        verb: str | None = None
        if current.state in TRANSIENT:
            verb = VERB_OF[current.state]
        elif current.unconfirmed:
            last = host._last_operation(current)
            verb = last.verb if last is not None else "provision"
        resolution = resolve(current.state, observed.state, verb=verb)
        if resolution is None or (resolution.state, resolution.reason, resolution.unconfirmed) == (
            current.state,
            current.reason,
            current.unconfirmed,
        ):
            return  # nothing new: a second reconcile changes nothing
        settled = replace(
            current,
            state=resolution.state,
            reason=resolution.reason,
            unconfirmed=resolution.unconfirmed,
            updated_at=utc_now(),
        )
        if verb == "upgrade" and observed.state == "ready":
            tier = observed.details.get("tier")
            if isinstance(tier, str) and tier:  # the adapter says which tier it serves
                settled = replace(
                    settled,
                    tier=tier,
                    reason=None,
                    ref=(current.ref or ref).model_copy(update={"tier": tier, "last_status": "ready"}),
                )
        if settled.state == "ready":
            base = settled.ref or _synthesized_ref(settled)
            settled = replace(
                settled,
                ref=base.model_copy(
                    update={"endpoint": observed.endpoint or base.endpoint, "last_status": "ready"}
                ),
            )
        if not self.dry_run:
            if current.state in TRANSIENT:
                self._interrupt_operations(current)
            host.store.save(settled)
        if verb is None:
            self.report.ghosts.append(current.slug)
        else:
            self.report.resolved.append((current.slug, current.state, settled.state))

    def _interrupt_operations(self, record: Deployment) -> None:
        store = self.host.store
        for operation in store.operations(record.slug):
            if operation.outcome == "running":
                store.end(
                    operation.id,
                    "interrupted",
                    {
                        "kind": "interrupted",
                        "message": "the hearth process running it stopped before it finished "
                        "(found by reconcile)",
                    },
                )

    async def _orphans(self, drivers: set[str], slug: str | None) -> None:
        host, report = self.host, self.report
        known = {d.slug for d in host.store.deployments() if d.state != "tier_torn_down"}
        for driver in sorted(drivers):
            try:
                async with host.supervisor.use(driver, timeout=self.timeout) as client:
                    if not client.supports("list"):
                        continue
                    refs = await client.list(timeout=self.timeout or host.timeouts.list)
            except HearthError as exc:
                report.unreachable.setdefault(driver, exc.message)
                continue
            report.orphans.extend(
                ref
                for ref in refs
                if ref.workspace_slug not in known and (slug is None or ref.workspace_slug == slug)
            )
