"""What a host tells whoever measures it: operations, adapter processes, reconcile rounds,
store calls.

The lifecycle, the supervisor and the store wrapper call an ``Observers`` (one per host); the
daemon adds its Prometheus metrics to it (``_server._metrics``). It lives this low, on the
standard library and the models alone, so that every layer may call it and ``Host`` never needs
prometheus-client (the ``serve`` extra) to run.
"""

from __future__ import annotations

from ._models import ReconcileReport

#: What ends an operation this host ran: its recorded state, or ``unrecorded`` when its end
#: could not be written (heal or reconcile ends it later).
Outcome = str


class Observer:
    """Every hook does nothing: a subclass overrides the ones it measures. Each is called on
    the host's event loop, and must be quick and never raise (it runs inside the work)."""

    def operation_started(self, verb: str, driver: str) -> None:
        """This host started running an operation (recorded queued, its task launched)."""

    def operation_finished(self, verb: str, driver: str, outcome: Outcome, seconds: float) -> None:
        """An operation this host ran ended, ``seconds`` after it started."""

    def adapter_started(self, driver: str) -> None:
        """An adapter process was started and answered its handshake."""

    def adapter_crashed(self, driver: str) -> None:
        """An adapter's session ended unasked: it exited, broke the protocol or was stuck."""

    def adapter_restarted(self, driver: str) -> None:
        """An adapter was started again after its previous process crashed."""

    def reconciled(self, report: ReconcileReport | None) -> None:
        """A reconcile round (not a dry run) ended: what it found, or None when it failed."""

    def store_call(self, write: bool, seconds: float) -> None:
        """One call of the store (a read or a write transaction) took ``seconds``."""


class Observers(Observer):
    """The host's observers, each told of everything (none by default: nothing is measured)."""

    def __init__(self) -> None:
        self._each: list[Observer] = []

    def add(self, observer: Observer) -> None:
        self._each.append(observer)

    def operation_started(self, verb: str, driver: str) -> None:
        for each in self._each:
            each.operation_started(verb, driver)

    def operation_finished(self, verb: str, driver: str, outcome: Outcome, seconds: float) -> None:
        for each in self._each:
            each.operation_finished(verb, driver, outcome, seconds)

    def adapter_started(self, driver: str) -> None:
        for each in self._each:
            each.adapter_started(driver)

    def adapter_crashed(self, driver: str) -> None:
        for each in self._each:
            each.adapter_crashed(driver)

    def adapter_restarted(self, driver: str) -> None:
        for each in self._each:
            each.adapter_restarted(driver)

    def reconciled(self, report: ReconcileReport | None) -> None:
        for each in self._each:
            each.reconciled(report)

    def store_call(self, write: bool, seconds: float) -> None:
        for each in self._each:
            each.store_call(write, seconds)


__all__ = ["Observer", "Observers", "Outcome"]
