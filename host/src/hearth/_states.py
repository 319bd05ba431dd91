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
from typing import Any, Literal

from hearth_adaptersdk import State, codes

from ._errors import InvalidTransition

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
    """The transition ``verb`` makes from ``state``; InvalidTransition naming the state if none."""
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
