"""The runner: one operation at a time per slug, in a task this host owns.

The task takes the slug's lock (across processes), reads the record again, checks the rules,
starts the adapter, records the transient state (``begin``: the operation has *begun*), calls
the adapter (each progress event goes to the event log and to the operation's listeners) and
hands its answer to ``Outcome``. Work that never began is ended with the record untouched.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hearth_adaptersdk import DeploymentRef, Progress, utc_now

from .._adapters._client import AdapterClient, Interruption, ProgressCallback
from .._errors import CallTimeout, HearthError, Interrupted, StoreError
from .._models import Deployment, Operation, OperationState, synthesized_ref
from .._states import (
    OPTIONAL_VERBS,
    Transition,
    Verb,
    start_not_recorded,
    still_idle,
    unsupported_verb,
    withdrawn_message,
)
from .._store._base import NewEvent
from ._checks import Checks, Request, remaining, rules_for
from ._core import Core
from ._events import EventLog
from ._outcome import Outcome

log = logging.getLogger("hearth")

#: ``on_progress`` may be a plain function or a coroutine function.
ProgressListener = Callable[[Progress], object] | Callable[[Progress], Awaitable[object]]
#: One adapter call: (client, seconds left, progress callback, interruption) to its answer.
AdapterCall = Callable[[AdapterClient, float, ProgressCallback, Interruption], Awaitable[Any]]


@dataclass
class Work:
    """An operation this host runs: its task, who listens to its progress, why it was cancelled."""

    operation: Operation
    task: asyncio.Task[DeploymentRef | None] | None = None
    listeners: list[ProgressListener] = field(default_factory=list)
    cancel: tuple[str, str] | None = None
    #: Whether ``begin`` was written (or the operation ended without work): from then on the
    #: outcome, not the runner, ends the operation.
    begun: bool = False
    #: Ends the operation of a task cancelled before its first step (``Runner._work_done``).
    ending: asyncio.Future[None] | None = None
    #: The driver it runs on, and when it was launched (``time.monotonic``), for the observers.
    driver: str = ""
    launched: float = 0.0
    #: Whether the observers were told how it ended.
    reported: bool = False


class Runner:
    """The work registry of one host, and the running of each operation."""

    def __init__(self, core: Core, checks: Checks, events: EventLog) -> None:
        self._core = core
        self._checks = checks
        self._events = events
        self._work: dict[int, Work] = {}
        self._background: set[asyncio.Future[Any]] = set()
        #: One line per cancellation this host settled: what became of the work.
        self.interruptions: list[str] = []
        core.on_ended(self._ended)

    # --- the registry ---------------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether this host runs any operation now."""
        return bool(self._work)

    def count(self) -> int:
        return len(self._work)

    def runs(self, ident: int) -> bool:
        return ident in self._work

    def get(self, ident: int) -> Work | None:
        return self._work.get(ident)

    def listen(self, ident: int, on_progress: ProgressListener | None) -> None:
        work = self._work.get(ident)
        if work is not None and on_progress is not None:
            work.listeners.append(on_progress)

    def launch(self, operation: Operation, request: Request, on_progress: ProgressListener | None) -> None:
        """Run ``operation`` (just recorded, queued) in a task of this host."""
        work = Work(operation, driver=request.driver or "", launched=time.monotonic())
        if on_progress is not None:
            work.listeners.append(on_progress)
        self._work[operation.id] = work
        self._core.observers.operation_started(operation.verb, work.driver)
        work.task = asyncio.get_running_loop().create_task(
            self._execute(work, request), name=f"hearth-{request.verb}-{request.slug}-#{operation.id}"
        )
        work.task.add_done_callback(functools.partial(self._work_done, work))
        self._events.bus.ensure_polling()

    # --- cancel ---------------------------------------------------------------------------------
    def cancel(self, work: Work, outcome: str, reason: str, *, again: bool = False) -> bool:
        """Cancel the work once: a second cancel of a task cuts its rollback short, which only
        ``again`` asks for."""
        if work.task is None or work.task.done():
            return False
        if work.cancel is not None:
            if again:
                work.task.cancel()
            return again
        work.cancel = (outcome, reason)
        work.task.cancel()
        return True

    def cancel_requested(self, ident: int, reason: str) -> None:
        """Someone asked, through the store, to cancel an operation this host may run."""
        work = self._work.get(ident)
        if work is not None:
            self.cancel(work, "cancelled", reason)

    def cancel_all(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int:
        return sum(self.cancel(work, outcome, reason, again=again) for work in list(self._work.values()))

    async def drain(self) -> None:
        """Let operations in flight finish (``drain_grace``), cancel the rest (recorded
        ``interrupted``) and wait for their rollbacks (``cancel_grace``)."""
        timeouts = self._core.timeouts
        active = [work.task for work in self._work.values() if work.task is not None and not work.task.done()]
        if active:
            _, pending = await asyncio.wait(active, timeout=timeouts.drain_grace)
            for work in list(self._work.values()):
                if work.task in pending:
                    self.cancel(work, "interrupted", "the host was closed while it ran")
            if pending:
                await asyncio.wait(pending, timeout=timeouts.cancel_grace + 5.0)

    def stop_background(self) -> None:
        for task in list(self._background):
            task.cancel()

    def _work_done(self, work: Work, task: asyncio.Task[DeploymentRef | None]) -> None:
        """A finished work task: its error is the operation's (kept in the store; awaiting it is
        optional, so it is retrieved here), and a task cancelled before its first step, which
        ran none of its own handlers, still ends its operation (registered until it is ended:
        an own operation with no work is one a failed write left, ``_states.dead_owner_end``)."""
        if not task.cancelled():
            self._forget(work)
            task.exception()
            return
        if not work.begun and self._core.is_open:
            ending = asyncio.ensure_future(self._end_unstarted(work, *(work.cancel or _CALLER)))
            work.ending = ending
            self._keep(ending)
            ending.add_done_callback(lambda _: self._forget(work))
        else:
            self._forget(work)

    def _forget(self, work: Work) -> None:
        """The work is over: out of the registry, and the observers told (``unrecorded`` when
        no end of it was written: heal or reconcile ends it)."""
        self._work.pop(work.operation.id, None)
        self._report(work, "unrecorded")

    def _ended(self, ident: int, state: OperationState, recorded: bool) -> None:
        """An end was written through the store: the observers hear how one of ours ended
        (fenced, ``recorded`` False: another host ended it, as ``interrupted``)."""
        work = self._work.get(ident)
        if work is not None:
            self._report(work, state if recorded else "interrupted")

    def _report(self, work: Work, outcome: str) -> None:
        if not work.reported:
            work.reported = True
            seconds = time.monotonic() - work.launched
            self._core.observers.operation_finished(work.operation.verb, work.driver, outcome, seconds)

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- running --------------------------------------------------------------------------------
    async def _execute(self, work: Work, request: Request) -> DeploymentRef | None:
        """The work of one operation, in the host's task: hold the slug, check again, run."""
        core = self._core
        try:
            async with core.locks.hold(request.slug, self._checks.lock_wait(request.deadline)):
                record = await core.store.get(request.slug)
                return await self._perform(work, request, record)
        except asyncio.CancelledError:
            if not work.begun:
                await self._end_unstarted(work, *(work.cancel or _CALLER))
            raise
        except StoreError as exc:
            if not work.begun:  # recorded queued, never started: it ends here, not queued for ever
                await self._end(work, "failed", start_not_recorded(exc.message), best_effort=True)
            raise
        except HearthError as exc:
            if not work.begun:
                await self._end(work, "failed", {**exc.to_json(), "changed_nothing": True})
            raise
        except Exception as exc:
            if not work.begun:
                await self._end(work, "failed", {"kind": "error", "message": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            self._forget(work)

    async def _fenced(self, operation: int) -> bool:
        """Whether a ``begin`` that wrote nothing was refused by its autostop fence (the
        operation is still queued), not because another host settled it."""
        found = await self._core.store.operation(operation)
        return found is not None and found.state == "queued"

    async def _withdrawn(
        self, work: Work, request: Request | None, record: Deployment | None, seen: datetime | None = None
    ) -> DeploymentRef | None:
        """An autostop that found activity it had not read (or a changed record): it ends
        ``cancelled``, nothing done, saying why (``_states.withdrawn_message``)."""
        seen = seen if request is None else request.idle_since
        assert seen is not None
        slug = work.operation.slug
        work.begun = True
        message = withdrawn_message(slug, seen)
        await self._core.store.end(
            work.operation.id, "cancelled", {"kind": "cancelled", "message": message, "changed_nothing": True}
        )
        log.info("%s", message)
        return record.ref if record is not None else None

    async def _end_unstarted(self, work: Work, outcome: str, reason: str) -> None:
        await self._end(work, outcome, {"kind": outcome, "message": f"{reason}; it had not started"})

    async def _end(self, work: Work, state: str, error: dict[str, Any], *, best_effort: bool = False) -> None:
        """An operation that never reached the adapter: the record is as it was. ``best_effort``:
        a store that failed once may fail again; the caller's own error is the one to raise, and
        the operation, left queued with no work, is ended by heal or reconcile
        (``_states.dead_owner_end``)."""
        try:
            await asyncio.shield(self._core.store.end(work.operation.id, state, error))  # type: ignore[arg-type]
        except StoreError as exc:
            if not best_effort:
                raise
            log.warning("operation #%s could not be ended: %s", work.operation.id, exc.message)

    async def _perform(self, work: Work, request: Request, record: Deployment | None) -> DeploymentRef | None:
        checks, slug, verb = self._checks, request.slug, request.verb
        deadline = checks.verb_deadline(request.deadline, verb)
        if verb != "provision":
            record = await checks.existing(slug, record)
        if request.idle_since is not None and not still_idle(record, request.idle_since):
            return await self._withdrawn(work, request, record)
        rule = rules_for(request, record)
        if rule.noop:
            ref = record.ref if record is not None and verb != "teardown" else None
            work.begun = True
            await self._core.store.end(work.operation.id, "succeeded", result=ref)
            return ref
        assert rule.transition is not None
        step = rule.transition
        if verb == "provision":
            assert request.tier is not None and request.driver is not None
            profile = checks.profile(request.tier, request.driver)
            previous = None if rule.archive else record
            working = await self._provisioning(request, previous, step)

            def provision(
                client: AdapterClient, left: float, callback: ProgressCallback, interruption: Interruption
            ) -> Awaitable[DeploymentRef]:
                return client.provision(
                    slug, profile, on_progress=callback, timeout=left, interruption=interruption
                )

            return await self._call_adapter(
                work,
                previous,
                working,
                step,
                verb=verb,
                deadline=deadline,
                call=provision,
                archive=rule.archive,
            )
        assert record is not None
        # its activity as it was: a verb's success is activity (``Outcome.activity``), and an
        # autostop's fence is on what it read
        working = record.model_copy(update={"state": step.during, "updated_at": utc_now()})
        if verb == "upgrade":
            assert request.tier is not None and record.ref is not None
            profile, current = checks.profile(request.tier, record.driver), record.ref

            def upgrade(
                client: AdapterClient, left: float, callback: ProgressCallback, interruption: Interruption
            ) -> Awaitable[DeploymentRef]:
                return client.upgrade(
                    current, profile, on_progress=callback, timeout=left, interruption=interruption
                )

            return await self._call_adapter(
                work, record, working, step, verb=verb, deadline=deadline, call=upgrade, new_tier=request.tier
            )
        ref = record.ref or synthesized_ref(record)
        if verb in ("stop", "start"):
            method = verb

            def stop_or_start(
                client: AdapterClient, left: float, callback: ProgressCallback, interruption: Interruption
            ) -> Awaitable[DeploymentRef]:
                run = client.stop if method == "stop" else client.start
                return run(ref, on_progress=callback, timeout=left, interruption=interruption)

            return await self._call_adapter(
                work,
                record,
                working,
                step,
                verb=verb,
                deadline=deadline,
                call=stop_or_start,
                idle_since=request.idle_since,
                why=request.why,
            )

        def teardown(
            client: AdapterClient, left: float, callback: ProgressCallback, interruption: Interruption
        ) -> Awaitable[Any]:
            return client.teardown(ref, on_progress=callback, timeout=left, interruption=interruption)

        return await self._call_adapter(
            work, record, working, step, verb=verb, deadline=deadline, call=teardown
        )

    async def _provisioning(
        self, request: Request, record: Deployment | None, step: Transition
    ) -> Deployment:
        """The record to write while provisioning: the current one in its new state, or a new
        generation of the slug."""
        assert request.tier is not None and request.driver is not None
        now = utc_now()
        if record is not None:
            return record.model_copy(
                update={
                    "state": step.during,
                    "tier": request.tier,
                    "driver": request.driver,
                    "updated_at": now,
                    "labels": {**record.labels, **request.labels},
                }
            )
        return Deployment(
            slug=request.slug,
            generation=await self._core.store.next_generation(request.slug),
            tier=request.tier,
            driver=request.driver,
            state=step.during,
            ref=None,
            created_at=now,
            updated_at=now,
            last_activity=now,
            labels=request.labels,
        )

    async def _call_adapter(
        self,
        work: Work,
        previous: Deployment | None,
        working: Deployment,
        step: Transition,
        *,
        verb: Verb,
        deadline: float,
        call: AdapterCall,
        new_tier: str | None = None,
        archive: bool = False,
        idle_since: datetime | None = None,
        why: str | None = None,
    ) -> DeploymentRef | None:
        """Start the adapter, record ``step.during``, call it, and record what its answer says.
        ``idle_since``, ``why``: an autostop's fence and reason (``Request``)."""
        core = self._core
        async with core.supervisor.use(working.driver, timeout=remaining(deadline)) as client:
            left = remaining(deadline)
            if left <= 0:
                raise CallTimeout(
                    f"the deadline passed before {verb} of {working.slug!r} could be "
                    "sent (starting the adapter took the time); nothing was changed"
                )
            if verb in OPTIONAL_VERBS and not all(client.supports(method) for method in OPTIONAL_VERBS):
                raise unsupported_verb(verb, working.driver)  # before begin: nothing changed
            operation = work.operation.id
            began, cancelled_at_begin = await _begin(core, operation, working, archive, idle_since)
            if not began and idle_since is not None and await self._fenced(operation):
                return await self._withdrawn(work, None, previous, idle_since)
            work.begun = True  # begun, or ended by another host: nothing is left for the runner to end
            if why is not None and not cancelled_at_begin:
                self._events.add(NewEvent(operation, working.slug, verb, "log", "info", why))
            if not began:
                raise Interrupted(
                    f"operation #{operation} ({verb} of {working.slug!r}) was settled by another "
                    "host while this one waited (its lease had run out); nothing was sent to the adapter"
                )
            outcome = Outcome(
                core, self._events, previous, working, step, verb, operation, client, self.interruptions
            )
            outcome.activity = idle_since is None
            if cancelled_at_begin:  # nothing reached the adapter: the record is put back as it was
                why, reason = work.cancel or _CALLER
                kind = "cancelled" if why == "cancelled" else "interrupted"
                await outcome.unchanged(why, {"kind": kind, "message": f"{reason}; it had not started"})
                raise asyncio.CancelledError

            def progress(event: Progress) -> None:
                named = event.backend_id
                if named is not None and named != outcome.working.backend_id:
                    # written with the event, at once; the outcome's record carries it too
                    outcome.working = outcome.working.model_copy(update={"backend_id": named})
                else:
                    named = None
                self._events.add(
                    NewEvent(
                        operation,
                        working.slug,
                        verb,
                        "progress",
                        event.level,
                        event.message,
                        event.fraction,
                        backend_id=named,
                    )
                )
                for listener in work.listeners:
                    self.notify(listener, event)

            interruption = Interruption()
            try:
                result = await call(client, left, progress, interruption)
            except asyncio.CancelledError:
                why, reason = work.cancel or _CALLER
                await outcome.cancelled(why, reason, interruption, new_tier)
                raise
            except CallTimeout as exc:
                await outcome.timed_out(exc)
                raise
            except HearthError as exc:
                await outcome.failed(exc)
                raise
            except Exception as exc:  # a bug, or the OS failing under us: never a stuck record
                error = (
                    StoreError(f"{verb} of {working.slug!r} stopped: {type(exc).__name__}: {exc}")
                    if isinstance(exc, OSError)
                    else HearthError(
                        f"{verb} of {working.slug!r} stopped on an unexpected {type(exc).__name__}: {exc}"
                    )
                )
                await outcome.failed(error, unconfirmed=True)
                raise error from exc
            return await outcome.succeeded(result, new_tier)

    def notify(self, listener: ProgressListener, event: Progress) -> None:
        """Call one ``on_progress``: a coroutine runs as a task; an exception is logged."""
        try:
            result = listener(event)
        except Exception:
            log.exception("an on_progress callback raised")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._keep(task)
            task.add_done_callback(_listener_done)


#: Why work was cancelled when nobody said: the caller's own task was cancelled.
_CALLER = ("cancelled", "cancelled by the caller")


async def _begin(
    core: Core, operation: int, working: Deployment, archive: bool, idle_since: datetime | None = None
) -> tuple[bool, bool]:
    """``begin``'s answer, and whether its caller was cancelled while it was written (the
    cancellation is raised here when nothing was written: the runner ends the operation)."""
    writing = asyncio.ensure_future(
        core.store.begin(operation, working, archive_first=archive, idle_since=idle_since)
    )
    try:
        return await asyncio.shield(writing), False
    except asyncio.CancelledError:
        if not await _written(writing):
            raise
        return True, True


async def _written(writing: asyncio.Future[bool]) -> bool:
    """Whether a ``begin`` whose caller was cancelled was written: the write goes on without
    its caller (on SQLite's thread, in the database's transaction), so its answer, not the
    cancellation, says whether the record is transient now and must be put back."""
    while not writing.done():
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            continue  # a second cancel: the write's answer is still what decides
        except Exception:
            break
    return not writing.cancelled() and writing.exception() is None and writing.result()


def _listener_done(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("an on_progress callback raised", exc_info=task.exception())
