"""The registry: the ``Store`` interface and the SQL both stores run (``_base``), ``SQLiteStore``
(``_sqlite``), ``PostgresStore`` and its advisory locks (``_postgres``), the schema's migrations
and the reader ``hearth ls`` uses on the standard library alone (``_records``), the per-slug file
locks and liveness marks (``_locks``), and the store a URL names (``_open``).

Nothing is imported here, so that ``hearth ls`` pays only for ``_records``.
"""
