"""Recovery: whether the host running an operation is alive, and settling what a dead one left.

A host proves itself alive by a mark in the home (``flock``; the kernel drops it when the
process dies) or, on a store several hosts share, by a lease it renews. An operation whose host
is dead is ended ``interrupted``, and so is this host's own operation with no work behind it
(a failed store write left it; still queued, it ends ``failed``, having changed nothing: see
``_states.dead_owner_end``); a record it left transient is *healed*: settled from the
adapter's ``status`` by the reconcile rules, on the next access to its slug or by any host's
lease round (a *takeover*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hearth_adaptersdk import StatusReport

from .._errors import HearthError, SlugLocked
from .._models import Deployment, Operation
from .._states import TRANSIENT, dead_owner_end
from .._store._locks import OwnerMark
from ._core import Core
from ._reconcile import Reconciler

log = logging.getLogger("hearth")


class Recovery:
    """Liveness, heal, lease renewal and takeover on the core; ``ours`` tells the operations
    this host runs now."""

    def __init__(self, core: Core, ours: Callable[[int], bool]) -> None:
        self._core = core
        self._ours = ours
        self._renewing: asyncio.Task[None] | None = None
        core.on_opened(self._start_lease)

    async def owner_alive(self, operation: Operation) -> bool:
        core = self._core
        if self._ours(operation.id) or operation.owner == core.owner:
            return self._ours(operation.id)
        if operation.owner is None:  # recorded by an older hearth: its slug lock tells
            try:
                async with core.locks.hold(operation.slug, 0.0):
                    return False
            except SlugLocked:
                return True
        if core.shared:  # hosts of other homes and machines: their lease tells
            return await core.leased().lease_alive(operation.owner)
        return OwnerMark.alive(core.state_dir / "owners", operation.owner)

    async def interrupted(self, operation: Operation) -> None:
        """End an operation with no live work, saying who found it and how: a host found dead,
        or this host's own operation whose outcome a failed store write left unrecorded."""
        core = self._core
        state, error = dead_owner_end(
            operation.state,
            own=operation.owner == core.owner,
            shared=core.shared,
            owner=operation.owner,
            finder=core.owner,
        )
        await core.store.end(operation.id, state, error)

    async def look(self, slug: str) -> tuple[Deployment | None, Operation | None]:
        """The slug's record and its live operation (one store call; a dead host's operations
        are ended ``interrupted`` on the way)."""
        record, active = await self._core.store.snapshot(slug)
        for operation in active:
            if await self.owner_alive(operation):
                return record, operation
            await self.interrupted(operation)
        return record, None

    async def active_operation(self, slug: str) -> Operation | None:
        """The slug's queued or running operation whose host is alive (dead ones are ended)."""
        return (await self.look(slug))[1]

    def reconciler(self, *, dry_run: bool, timeout: float | None) -> Reconciler:
        return Reconciler(self._core, self.active_operation, dry_run=dry_run, timeout=timeout)

    async def heal(self, slug: str) -> tuple[Deployment | None, Operation | None]:
        """Settle what a dead host left on ``slug``: its operations end ``interrupted`` and a
        record it left transient is resolved from the adapter's ``status``. The record after,
        and the slug's live operation (none once a record was settled)."""
        record, live = await self.look(slug)
        if record is None or record.state not in TRANSIENT or live is not None:
            return record, live
        core = self._core
        try:
            async with core.locks.hold(slug, 0.0):
                # its save notes the settle in the log of the operation that left the record
                # transient, then writes that operation's final event (``final_event_waits``)
                await self.reconciler(dry_run=False, timeout=None).settle(slug)
        except SlugLocked:
            pass  # someone is settling it right now
        except HearthError as exc:
            if exc.kind == "store_error":
                raise
            log.warning("could not settle %s from its adapter: %s", slug, exc.message)
        return await core.store.get(slug), None

    async def confirm(self, record: Deployment, report: StatusReport) -> Deployment:
        """A record whose outcome was not confirmed, settled from the ``status`` answer just
        received (as reconcile would); unchanged if the slug is busy or the answer says nothing."""
        core = self._core
        try:
            async with core.locks.hold(record.slug, 0.0):
                await self.reconciler(dry_run=False, timeout=None).settle(record.slug, report)
        except SlugLocked:
            return record
        return await core.store.get(record.slug) or record

    # --- the lease (a store several hosts share) -------------------------------------------------
    def _start_lease(self) -> None:
        if self._core.shared:
            self._renewing = asyncio.get_running_loop().create_task(self._renew_lease(), name="hearth-lease")

    async def _renew_lease(self) -> None:
        """Renew this host's lease every third of it while the host is open, and take over the
        operations of hosts whose lease ran out (each is ended ``interrupted`` and its record
        settled from the adapter's ``status``; hosts racing to do so settle it once). A
        renewal that fails is logged and tried again: past the lease, others take over."""
        core = self._core
        while core.is_open:
            await asyncio.sleep(core.timeouts.lease / 3)
            store = core.leased()
            try:
                await store.renew_lease(core.owner, core.timeouts.lease)
                for operation in await store.orphaned():
                    if self._ours(operation.id):
                        continue  # ours: our lease was late, the work goes on (the fence guards it)
                    log.info(
                        "taking over operation #%s (%s of %s): its host %s holds no lease",
                        operation.id,
                        operation.verb,
                        operation.slug,
                        operation.owner,
                    )
                    await self.interrupted(operation)
                    await self.heal(operation.slug)
            except HearthError as exc:
                log.warning("the lease of %s could not be renewed: %s", core.owner, exc.message)

    async def stop(self) -> None:
        """Stop renewing the lease (the host is closing)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(BaseException):
                await self._renewing
            self._renewing = None
