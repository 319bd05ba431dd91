"""Operations as handles: find them, wait for them, cancel them, follow their events, from any
process sharing the store. Every ``Operation`` a host returns acts through this object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hearth_adaptersdk import DeploymentRef

from .._actors import check_actor
from .._errors import InvalidInput, NotFound
from .._models import FINISHED, Event, Operation
from .._states import cancel_refused
from ._checks import Request, check_slug, cursor, deadline, echo, page, remaining, sequence
from ._core import Core
from ._events import EventLog
from ._recovery import Recovery
from ._runner import ProgressListener, Runner

#: How often a wait for another process's operation checks that its host is alive (seconds).
LIVENESS = 1.0


class Operations:
    """The ``OperationOwner`` of a ``Host``: the waits, results and cancels of its operations."""

    def __init__(self, core: Core, runner: Runner, recovery: Recovery, events: EventLog) -> None:
        self._core = core
        self._runner = runner
        self._recovery = recovery
        self._events = events

    async def get(self, ident: int, *, with_log: bool = True) -> Operation:
        """The operation ``ident``, from any process, with its log (``with_log``: a read by id
        carries it, lists leave it out); ``not_found`` if there is none."""
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 < ident < 2**63:
            raise InvalidInput(f"{echo(ident)} is not an operation id")
        found = await self._core.store.operation(ident, with_log=with_log)
        if found is None:
            raise NotFound(f"no operation #{ident}")
        return found.bound(self)

    async def find(
        self,
        *,
        slug: str | None,
        state: str | None,
        limit: int | None,
        after: int | None,
        actor: str | None = None,
    ) -> list[Operation]:
        """Operations by id, from every process; ``after``: the last id of the previous page;
        ``actor``: only those it asked for (exactly that actor)."""
        if slug is not None:
            check_slug(slug)
        if state is not None and state not in {"queued", "running", *FINISHED}:
            raise InvalidInput(f"{echo(state)} is not an operation state")
        if actor is not None:
            check_actor(actor)
        found = await self._core.store.operations(
            slug=slug, state=state, limit=page(limit), after=cursor(after), actor=actor
        )
        return [op.bound(self) for op in found]

    def bind(self, operations: list[Operation]) -> list[Operation]:
        return [op.bound(self) for op in operations]

    # --- OperationOwner -------------------------------------------------------------------------
    async def _operation_wait(self, ident: int, timeout: float | None) -> Operation:
        return await self._wait(ident, timeout, with_log=True)

    async def _wait(self, ident: int, timeout: float | None, *, with_log: bool) -> Operation:
        """The operation once finished, or when ``timeout`` passed; read with its log once only."""
        until = deadline(timeout)
        bus = self._events.bus
        with bus.interest():
            while True:
                changed = bus.changed()
                current = await self.get(ident, with_log=False)
                if current.finished:
                    return await self.get(ident) if with_log else current
                work = self._runner.get(ident)
                waits: list[asyncio.Future[Any]] = [changed]
                if work is not None and work.task is not None and not work.task.done():
                    waits.append(work.task)
                elif work is None and not await self._recovery.owner_alive(current):
                    await self._recovery.heal(current.slug)  # its host died: settle it, then read it again
                    continue
                left = None if until is None else remaining(until)
                if left is not None and left <= 0:
                    return await self.get(ident) if with_log else current
                bound = LIVENESS if left is None else min(left, LIVENESS)
                await asyncio.wait(waits, timeout=bound, return_when=asyncio.FIRST_COMPLETED)

    async def _operation_result(self, ident: int, timeout: float | None) -> DeploymentRef | None:
        work = self._runner.get(ident)
        if work is not None and work.task is not None:
            await asyncio.wait([work.task], timeout=timeout)
            if work.task.done() and not work.task.cancelled():
                return work.task.result()  # its own exception, with every attribute
        return (await self._wait(ident, timeout, with_log=False)).settled()

    async def _operation_cancel(self, ident: int, reason: str) -> Operation:
        if not isinstance(reason, str) or not reason:
            raise InvalidInput("a cancel needs a reason (a non-empty string)")
        work = self._runner.get(ident)
        found = await self._core.store.request_cancel(ident, reason[:500])
        refused = None if found is None else cancel_refused(ident, found.state)
        if refused is not None:  # finished: nothing is left to cancel, nothing was recorded
            raise refused
        if work is not None and work.task is not None:
            self._runner.cancel(work, "cancelled", reason)
            if not work.begun:  # a queued operation ends at once: let the caller see it ended
                grace = self._core.timeouts.cancel_grace
                await asyncio.wait([work.task], timeout=grace)
                if work.ending is not None:
                    await asyncio.wait([work.ending], timeout=grace)
            return await self.get(ident)
        if found is None:
            raise NotFound(f"no operation #{ident}")
        return found.bound(self)

    def _operation_events(self, ident: int, after: int) -> AsyncIterator[Event]:
        return self._events.after(sequence(after), operation=ident)

    # --- the plain verbs' wait ------------------------------------------------------------------
    async def result_for_caller(
        self, request: Request, operation: Operation, created: bool, on_progress: ProgressListener | None
    ) -> DeploymentRef | None:
        """The plain verbs' wait: a cancelled caller cancels work it started (not work it
        joined) and waits, within the cancel grace, for it to be settled; an operation run by
        another process relays its progress from the event log."""
        work = self._runner.get(operation.id)
        relay = None
        if work is None and on_progress is not None and not operation.finished:
            relay = asyncio.get_running_loop().create_task(self._relay(operation.id, on_progress))
        try:
            if work is None or work.task is None:  # joined: the caller's timeout bounds its wait
                bound = None if request.deadline is None else max(remaining(request.deadline), 0.0)
                return await self._operation_result(operation.id, bound)
            try:
                return await asyncio.shield(work.task)
            except asyncio.CancelledError:
                if created and not work.task.done():  # this caller was cancelled, not the work
                    self._runner.cancel(work, "cancelled", "cancelled by the caller")
                    await asyncio.wait([work.task], timeout=self._core.timeouts.cancel_grace + 5.0)
                raise
        finally:
            if relay is not None:
                relay.cancel()

    async def _relay(self, ident: int, on_progress: ProgressListener) -> None:
        async for event in self._events.after(0, operation=ident):
            if event.kind == "progress":
                self._runner.notify(on_progress, event.as_progress())
