"""The lifecycle: ``Host`` (``_host``), a thin façade over collaborators that share one ``Core``.

``_core`` (store, locks, settings, supervisor, the ``written`` hook), ``_checks`` (input and
deadlines), ``_admission`` (start, join, busy, no-op; check and plan), ``_runner`` (one operation
under its slug lock), ``_outcome`` (what an answer leaves in the record), ``_recovery`` (liveness,
heal, lease, takeover), ``_events`` (buffer, bus, streams), ``_operations`` (handles: wait,
result, cancel), ``_queries`` (status and records) and ``_reconcile`` (reconcile, adopt, forget).
"""
