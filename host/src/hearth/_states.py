"""Every lifecycle rule of the host, as plain tables and pure functions (as h11 keeps its states).

    (none) ── provision ──▶ provisioning ──▶ ready | failed
    failed ── provision ──▶ provisioning ──▶ ready | failed      (an explicit re-run, D8)
    ready  ── upgrade ────▶ upgrading ─────▶ ready | failed
    ready  ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    failed ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    ready  ── stop ───────▶ stopping ──────▶ stopped | failed       (protocol 1.3)
    stopped ─ start ──────▶ starting ──────▶ ready | failed
    stopped ─ teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    tier_torn_down is terminal.

A stop of a stopped workspace, and a start of a ready one, do nothing (as a teardown of a torn
down one). An upgrade of a stopped workspace is refused: start it first (an upgrade needs the
backend running to move it, and a stopped workspace upgraded would be ready or stopped by guess).

The host never retries a failed verb (decision D8); a person re-runs it. A verb whose
answer says that nothing changed (a refusal, a confirmed rollback) leaves the record as it
was: the rule "a record never lies" applies to refusals as much as to failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from hearth_adaptersdk import DeploymentRef, State, codes

from ._errors import Conflict, InvalidTransition, Unsupported

if TYPE_CHECKING:
    from ._models import Deployment

Verb = Literal["provision", "upgrade", "teardown", "stop", "start"]
#: The verbs a driver serves only when it announces them (protocol 1.3): the host calls them only
#: when both are announced.
OPTIONAL_VERBS: frozenset[str] = frozenset({"stop", "start"})
TRANSIENT: frozenset[str] = frozenset({"provisioning", "upgrading", "tearing_down", "stopping", "starting"})
#: Every state a record can be in.
STATES: frozenset[str] = frozenset(get_args(State))
#: The verb whose operation leaves a record in each transient state.
VERB_OF: dict[str, Verb] = {
    "provisioning": "provision",
    "upgrading": "upgrade",
    "tearing_down": "teardown",
    "stopping": "stop",
    "starting": "start",
}
#: States in which a record claims that the backend holds a workspace.
CLAIMS_BACKEND: frozenset[str] = frozenset(
    {"ready", "upgrading", "provisioning", "tearing_down", "stopping", "stopped", "starting"}
)
#: The settled states a backend can move between without hearth (someone ran ``docker stop``):
#: a record in one whose backend shows the other has drifted, and reconcile settles it.
RUN_STATES: frozenset[str] = frozenset({"ready", "stopped"})
#: Error codes whose answer says the adapter changed nothing (a refusal before any work).
REFUSAL_CODES: frozenset[int] = frozenset(
    {
        codes.INVALID_PARAMS,
        codes.CONFLICT,
        codes.INVALID_TRANSITION,
        codes.UNSUPPORTED,
        codes.INVALID_PROFILE,
    }
)


@dataclass(frozen=True)
class Transition:
    during: State
    on_success: State
    on_failure: State


TRANSITIONS: dict[tuple[State | None, Verb], Transition] = {
    (None, "provision"): Transition("provisioning", "ready", "failed"),
    ("failed", "provision"): Transition("provisioning", "ready", "failed"),
    ("ready", "upgrade"): Transition("upgrading", "ready", "failed"),
    ("ready", "teardown"): Transition("tearing_down", "tier_torn_down", "failed"),
    ("failed", "teardown"): Transition("tearing_down", "tier_torn_down", "failed"),
    ("ready", "stop"): Transition("stopping", "stopped", "failed"),
    ("stopped", "start"): Transition("starting", "ready", "failed"),
    ("stopped", "teardown"): Transition("tearing_down", "tier_torn_down", "failed"),
}


def transition(state: State | None, verb: Verb, slug: str) -> Transition:
    """The transition ``verb`` makes from ``state``; InvalidTransition naming the state if none
    (a transient state is refused: the host settles a record a dead host left before it asks)."""
    if state in TRANSIENT:
        raise InvalidTransition(
            f"cannot {verb} workspace {slug!r}: it is {state}; a hearth process stopped in the "
            "middle of it and its backend could not be asked; reconcile resolves it from the backend",
            codes.INVALID_TRANSITION,
            {"kind": "invalid_transition", "state": state},
        )
    found = TRANSITIONS.get((state, verb))
    if found is not None:
        return found
    if state == "stopped" and verb == "upgrade":
        raise InvalidTransition(
            f"cannot upgrade workspace {slug!r}: it is stopped; start it first "
            f"(hearth start {slug}), then upgrade it",
            codes.INVALID_TRANSITION,
            {"kind": "invalid_transition", "state": state},
        )
    current = state or "absent"
    allowed = sorted(v for (s, v) in TRANSITIONS if s == state)
    hint = f"; from {current} you may {' or '.join(allowed)}" if allowed else ""
    raise InvalidTransition(
        f"cannot {verb} workspace {slug!r}: it is {current}{hint}",
        codes.INVALID_TRANSITION,
        {"kind": "invalid_transition", "state": current},
    )


def unsupported_verb(verb: str, driver: str) -> Unsupported:
    """The refusal of a stop or start on a driver whose adapter does not announce it (it cannot
    stop without losing the disk, or predates protocol 1.3): ``unsupported``, naming the driver."""
    return Unsupported(
        f"driver {driver!r} cannot {verb} a workspace: its adapter does not announce {verb} "
        "(protocol 1.3); tear the workspace down instead, or keep it running",
        codes.UNSUPPORTED,
        {"kind": "unsupported", "reason": f"{verb} is not announced", "method": verb, "driver": driver},
    )


def changed_nothing(verb: Verb, code: int | None, data: Mapping[str, Any]) -> bool:
    """Whether an adapter's error answer says that the backend is as it was before the verb.

    Refusals (-32602, -32020..-32023) change nothing by definition; a provision, upgrade, stop
    or start that failed and says ``rolled_back: true`` undid its partial work. A teardown cannot
    be undone, so its failures always count as changes.
    """
    if code in REFUSAL_CODES:
        return True
    return verb != "teardown" and code == codes.BACKEND_FAILURE and data.get("rolled_back") is True


def cancel_rolled_back(verb: Verb, answered: bool, data: Mapping[str, Any]) -> bool:
    """Whether a cancelled verb's answer confirms that its partial work was undone.

    The protocol has the adapter roll back before it answers -32800, so an answer counts as
    a confirmation unless it says ``rolled_back: false``; no answer confirms nothing. A
    teardown is never undone.
    """
    return verb != "teardown" and answered and data.get("rolled_back", True) is not False


@dataclass(frozen=True)
class Resolution:
    """What reconcile records for a workspace, from what the adapter observes."""

    state: State
    reason: str | None
    #: The backend has not settled yet: reconcile looks again next time.
    unconfirmed: bool = False


def resolve(recorded: State, observed: str, *, verb: str | None = None) -> Resolution | None:
    """Reconcile's mapping from (recorded, observed) to the record to keep; None: no change.

    ``verb`` names the operation that left the record uncertain (an interrupted or
    unconfirmed one); without it the record is settled and only a ghost changes it. An
    ``unknown`` observation never changes a record.
    """
    if observed == "unknown":
        return None
    if verb is None:
        if recorded in CLAIMS_BACKEND and observed == "absent":
            return Resolution("failed", "ghost: the backend has no trace of this workspace")
        if recorded in RUN_STATES and observed in RUN_STATES and observed != recorded:
            now: State = "ready" if observed == "ready" else "stopped"
            how = "started" if now == "ready" else "stopped"
            why = f"drift: recorded {recorded}, but the backend is {now} ({how} outside hearth)"
            return Resolution(now, why)
        return None
    if observed == "absent":
        if verb == "teardown":
            return Resolution("tier_torn_down", None)
        return Resolution(
            "failed", f"{verb} interrupted; the backend has no trace of it (nothing is left running)"
        )
    if observed in TRANSIENT:
        return Resolution(
            "failed",
            f"{verb} interrupted; the backend is still {observed}: "
            "reconcile looks again (if it stays so, tear the workspace down)",
            unconfirmed=True,
        )
    if observed == "stopped":
        if verb == "stop":
            return Resolution("stopped", None)
        if verb == "start":
            return Resolution("stopped", "start interrupted; the backend is still stopped: start it again")
        if verb == "teardown":
            return Resolution("stopped", "teardown interrupted; the backend still holds it, stopped")
        return Resolution("failed", f"{verb} interrupted; the backend shows stopped")
    if observed == "ready":
        if verb == "stop":
            return Resolution("ready", "stop interrupted; the backend still serves: stop it again")
        if verb == "teardown":
            return Resolution("ready", "teardown interrupted; the backend still serves")
        if verb == "upgrade":
            return Resolution(
                "ready",
                "upgrade interrupted; the backend serves, but the tier it "
                "runs may be the old one: run the upgrade again",
            )
        return Resolution("ready", None)
    if observed == "tier_torn_down":
        return Resolution("tier_torn_down", None)
    return Resolution("failed", f"{verb} interrupted; the backend shows {observed}")


#: What a start is asked to do: (verb, tier, driver, reuse).
Ask = tuple[str, str | None, str | None, bool]


def joins(running: Ask, asked: Ask) -> bool:
    """Whether a start joins the operation running on its slug rather than being refused
    ``busy``: the same verb with the same arguments (the tier, driver and reuse of a
    provision; the tier of an upgrade); any teardown, stop or start joins a running one of its
    own verb."""
    if running[0] != asked[0]:
        return False
    if asked[0] in ("teardown", "stop", "start"):
        return True
    if asked[0] == "upgrade":
        return running[1] == asked[1]
    return running[1:] == asked[1:]


@dataclass(frozen=True)
class Recorded:
    """What the rules need of a workspace's record."""

    state: State
    tier: str
    driver: str


#: (verb, state) with nothing to do: a second teardown, stop or start (each is idempotent).
NOTHING_TO_DO: frozenset[tuple[str, str]] = frozenset(
    {("teardown", "tier_torn_down"), ("stop", "stopped"), ("start", "ready")}
)


@dataclass(frozen=True)
class Rules:
    """What a verb will do: nothing (``transition`` None: the same ready workspace provisioned
    again, a torn-down one torn down again), or ``transition``; ``archive``: the torn-down record
    is archived first (a provision that reuses the slug)."""

    transition: Transition | None
    archive: bool = False

    @property
    def noop(self) -> bool:
        return self.transition is None


def rules(
    verb: Verb,
    recorded: Recorded | None,
    slug: str,
    *,
    tier: str | None = None,
    driver: str | None = None,
    reuse: bool = False,
) -> Rules:
    """The lifecycle rules for ``verb`` on a workspace recorded as ``recorded`` (None: none);
    raises the refusal (``invalid_transition`` naming the state, ``conflict`` for another tier or
    driver). A verb other than provision needs a record (the host says ``not_found`` first)."""
    if verb == "provision":
        if recorded is None:
            return Rules(transition(None, verb, slug))
        if recorded.state == "ready" and (recorded.tier, recorded.driver) == (tier, driver):
            return Rules(None)
        if recorded.state == "tier_torn_down":
            if not reuse:
                raise InvalidTransition(
                    f"workspace {slug!r} was torn down; teardown is final. To use the slug again, "
                    "ask to reuse it: the old record is archived",
                    codes.INVALID_TRANSITION,
                    {"kind": "invalid_transition", "state": recorded.state},
                )
            return Rules(transition(None, verb, slug), archive=True)
        if recorded.state in ("ready", "failed") and recorded.driver != driver:
            raise _moved(slug, recorded.driver)
        if recorded.state in ("ready", "failed") and recorded.tier != tier:
            raise conflict(
                "other_tier",
                f"workspace {slug!r} exists with tier {recorded.tier!r}; "
                + (
                    "use upgrade to change its tier"
                    if recorded.state == "ready"
                    else f"it is failed: provision it again with tier {recorded.tier!r}, or tear it down"
                ),
            )
        return Rules(transition(recorded.state, verb, slug))
    assert recorded is not None, "only provision applies to a workspace without a record"
    if (verb, recorded.state) in NOTHING_TO_DO:
        return Rules(None)
    return Rules(transition(recorded.state, verb, slug))


def same_ready(record: Deployment | None, tier: str, driver: str) -> bool:
    """A plain ``provision`` of a ready workspace with its own tier and driver returns its ref
    and records nothing (a start with a key, or ``start_provision``, records nothing either: it
    answers the operation that made the workspace, ``noop_answer``)."""
    return (
        record is not None
        and record.state == "ready"
        and record.ref is not None
        and (record.tier, record.driver) == (tier, driver)
    )


def teardown_done(record: Deployment | None) -> bool:
    """A plain ``teardown`` of a torn-down workspace does nothing and records nothing."""
    return record is not None and record.state == "tier_torn_down"


# --- what a verb's answer leaves (``_lifecycle._outcome``) --------------------------------------
#: What a failure adds to the record's reason when what the backend holds is not confirmed.
NOT_CONFIRMED = "; what the backend holds is not confirmed: reconcile checks it"


def failure_unconfirmed(*, answered: bool, backend_lost: bool) -> bool:
    """Whether a failed verb leaves what the backend holds unconfirmed: the adapter did not
    answer with an error of its own (it died, or broke the protocol), or it lost its backend."""
    return not answered or backend_lost


def failure_reason(message: str, unconfirmed: bool) -> str:
    """The reason a failed record keeps."""
    return message + (NOT_CONFIRMED if unconfirmed else "")


def unconfirmed_reason(verb: Verb, reason: str) -> str:
    """The reason of a record whose cancel or timeout was not confirmed by the adapter."""
    what = "rollback not confirmed" if verb != "teardown" else "teardown not confirmed"
    reason = reason.replace("; the rollback is not confirmed", "")
    return f"{reason}; {what}: the backend may still hold resources; reconcile checks it"


#: What a timed-out verb records: what the backend shows (a teardown cannot be undone), the
#: record as it was (a confirmed rollback), or a record not confirmed.
TimeoutOutcome = Literal["settle_teardown", "unchanged", "unconfirmed"]


def after_timeout(verb: Verb, rolled_back: bool | None) -> TimeoutOutcome:
    """``rolled_back``: the adapter's answer to the cancel the timeout sent (None: no answer)."""
    if verb == "teardown" and rolled_back is not None:
        return "settle_teardown"
    return "unchanged" if rolled_back else "unconfirmed"


#: What became of a cancelled verb: it had finished (``succeeded``), the adapter never answered
#: the cancel (``unanswered``), it answered another error (``failed``), a teardown was stopped
#: (``settle_teardown``: what the backend shows is recorded), it rolled back or it could not.
CancelOutcome = Literal[
    "succeeded", "unanswered", "failed", "settle_teardown", "rolled_back", "not_rolled_back"
]


def after_cancel(
    verb: Verb, *, succeeded: bool, answered: bool, cancelled: bool, data: Mapping[str, Any]
) -> CancelOutcome:
    """What a cancelled verb records, from the adapter's answer to the cancel: ``succeeded``
    (it finished first), ``answered`` at all, with ``cancelled`` (-32800) and its ``data``."""
    if succeeded:
        return "succeeded"
    if not answered:
        return "unanswered"
    if not cancelled:
        return "failed"
    if verb == "teardown":
        return "settle_teardown"
    return "rolled_back" if cancel_rolled_back(verb, True, data) else "not_rolled_back"


def cancel_outcome_recorded(
    operation_state: str, verb: str, *, unconfirmed: bool, error: Mapping[str, Any]
) -> CancelOutcome:
    """The same outcome read back from what was recorded (a client of a daemon that cancelled
    an operation there): the operation's state and error, the record's ``unconfirmed``."""
    if operation_state == "succeeded":
        return "succeeded"
    if unconfirmed:
        return "unanswered"
    if verb == "teardown":
        return "settle_teardown"
    if error.get("kind") not in ("cancelled", "interrupted"):
        return "failed"
    return "not_rolled_back" if error.get("rolled_back") is False else "rolled_back"


def cancel_note(
    verb: str,
    slug: str,
    how: CancelOutcome,
    *,
    recorded: str | None = None,
    error_kind: str | None = None,
    observed: str | None = None,
    previous: str | None = None,
) -> str:
    """The line that says what became of cancelled work (``Host.interruptions``, the CLI's
    last line on Ctrl-C), in the same words for a host and a daemon's client."""
    note = f"{verb} of {slug!r}"
    state = recorded if recorded is not None else "nowhere (nothing changed)"
    if how == "succeeded":
        return f"{note} had finished before the cancel took effect; it is recorded as done"
    if how == "unanswered":
        return f"{note} was told to cancel; its rollback is not confirmed (reconcile checks it)"
    if how == "failed":
        return (
            f"{note} was cancelled and the adapter answered with an error ({error_kind}); "
            f"the workspace is recorded {state}"
        )
    if how == "settle_teardown":
        seen = "" if observed is None else f"; the backend shows {observed},"
        return f"{note} was cancelled{seen or ';'} the workspace is recorded {state}"
    if how == "rolled_back":
        return f"{note} was cancelled and rolled back" + (
            "" if previous is None else f"; the workspace is {previous} as before"
        )
    return f"{note} was cancelled; the adapter could not confirm its rollback (reconcile checks it)"


# --- admission (``_lifecycle._admission``) ------------------------------------------------------
#: What a keyed start asked for: (slug, verb, tier, driver).
Keyed = tuple[str, str, str | None, str | None]


def same_key(used: Keyed, asked: Keyed) -> bool:
    """Whether a start whose idempotency key was used before asks for the same thing: the same
    (slug, verb), and for a provision or upgrade the same (tier, driver)."""
    return used[:2] == asked[:2] and (asked[1] in ("teardown", "stop", "start") or used[2:] == asked[2:])


def binds_key(key: str | None, operation_key: str | None) -> bool:
    """Whether a start that joined an operation (or found nothing to do and answered the
    operation that made the workspace what it is) binds its idempotency key to that operation:
    whenever it has a key other than the operation's own. The binding is for good, as the key
    that started an operation is: a replay of the key answers that operation, whatever its state
    (cancelled, failed), and never starts work; had the key been forgotten, the replay of a
    cancelled join would start the work again."""
    return key is not None and key != operation_key


def key_released(state: str, error: Mapping[str, Any] | None) -> bool:
    """Whether a used idempotency key is given up to a retry rather than answering with its
    operation: the operation's start failed on a store write (``failed``, ``store_error``,
    ``changed_nothing``), so no work ran and nothing was changed; answering the dead operation
    again would make the key useless for the retry a failed write asks for. Any other finished
    operation, and one still queued or running, keeps its key. A key that joined the operation
    (``binds_key``) is released by the same rule: its caller was answered the same failure, for
    the same work that never ran, and its retry asks for that work as the starter's does."""
    return (
        state == "failed"
        and error is not None
        and error.get("kind") == "store_error"
        and error.get("changed_nothing") is True
    )


def start_not_recorded(reason: str) -> dict[str, Any]:
    """The error of an operation whose start failed on a store write after it was recorded
    queued (``reason``: the store's error): nothing reached the adapter, so nothing changed, and
    its key is released (``key_released``)."""
    return {
        "kind": "store_error",
        "message": f"a store write failed: {reason}; nothing was changed",
        "changed_nothing": True,
    }


#: How an operation whose owner has no live work ends: its state and error.
DeadEnd = tuple[Literal["failed", "interrupted"], dict[str, Any]]


def dead_owner_end(state: str, *, own: bool, shared: bool, owner: str | None, finder: str) -> DeadEnd:
    """How ``finder`` ends a queued or running operation (``state``) whose owner has no live work.

    Another host's operation: its host stopped (or, on a shared store, held no lease), so it is
    ``interrupted``. This host's own operation with no work in this host: the process lives, so
    its work ended without its outcome being written: a store write failed. Still ``queued``, it
    never reached the adapter (``begin`` is written first): ``failed``, ``changed_nothing``, like a
    start that failed (its key is released). ``running``: what the adapter did is unknown, so it
    is ``interrupted`` as any running operation with no host, and its record is settled from the
    adapter's status.
    """
    if own and state == "queued":
        return "failed", {
            "kind": "store_error",
            "message": "its start was not recorded: a store write failed; nothing was changed",
            "changed_nothing": True,
        }
    if own:
        how = (
            "its outcome was not recorded: a store write failed while it ran; what the backend "
            "holds is settled from the adapter's status"
        )
    elif shared:
        how = (
            f"its host {owner} held no lease (it stopped, or lost touch with the "
            f"database); taken over by {finder}"
        )
    else:
        how = "the hearth process running it stopped before it finished"
    return "interrupted", {"kind": "interrupted", "message": how}


def final_event_waits(was: str, record: tuple[str, int] | None, generation: int) -> bool:
    """Whether an operation that ends with no record to write (``was``: its state before) has
    its final event written later, by the write that settles its record: it began (``running``)
    and left its generation's record (``record``: state, generation) transient. Its final event
    carries the record's state after its outcome and nothing of it follows that event, so it
    waits for the settle (heal, reconcile, takeover) to know that state."""
    return was == "running" and record is not None and record[0] in TRANSIENT and record[1] == generation


def settled_note(owner: str, was: str, now: str, reason: str | None) -> str:
    """The line a settle adds to the log of the operation that left the record transient."""
    why = f" ({reason})" if reason else ""
    return f"settled by {owner} from the adapter's status: the record went from {was} to {now}{why}"


#: The verbs whose success leaves a record in each state a start can find with nothing to do.
MADE_BY: dict[str, frozenset[str]] = {
    "ready": frozenset({"provision", "upgrade", "adopt", "start"}),
    "tier_torn_down": frozenset({"teardown"}),
    "stopped": frozenset({"stop"}),
}


def noop_answer(state: str, generation: int, succeeded: Sequence[tuple[int, int, str]]) -> int | None:
    """The operation a start with nothing to do answers (a provision of a ready workspace with
    its own tier and driver, a teardown of a torn-down one), from the slug's ``succeeded``
    operations as (id, generation, verb), by id. Such a start records nothing: it answers the
    last operation that succeeded on the record's generation with a verb that leaves it
    ``state`` (the one that made the workspace what it is), finished; a new operation each time
    would fill the history with work that never ran. None when no operation made it so
    (reconcile settled it): then a finished no-op is recorded, as before."""
    verbs = MADE_BY.get(state, frozenset())
    found = [ident for ident, gen, verb in succeeded if gen == generation and verb in verbs]
    return max(found) if found else None


def answers_noop(key: str | None, made: Keyed, asked: Keyed) -> bool:
    """Whether the operation that made the workspace (``noop_answer``; ``made``: what it did)
    answers a start with nothing to do (``asked``): always without a key; with one, only when
    the key can be bound to it (``same_key``), else a replay would be a ``conflict`` with what
    the key first asked for (an upgrade made it, a keyed provision asks): then a finished no-op
    of its own keeps the key."""
    return key is None or same_key(made, asked)


def cancel_refused(ident: int, state: str) -> InvalidTransition | None:
    """The refusal of a cancel of operation ``ident``, now ``state``: a finished operation has
    nothing left to cancel (``invalid_transition`` naming its state), where an answer as if the
    cancel were asked would tell the caller something may still change; None while it is
    queued or running."""
    if state not in ("succeeded", "failed", "cancelled", "interrupted"):
        return None
    return InvalidTransition(
        f"operation #{ident} is {state}: a finished operation cannot be cancelled",
        codes.INVALID_TRANSITION,
        {"kind": "invalid_transition", "state": state, "operation": ident},
    )


def busy_message(slug: str, operation: int, verb: str, tier: str | None, state: str) -> str:
    """Why a start (or adopt, forget, plan) is refused ``busy``."""
    to = f" to {tier}" if verb == "upgrade" and tier is not None else ""
    return f"workspace {slug!r} is busy: operation #{operation} ({verb}{to}) is {state}"


def preview_verb(recorded: Recorded | None, slug: str, driver: str) -> Verb:
    """The verb ``Host.plan`` previews: a provision for a new, failed or torn-down workspace,
    else an upgrade, which cannot move a workspace to another driver."""
    if recorded is None or recorded.state in ("failed", "tier_torn_down"):
        return "provision"
    if recorded.driver != driver:
        raise _moved(slug, recorded.driver)
    return "upgrade"


def _moved(slug: str, driver: str) -> Conflict:
    return conflict(
        "other_driver",
        f"workspace {slug!r} exists on driver {driver!r}; a workspace cannot move "
        "to another driver: tear it down, then provision it again, reusing the slug",
    )


# --- conflicts: each refusal's reason (``_errors.CONFLICT_REASONS``) -----------------------------
#: Why a request conflicts with what exists (``Conflict.reason``, ``conflict.reason`` on the wire).
ConflictReason = Literal["key_reused", "other_tier", "other_driver", "recorded", "backend"]


def conflict(reason: ConflictReason, message: str, **data: Any) -> Conflict:
    """A ``conflict`` refusal, with its ``reason`` and its own data (``existing``, ``operation``)."""
    return Conflict(message, codes.CONFLICT, {"kind": "conflict", "reason": reason, **data})


def key_reused(key: str, operation: int, verb: str, slug: str) -> Conflict:
    """An idempotency key (``key``, as shown) already used for ``operation`` (a ``verb`` of
    ``slug``) with other arguments: ``key_reused``, naming that operation."""
    return conflict(
        "key_reused",
        f"the idempotency key {key} was used for operation #{operation} ({verb} of {slug!r}) "
        "with other arguments",
        operation=operation,
    )


def adopt_recorded(slug: str, state: str, driver: str) -> Conflict | None:
    """Adopt of a slug recorded ``state`` on ``driver``: refused ``recorded`` unless the record
    is torn down (its slug can take a deployment without one); None when it may go on."""
    if state == "tier_torn_down":
        return None
    return conflict(
        "recorded",
        f"workspace {slug!r} already has a record ({state} on {driver!r}); "
        "only a deployment without one can be adopted",
    )


def adopt_other_tier(slug: str, found: str | None, tier: str) -> Conflict | None:
    """Adopt with ``tier`` of a deployment that runs ``found`` (None: it does not say):
    refused ``other_tier`` when they differ."""
    if not found or found == tier:
        return None
    return conflict(
        "other_tier", f"the deployment {slug!r} runs tier {found!r}, not {tier!r}; adopt it with that tier"
    )


def adapter_conflict_reason(
    existing: DeploymentRef | None, tier: str | None, driver: str | None
) -> ConflictReason:
    """The reason of an adapter's ``conflict`` that names none, from what its ``existing``
    holds against what was asked: another driver, another tier, else ``backend``."""
    if existing is not None and driver and existing.driver != driver:
        return "other_driver"
    if existing is not None and tier and existing.tier != tier:
        return "other_tier"
    return "backend"


# --- settling a record from what the backend shows (``_lifecycle._reconcile``) ------------------
def needs_status(state: str, unconfirmed: bool, *, listed: bool, listed_state: str | None = None) -> bool:
    """Whether reconcile asks the adapter about a record: not when its ``list`` shows it and
    nothing about the record is uncertain. A listed ``last_status`` (``listed_state``) of ready
    for a stopped record, or the reverse, is drift: asked about, then settled."""
    if state in RUN_STATES and listed_state in RUN_STATES and listed_state != state:
        return True
    return not (listed and state not in TRANSIENT and not unconfirmed)


def uncertain_verb(state: str, unconfirmed: bool, last_verb: str | None) -> str | None:
    """The verb that left a record uncertain: the one its transient state names, or for a
    record not confirmed its last operation's (a provision if none); None for a settled one."""
    if state in TRANSIENT:
        return VERB_OF[state]
    if unconfirmed:
        return last_verb or "provision"
    return None


def resolution_note(old: str, new: str, *, unconfirmed: bool) -> str:
    """What became of a record reconcile resolved (``hearth reconcile``'s lines, the daemon's
    log): ``old`` and ``new`` states, and whether it is recorded *not confirmed*."""
    moved = f"{old} -> {new}" if old != new else old
    if unconfirmed:
        return f"{moved}, not confirmed: the backend has not settled (reconcile looks again)"
    return moved if old != new else f"{old}, now confirmed"


@dataclass(frozen=True)
class Settlement:
    """What a record becomes when settled; ``tier``: the tier the adapter says it serves."""

    state: State
    reason: str | None
    unconfirmed: bool
    tier: str | None = None


def settlement(
    recorded: State,
    reason: str | None,
    unconfirmed: bool,
    *,
    observed: str,
    verb: str | None,
    backend_id: str | None,
    served_tier: object = None,
) -> Settlement | None:
    """The record to keep from what the backend shows (``resolve``), or None when that is what
    is recorded already (a second reconcile changes nothing). A failure names the backend id the
    adapter reported while it worked; an interrupted upgrade that the adapter says serves a
    tier (``served_tier``, from its status details) takes that tier.

    "Nothing new" compares the record as it would be written (its reason with the backend id)
    with the record as it is: a backend that stays transient is settled "failed, not confirmed"
    once, and the runs after that leave it alone (and report nothing) while it shows the same.
    """
    resolution = resolve(recorded, observed, verb=verb)
    if resolution is None:
        return None
    why = resolution.reason
    if why and backend_id and resolution.state != "ready":
        why += f" (its backend id, reported while it worked: {backend_id})"
    if verb == "upgrade" and observed == "ready" and isinstance(served_tier, str) and served_tier:
        found = Settlement(resolution.state, None, resolution.unconfirmed, served_tier)
    else:
        found = Settlement(resolution.state, why, resolution.unconfirmed)
    if (found.state, found.reason, found.unconfirmed) == (recorded, reason, unconfirmed):
        return None
    return found


# --- autostop (README "Autostop") ----------------------------------------------------------------
#: Who the autostop sweep's operations are asked by (``Operation.actor``).
AUTOSTOP_ACTOR = "hearth:autostop"


def activity_of(record: Deployment) -> datetime:
    """When ``record`` last saw activity: its ``last_activity``, else (a record no hearth with
    autostop wrote yet) its last write."""
    return record.last_activity or record.updated_at


def autostop_at(record: Deployment, autostop: float | None) -> datetime | None:
    """When the sweep will stop ``record``: only a ready workspace on a tier with ``autostop``
    is ever stopped by it (a failed, stopped or transient one is left as it is)."""
    if autostop is None or record.state != "ready":
        return None
    return activity_of(record) + timedelta(seconds=autostop)


def autostop_due(record: Deployment, autostop: float | None, now: datetime) -> bool:
    """Whether the sweep stops ``record`` now (an operation running on it aside: never then)."""
    at = autostop_at(record, autostop)
    return at is not None and at <= now


def autostop_reason(record: Deployment, autostop: float) -> str:
    """What the autostop's operation logs: why it stopped the workspace."""
    since = activity_of(record).astimezone(UTC).isoformat(timespec="seconds")
    return f"no activity since {since}, autostop {autostop:g} s"


def still_idle(record: Deployment | None, seen: datetime) -> bool:
    """Whether an autostop read as idle since ``seen`` may still go on, its slug held: the
    record is ready and no activity came since (a touch withdraws it)."""
    return record is not None and record.state == "ready" and activity_of(record) == seen


def withdrawn_message(slug: str, seen: datetime) -> str:
    """An autostop that found activity it had not seen (or a changed record): nothing done."""
    return (
        f"autostop of {slug!r} withdrawn: activity after {seen.isoformat(timespec='seconds')} "
        "(or a change of the workspace) came before it began; nothing was done"
    )


def reported_activity(details: Mapping[str, Any] | None, now: datetime) -> datetime | None:
    """The backend activity an adapter's ``status`` reports (``details.last_activity``, an ISO
    8601 time with its offset), never later than ``now``; None when absent or unreadable (a
    guess is never counted)."""
    value = (details or {}).get("last_activity")
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return min(at, now)
