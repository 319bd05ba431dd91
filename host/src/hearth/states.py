"""The deployment state machine of seed 000, as one explicit table (as h11 keeps its states).

    (none) ── provision ──▶ provisioning ──▶ ready | failed
    failed ── provision ──▶ provisioning ──▶ ready | failed      (an explicit re-run, D8)
    ready  ── upgrade ────▶ upgrading ─────▶ ready | failed
    ready  ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    failed ── teardown ───▶ tearing_down ──▶ tier_torn_down | failed
    tier_torn_down is terminal.

The host never retries a failed verb (decision D8); a person re-runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hearth_adaptersdk import State, codes

from .errors import InvalidTransition

Verb = Literal["provision", "upgrade", "teardown"]
TRANSIENT: frozenset[str] = frozenset({"provisioning", "upgrading", "tearing_down"})


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
    raise InvalidTransition(f"cannot {verb} workspace {slug!r}: it is {current}{hint}",
                            codes.INVALID_TRANSITION, {"kind": "invalid_transition", "state": current})
