"""Every lifecycle rule of the host, as plain tables and pure functions (as h11 keeps its states).

    (none) ── provision ──▶ provisioning ──▶ ready | failed
    failed ── provision ──▶ provisioning ──▶ ready | failed      (an explicit re-run, D8)
    ready  ── upgrade ────▶ upgrading ─────▶ ready | failed
    ready  ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    failed ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    tier_torn_down is terminal.

The host never retries a failed verb (decision D8); a person re-runs it. A verb whose
answer says that nothing changed (a refusal, a confirmed rollback) leaves the record as it
was: the rule "a record never lies" applies to refusals as much as to failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hearth_adaptersdk import State, codes

from ._errors import Conflict, InvalidTransition

if TYPE_CHECKING:
    from ._models import Deployment

Verb = Literal["provision", "upgrade", "teardown"]
TRANSIENT: frozenset[str] = frozenset({"provisioning", "upgrading", "tearing_down"})
#: States in which a record claims that the backend holds a workspace.
CLAIMS_BACKEND: frozenset[str] = frozenset({"ready", "upgrading", "provisioning", "tearing_down"})
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
    current = state or "absent"
    allowed = sorted(v for (s, v) in TRANSITIONS if s == state)
    hint = f"; from {current} you may {' or '.join(allowed)}" if allowed else ""
    raise InvalidTransition(
        f"cannot {verb} workspace {slug!r}: it is {current}{hint}",
        codes.INVALID_TRANSITION,
        {"kind": "invalid_transition", "state": current},
    )


def changed_nothing(verb: Verb, code: int | None, data: Mapping[str, Any]) -> bool:
    """Whether an adapter's error answer says that the backend is as it was before the verb.

    Refusals (-32602, -32020..-32023) change nothing by definition; a provision or upgrade
    that failed and says ``rolled_back: true`` undid its partial work. A teardown cannot be
    undone, so its failures always count as changes.
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
    if observed == "ready":
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
    provision; the tier of an upgrade); any teardown joins a running teardown."""
    if running[0] != asked[0]:
        return False
    if asked[0] == "teardown":
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


@dataclass(frozen=True)
class Plan:
    """What a verb will do: nothing (``transition`` None: the same ready workspace provisioned
    again, a torn-down one torn down again), or ``transition``; ``archive``: the torn-down record
    is archived first (a provision that reuses the slug)."""

    transition: Transition | None
    archive: bool = False

    @property
    def noop(self) -> bool:
        return self.transition is None


def plan(
    verb: Verb,
    recorded: Recorded | None,
    slug: str,
    *,
    tier: str | None = None,
    driver: str | None = None,
    reuse: bool = False,
) -> Plan:
    """The lifecycle rules for ``verb`` on a workspace recorded as ``recorded`` (None: none);
    raises the refusal (``invalid_transition`` naming the state, ``conflict`` for another tier or
    driver). A verb other than provision needs a record (the host says ``not_found`` first)."""
    if verb == "provision":
        if recorded is None:
            return Plan(transition(None, verb, slug))
        if recorded.state == "ready" and (recorded.tier, recorded.driver) == (tier, driver):
            return Plan(None)
        if recorded.state == "tier_torn_down":
            if not reuse:
                raise InvalidTransition(
                    f"workspace {slug!r} was torn down; teardown is final. To use the slug again, "
                    "ask to reuse it: the old record is archived",
                    codes.INVALID_TRANSITION,
                    {"kind": "invalid_transition", "state": recorded.state},
                )
            return Plan(transition(None, verb, slug), archive=True)
        if recorded.state in ("ready", "failed") and recorded.driver != driver:
            raise Conflict(
                f"workspace {slug!r} exists on driver {recorded.driver!r}; a workspace cannot move "
                "to another driver: tear it down, then provision it again, reusing the slug",
                codes.CONFLICT,
                {"kind": "conflict"},
            )
        if recorded.state in ("ready", "failed") and recorded.tier != tier:
            raise Conflict(
                f"workspace {slug!r} exists with tier {recorded.tier!r}; "
                + (
                    "use upgrade to change its tier"
                    if recorded.state == "ready"
                    else f"it is failed: provision it again with tier {recorded.tier!r}, or tear it down"
                ),
                codes.CONFLICT,
                {"kind": "conflict"},
            )
        return Plan(transition(recorded.state, verb, slug))
    assert recorded is not None, "only provision applies to a workspace without a record"
    if verb == "teardown" and recorded.state == "tier_torn_down":
        return Plan(None)
    return Plan(transition(recorded.state, verb, slug))


def same_ready(record: Deployment | None, tier: str, driver: str) -> bool:
    """A plain ``provision`` of a ready workspace with its own tier and driver returns its ref
    and records nothing (a start with a key, or ``start_provision``, records a no-op)."""
    return (
        record is not None
        and record.state == "ready"
        and record.ref is not None
        and (record.tier, record.driver) == (tier, driver)
    )


def teardown_done(record: Deployment | None) -> bool:
    """A plain ``teardown`` of a torn-down workspace does nothing and records nothing."""
    return record is not None and record.state == "tier_torn_down"
