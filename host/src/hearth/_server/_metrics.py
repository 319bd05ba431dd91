"""The daemon's ``GET /metrics``: Prometheus' exposition format, written by prometheus-client.

``Metrics`` is an ``Observer`` of one host (``Host.observe``) with a registry of its own, never
the library's global one: two hosts in one process (the tests, an embedding program) each count
their own. Counters and histograms are what this daemon did since it started; the gauges are
read at scrape time: the operations it runs and the streams it serves from memory, the
workspaces by state and driver from the store in one grouped read (no adapter is asked), so
every replica on one PostgreSQL database reports the same.

Names and labels follow Prometheus' conventions (``_total``, ``_seconds``); every label has a
bounded set of values (verbs, drivers, outcomes, states), never a slug or an operation id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hearth_adaptersdk import State

from .._errors import HearthError
from .._lifecycle._host import Host
from .._models import ReconcileReport
from .._observe import Observer

log = logging.getLogger("hearth.serve")

#: Seconds: a provision takes from a second (the fake, a container) to many minutes (a VM).
OPERATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Seconds: a store call takes from a fraction of a millisecond (SQLite) to a network round trip
#: or a wait for the write lock.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: What a reconcile round finds (``ReconcileReport``), as ``kind`` labels.
FOUND = ("settled", "unconfirmed", "ghost", "orphan", "busy", "unreachable")
#: Every state a record can be in: the workspaces gauge says 0 for the ones no record has.
STATES: tuple[str, ...] = get_args(State)


def _found(report: ReconcileReport) -> dict[str, int]:
    return {
        "settled": len(report.resolved),
        "unconfirmed": len(report.unconfirmed),
        "ghost": len(report.ghosts),
        "orphan": len(report.orphans),
        "busy": len(report.busy),
        "unreachable": len(report.unreachable),
    }


class _Live(Collector):
    """The gauges read when scraped: this host's operations and streams now, and the counts of
    workspaces the scrape read from the store just before (None: it could not be read, and the
    family is left out rather than reported wrong)."""

    def __init__(self, host: Host, streams: Callable[[], int]) -> None:
        self.host = host
        self.streams = streams
        self.counts: list[tuple[str, str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(*_RUNNING)
        yield GaugeMetricFamily(*_STREAMS)
        yield GaugeMetricFamily(*_WORKSPACES, labels=["state", "driver"])

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(*_RUNNING, value=self.host.running)
        yield GaugeMetricFamily(*_STREAMS, value=self.streams())
        counts = self.counts
        if counts is None:
            return
        workspaces = GaugeMetricFamily(*_WORKSPACES, labels=["state", "driver"])
        have = {(state, driver): count for state, driver, count in counts}
        # a state this hearth does not know (a newer one wrote it) is counted, not dropped
        states = STATES + tuple(sorted({state for state, _ in have} - set(STATES)))
        for driver in sorted({driver for _, driver in have}):
            for state in states:
                workspaces.add_metric([state, driver], have.get((state, driver), 0))
        yield workspaces


_RUNNING = (
    "hearth_operations_running",
    "Operations this daemon runs now (queued for their slug's lock, or running).",
)
_STREAMS = (
    "hearth_event_streams",
    "Event streams (/v1/events, an operation's events) this daemon serves now.",
)
_WORKSPACES = ("hearth_workspaces", "Workspaces (current records) by state and driver, from the store.")


class Metrics(Observer):
    """One host's metrics, in a registry of their own; ``scrape`` answers ``/metrics``."""

    def __init__(self, host: Host, streams: Callable[[], int]) -> None:
        self.registry = registry = CollectorRegistry()
        self.started = Counter(
            "hearth_operations_started",
            "Operations this daemon started running, by verb and driver.",
            ["verb", "driver"],
            registry=registry,
        )
        self.finished = Counter(
            "hearth_operations_finished",
            "Operations this daemon ran that ended, by verb, driver and outcome (succeeded, "
            "failed, cancelled, interrupted; unrecorded when the store could not take the end).",
            ["verb", "driver", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "hearth_operation_duration_seconds",
            "How long the operations this daemon ran took, from their start to their end.",
            ["verb", "driver"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.adapter_starts = Counter(
            "hearth_adapter_starts",
            "Adapter processes started (spawned and through the handshake), by driver.",
            ["driver"],
            registry=registry,
        )
        self.adapter_crashes = Counter(
            "hearth_adapter_crashes",
            "Adapter sessions that ended unasked (the process exited, broke the protocol or "
            "was stuck), by driver.",
            ["driver"],
            registry=registry,
        )
        self.adapter_restarts = Counter(
            "hearth_adapter_restarts",
            "Adapter processes started again after the previous one crashed, by driver.",
            ["driver"],
            registry=registry,
        )
        self.rounds = Counter(
            "hearth_reconcile_rounds",
            "Reconcile rounds (not dry runs) this daemon ran, by outcome (completed, failed).",
            ["outcome"],
            registry=registry,
        )
        self.found = Counter(
            "hearth_reconcile_found",
            "What the completed reconcile rounds found, summed over the rounds, by kind.",
            ["kind"],
            registry=registry,
        )
        self.last_found = Gauge(
            "hearth_reconcile_last_found",
            "What the last completed reconcile round found, by kind.",
            ["kind"],
            registry=registry,
        )
        self.store = Histogram(
            "hearth_store_transaction_duration_seconds",
            "How long each call of the store (one read or one write transaction) took, by access.",
            ["access"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        for outcome in ("completed", "failed"):
            self.rounds.labels(outcome)
        for kind in FOUND:
            self.found.labels(kind)
            self.last_found.labels(kind)
        self._reads = self.store.labels("read")
        self._writes = self.store.labels("write")
        self._host = host
        self._live = _Live(host, streams)
        registry.register(self._live)

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when ``accept`` asks for it, else Prometheus' text
        format) and its content type. One store read: the workspaces by state and driver."""
        try:
            self._live.counts = await self._host.workspace_counts()
        except HearthError as exc:
            log.warning("/metrics: the workspaces could not be counted: %s", exc.message)
            self._live.counts = None
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # --- the observer ----------------------------------------------------------------------------
    def operation_started(self, verb: str, driver: str) -> None:
        self.started.labels(verb, driver).inc()

    def operation_finished(self, verb: str, driver: str, outcome: str, seconds: float) -> None:
        self.finished.labels(verb, driver, outcome).inc()
        self.duration.labels(verb, driver).observe(seconds)

    def adapter_started(self, driver: str) -> None:
        self.adapter_starts.labels(driver).inc()

    def adapter_crashed(self, driver: str) -> None:
        self.adapter_crashes.labels(driver).inc()

    def adapter_restarted(self, driver: str) -> None:
        self.adapter_restarts.labels(driver).inc()

    def reconciled(self, report: ReconcileReport | None) -> None:
        if report is None:
            self.rounds.labels("failed").inc()
            return
        self.rounds.labels("completed").inc()
        for kind, count in _found(report).items():
            self.found.labels(kind).inc(count)
            self.last_found.labels(kind).set(count)

    def store_call(self, write: bool, seconds: float) -> None:
        (self._writes if write else self._reads).observe(seconds)


__all__ = ["Metrics"]
