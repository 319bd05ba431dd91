"""The outcome of one verb: what its answer (or its failure, timeout or cancel) leaves in the
record, by the decisions of ``_states.py``; this module only writes them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from hearth_adaptersdk import DeploymentRef, utc_now

from .._adapters._client import AdapterClient, Interruption
from .._errors import (
    AdapterError,
    BackendFailure,
    BackendUnavailable,
    CallTimeout,
    Cancelled,
    Conflict,
    HearthError,
    Interrupted,
    ProtocolViolation,
    StoreError,
)
from .._models import Deployment, synthesized_ref
from .._states import (
    CancelOutcome,
    Transition,
    Verb,
    adapter_conflict_reason,
    after_cancel,
    after_timeout,
    cancel_note,
    changed_nothing,
    failure_reason,
    failure_unconfirmed,
    resolve,
    unconfirmed_reason,
)
from .._store._base import NewEvent
from ._core import Core
from ._events import EventLog

log = logging.getLogger("hearth")


@dataclass
class Outcome:
    """Records what one verb's answer says; ``notes`` gets one line per cancellation settled."""

    core: Core
    events: EventLog
    previous: Deployment | None
    working: Deployment
    transition: Transition
    verb: Verb
    operation: int
    client: AdapterClient
    notes: list[str] = field(default_factory=list)
    #: Whether its success is activity on the slug (README "Autostop"): every verb's is, but an
    #: autostop's own stop; a refusal or a rollback leaves the record, activity too, as it was.
    activity: bool = True

    async def _end(
        self,
        outcome: str,
        error: dict[str, Any] | None,
        deployment: Deployment,
        archive: bool = False,
        result: DeploymentRef | None = None,
    ) -> None:
        """Write the operation's events, then its outcome and the record it left: one write
        that a cancelled caller cannot stop half-way."""
        await self.events.flush()
        recorded = await asyncio.shield(
            self.core.store.end(
                self.operation,
                outcome,  # type: ignore[arg-type]
                error,
                deployment=deployment,
                archive=archive,
                result=result,
            )
        )
        if not recorded:  # fenced: another host settled it, and its record stands
            log.warning(
                "operation #%s (%s of %s) ended %s here, but another host had settled it (this "
                "host's lease had run out): its record stands, this outcome is not written",
                self.operation,
                self.verb,
                self.working.slug,
                outcome,
            )
            raise Interrupted(
                f"operation #{self.operation} ({self.verb} of {self.working.slug!r}) was settled by "
                f"another host while this one ran it (this host's lease had run out); its outcome "
                f"here ({outcome}) was not recorded: see the workspace's record and log"
            )

    async def succeeded(self, result: Any, new_tier: str | None) -> DeploymentRef | None:
        record = self.working
        if self.verb == "teardown":
            ref = (record.ref or synthesized_ref(record)).model_copy(
                update={"last_status": "tier_torn_down", "endpoint": None}
            )
        else:
            ref = result
            if ref.workspace_slug != record.slug:
                error = ProtocolViolation(
                    f"the adapter answered {self.verb} of {record.slug!r} "
                    f"with a ref for {ref.workspace_slug!r}"
                )
                await self.failed(error, unconfirmed=True)
                raise error
        now = utc_now()
        await self._end(
            "succeeded",
            None,
            record.model_copy(
                update={
                    "state": self.transition.on_success,
                    "ref": ref,
                    "tier": new_tier or record.tier,
                    "updated_at": now,
                    "last_activity": now if self.activity else record.last_activity,
                    "reason": None,
                    "unconfirmed": False,
                }
            ),
            result=ref if self.verb != "teardown" else None,
        )
        return ref if self.verb != "teardown" else None

    async def unchanged(self, outcome: str, error: dict[str, Any]) -> None:
        """The answer says nothing changed: the record stays as it was (a first provision
        leaves no live record); the operation keeps the error."""
        error = {**error, "changed_nothing": True}
        if self.previous is None:
            await self._end(
                outcome,
                error,
                self.working.model_copy(update={"state": "failed", "reason": error.get("message")}),
                archive=True,
            )
        else:
            await self._end(outcome, error, self.previous)

    async def failed(
        self, exc: HearthError, *, unconfirmed: bool | None = None, outcome: str = "failed"
    ) -> None:
        """D8, unless the answer says that nothing changed."""
        if isinstance(exc, BackendFailure):
            for line in exc.logs:
                self.events.add(NewEvent(self.operation, self.working.slug, self.verb, "log", "error", line))
        if isinstance(exc, Conflict):  # the adapter's: name its reason from what it holds
            exc.data.setdefault(
                "reason",
                adapter_conflict_reason(exc.existing, self.working.tier, self.working.driver),
            )
        error = exc.to_json()
        if isinstance(exc, AdapterError) and changed_nothing(self.verb, exc.code, exc.data):
            await self.unchanged(outcome, error)
            return
        if unconfirmed is None:
            unconfirmed = failure_unconfirmed(
                answered=isinstance(exc, AdapterError), backend_lost=isinstance(exc, BackendUnavailable)
            )
        try:
            await self._end(
                outcome, error, self._failed(failure_reason(exc.message, unconfirmed), unconfirmed)
            )
        except StoreError:
            if isinstance(exc, StoreError):
                return  # the store is what failed: the record stays transient for reconcile
            raise

    async def timed_out(self, exc: CallTimeout) -> None:
        error = exc.to_json()
        how = after_timeout(self.verb, exc.rolled_back)
        if how == "settle_teardown":
            await self._settle_teardown("cancelled", f"timed out: {exc.message}", error)
        elif how == "unchanged":
            await self.unchanged("cancelled", error)
        else:
            await self._unconfirmed("cancelled", f"timed out: {exc.message}", error)

    async def cancelled(
        self, outcome: str, reason: str, interruption: Interruption, new_tier: str | None
    ) -> None:
        """The caller was cancelled: record what the adapter's answer (if any) says."""
        error = {"kind": "cancelled" if outcome == "cancelled" else "interrupted", "message": reason}
        failure = interruption.error
        how: CancelOutcome = after_cancel(
            self.verb,
            succeeded=interruption.succeeded,
            answered=interruption.answered,
            cancelled=isinstance(failure, Cancelled),
            data=failure.data if isinstance(failure, AdapterError) else {},
        )
        observed: str | None = None
        recorded: str | None = None
        if how == "succeeded":
            result = (
                None
                if self.verb == "teardown"
                else self.client._validated(DeploymentRef, interruption.result, self.verb)
            )
            await self.succeeded(result, new_tier)
        elif how == "unanswered":
            await self._unconfirmed(outcome, reason, error)
        elif how == "failed":
            assert failure is not None
            await self.failed(failure, outcome=outcome)
            after = await self.core.store.get(self.working.slug)
            recorded = None if after is None else after.state
        elif how == "settle_teardown":
            observed, recorded = await self._settle_teardown(outcome, reason, error)
        elif how == "rolled_back":
            await self.unchanged(
                outcome, {**error, "rolled_back": True, "message": f"{reason}; the adapter rolled back"}
            )
        else:
            await self._unconfirmed(outcome, reason, {**error, "rolled_back": False})
        self.notes.append(
            cancel_note(
                self.verb,
                self.working.slug,
                how,
                recorded=recorded,
                error_kind=None if failure is None else failure.kind,
                observed=observed,
                previous=None if self.previous is None else self.previous.state,
            )
        )

    async def _unconfirmed(self, outcome: str, reason: str, error: dict[str, Any]) -> None:
        await self._end(outcome, error, self._failed(unconfirmed_reason(self.verb, reason), True))

    def _failed(self, reason: str, unconfirmed: bool) -> Deployment:
        """The record a failed verb leaves (D8): its working record, failed, with why."""
        return self.working.model_copy(
            update={"state": "failed", "updated_at": utc_now(), "reason": reason, "unconfirmed": unconfirmed}
        )

    async def _settle_teardown(self, outcome: str, reason: str, error: dict[str, Any]) -> tuple[str, str]:
        """A cancelled teardown cannot be undone: record what the adapter's status shows;
        (what it observed, the state recorded)."""
        observed = "unknown"
        ref = self.working.ref or synthesized_ref(self.working)
        try:
            if self.client.alive:
                report = await self.client.status(ref, timeout=self.core.timeouts.status)
                observed = report.state
        except (HearthError, asyncio.CancelledError):
            observed = "unknown"
        resolution = resolve(self.working.state, observed, verb="teardown")
        if resolution is None:
            await self._unconfirmed(outcome, reason, error)
            return "an unknown state", "failed (not confirmed)"
        await self._end(
            outcome,
            error,
            self.working.model_copy(
                update={
                    "state": resolution.state,
                    "updated_at": utc_now(),
                    "unconfirmed": resolution.unconfirmed,
                    "reason": f"{reason}; {resolution.reason}" if resolution.reason else None,
                }
            ),
        )
        return observed, resolution.state
