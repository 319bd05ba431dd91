"""Which node a VM goes to, counting the deploys this adapter has in flight.

The service's ``list_slices`` is a snapshot: twelve provisions that each read it at once all see
the same free slices and would all pick the same node. So each deploy holds its slices on its node
from the moment the node is chosen until ``deploy_vm`` has answered, and a choice subtracts the
holds that its snapshot may not show yet: every hold still waiting for ``deploy_vm``, and every
hold whose ``deploy_vm`` answered after the snapshot was asked for. (From its answer on, the
service counts the VM in its own figures; a hold that landed before a snapshot was asked for is
in that snapshot already, and counting it again would leave slices unused.)

Choosing is synchronous: the snapshot is read, the node chosen and the hold taken with no
``await`` in between, so concurrent requests in this process cannot choose on the same figures.
When the service still refuses a node for want of room (capacity taken outside this adapter),
the deploy moves on to the next node that has room by fresh figures, or at least free slices by
the service's own count; so a deploy is refused in the end only when every node it could use is
full by the service's figures.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._compute import NodeSlices


@dataclass(eq=False)
class Hold:
    """Slices one deploy asked for on one node, not yet (or only lately) in the service's figures."""

    node: str
    slices: int
    #: The ledger's tick when ``deploy_vm`` answered; None while it has not.
    landed: int | None = None


class Ledger:
    """The holds of this adapter's deploys in flight, per node."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1)
        self._holds: list[Hold] = []
        self._open: set[int] = set()  # snapshots read but not yet chosen on

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """Bracket reading ``list_slices`` and choosing on it; yields the snapshot's tick."""
        tick = next(self._ticks)
        self._open.add(tick)
        try:
            yield tick
        finally:
            self._open.discard(tick)
            self._prune()

    def pending(self, node: str, snapshot: int) -> int:
        """Slices held on ``node`` that a snapshot taken at ``snapshot`` may not count."""
        return sum(
            hold.slices
            for hold in self._holds
            if hold.node == node and (hold.landed is None or hold.landed > snapshot)
        )

    def hold(self, node: str, slices: int) -> Hold:
        hold = Hold(node, slices)
        self._holds.append(hold)
        return hold

    def landed(self, hold: Hold) -> None:
        """``deploy_vm`` answered: the service counts these slices from now on."""
        hold.landed = next(self._ticks)
        self._prune()

    def release(self, hold: Hold) -> None:
        """``deploy_vm`` failed: nothing was taken on the node."""
        with contextlib.suppress(ValueError):
            self._holds.remove(hold)

    def _prune(self) -> None:
        """Drop the landed holds that no open snapshot predates."""
        oldest = min(self._open, default=None)
        self._holds = [
            hold
            for hold in self._holds
            if hold.landed is None or (oldest is not None and hold.landed > oldest)
        ]

    def __len__(self) -> int:
        return len(self._holds)


class Choice(NamedTuple):
    node: str
    slices: int
    #: "room": the node's free slices, less what is held on it, fit the VM; "maybe": only its
    #: free slices do (the holds may be counted already, or may fail); "full": not even those.
    verdict: Literal["room", "maybe", "full"]


def choose(
    nodes: Sequence[NodeSlices],
    slices_on: Callable[[NodeSlices], int],
    pending: Callable[[str], int],
    *,
    skip: set[str],
) -> Choice | None:
    """Where a VM goes, or None when no node is left that could ever hold it.

    The first node (by name) whose free slices, less what is held on it, fit the VM. When none
    does, the node with the most free slices to spare by the service's own figures: the holds
    may already be in those figures (a deploy that landed while they were read is counted as
    held, to be safe), so the service decides. Nodes in ``skip`` (they refused) are left out.
    """
    candidates = [
        (node, slices_on(node))
        for node in sorted(nodes, key=lambda n: n.node_sid)
        if node.node_sid not in skip
    ]
    candidates = [(node, slices) for node, slices in candidates if node.slices_total >= slices]
    for node, slices in candidates:
        if node.slices_free - pending(node.node_sid) >= slices:
            return Choice(node.node_sid, slices, "room")
    if not candidates:
        return None
    node, slices = max(candidates, key=lambda c: c[0].slices_free - c[1])
    return Choice(node.node_sid, slices, "maybe" if node.slices_free >= slices else "full")
