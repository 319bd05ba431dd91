"""The store a URL names: the one place that knows every store, so that neither imports the other."""

from __future__ import annotations

from .._dirs import shown
from .._errors import InvalidInput
from ._base import Store


def store_from_url(url: str, *, wait: float = 5.0) -> Store:
    """The store a URL names: ``postgresql://...`` (the ``postgresql`` extra) or
    ``sqlite:///path/to/hearth.db``. ``wait`` bounds a PostgreSQL call's wait for a connection
    (``[timeouts] store``)."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from ._postgres import PostgresStore
        except ImportError as exc:
            raise InvalidInput(
                f"a postgresql:// store needs the postgresql extra (pip install 'hearth[postgresql]'): {exc}"
            ) from None
        return PostgresStore(url, connect_timeout=wait)
    if url.startswith("sqlite:///"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite://") :])
    raise InvalidInput(f"{shown(url)[:120]!r} is not a store URL: use postgresql://... or sqlite:///path")
