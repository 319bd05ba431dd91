"""The store's schema, and what reading it needs without the models: ``hearth ls`` lists the
records from SQLite and prints them, and so costs the interpreter, sqlite3 and json only
(``scripts/bench`` measures it against ``python -c "import pydantic, sqlite3, platformdirs"``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from .._errors import StoreError

STORE_FILE = "hearth.db"
#: What a host leaves in its home once it has run: its liveness marks, the slugs' lock files,
#: the adapters' data folders.
USED_HOME = ("owners", "locks", "data")

MIGRATIONS: Sequence[str] = (
    # version 1
    """
    CREATE TABLE deployments (
        slug TEXT NOT NULL,
        generation INTEGER NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0,
        tier TEXT NOT NULL,
        driver TEXT NOT NULL,
        state TEXT NOT NULL,
        ref TEXT,
        reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (slug, generation)
    );
    CREATE UNIQUE INDEX deployments_current ON deployments (slug) WHERE archived = 0;
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        slug TEXT NOT NULL,
        generation INTEGER NOT NULL,
        verb TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX operations_by_slug ON operations (slug, id);
    CREATE TABLE operation_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        operation INTEGER NOT NULL REFERENCES operations (id),
        at TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        fraction REAL
    );
    CREATE INDEX operation_log_by_operation ON operation_log (operation, id);
    """,
    # version 2: a record whose backend state the host could not confirm
    """
    ALTER TABLE deployments ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0;
    """,
    # version 3: operations as objects (queued, an owner, a key, a result, a cancel request) and
    # one store-wide event log that replaces the per-operation log
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        operation INTEGER NOT NULL,
        slug TEXT NOT NULL,
        verb TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        level TEXT,
        message TEXT,
        fraction REAL,
        error TEXT,
        record_state TEXT
    );
    CREATE INDEX events_by_operation ON events (operation, seq);
    CREATE INDEX events_by_slug ON events (slug, seq);
    INSERT INTO events (at, operation, slug, verb, kind, level, message, fraction)
        SELECT l.at, l.operation, o.slug, o.verb, 'progress', l.level, l.message, l.fraction
        FROM operation_log l JOIN operations o ON o.id = l.operation ORDER BY l.id;
    DROP TABLE operation_log;
    CREATE TABLE operations_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        slug TEXT NOT NULL,
        generation INTEGER NOT NULL,
        verb TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        result TEXT,
        key TEXT UNIQUE,
        tier TEXT,
        driver TEXT,
        reuse INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        cancel_requested TEXT
    );
    INSERT INTO operations_v3 (id, slug, generation, verb, state, created_at, started_at, finished_at, error)
        SELECT id, slug, generation, verb, outcome, started_at, started_at, ended_at, error FROM operations;
    DROP TABLE operations;
    ALTER TABLE operations_v3 RENAME TO operations;
    CREATE INDEX operations_by_slug ON operations (slug, id);
    CREATE INDEX operations_active ON operations (slug) WHERE state IN ('queued', 'running');
    ALTER TABLE deployments ADD COLUMN listing TEXT
    """,
    # version 4: the backend's own id of a workspace's resource (a container id, a VM name), as
    # the adapter's progress names it, stored at once
    """
    ALTER TABLE deployments ADD COLUMN backend_id TEXT
    """,
    # version 5: the leases by which hosts sharing a database (PostgreSQL) prove they are alive
    """
    CREATE TABLE owners (
        owner TEXT PRIMARY KEY,
        renewed_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )
    """,
    # version 6: events of a workspace's record (``workspace``: no operation need cause them),
    # each with the workspace's generation and, for ``workspace``, the record as it then was;
    # the table is rebuilt (SQLite cannot drop NOT NULL) and keeps its sequence
    """
    CREATE TABLE events_v6 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        operation INTEGER,
        slug TEXT NOT NULL,
        verb TEXT,
        kind TEXT NOT NULL,
        state TEXT,
        level TEXT,
        message TEXT,
        fraction REAL,
        error TEXT,
        record_state TEXT,
        generation INTEGER,
        record TEXT
    );
    INSERT INTO events_v6 (seq, at, operation, slug, verb, kind, state, level, message, fraction,
            error, record_state, generation)
        SELECT e.seq, e.at, e.operation, e.slug, e.verb, e.kind, e.state, e.level, e.message,
            e.fraction, e.error, e.record_state, o.generation
        FROM events e LEFT JOIN operations o ON o.id = e.operation ORDER BY e.seq;
    DELETE FROM sqlite_sequence WHERE name = 'events_v6';
    UPDATE sqlite_sequence SET name = 'events_v6' WHERE name = 'events';
    DROP TABLE events;
    ALTER TABLE events_v6 RENAME TO events;
    CREATE INDEX events_by_operation ON events (operation, seq);
    CREATE INDEX events_by_slug ON events (slug, seq)
    """,
    # version 7: the idempotency keys that joined another key's operation, each bound to it for
    # good (a replay answers that operation, never starts work)
    """
    CREATE TABLE operation_keys (
        key TEXT PRIMARY KEY,
        operation INTEGER NOT NULL
    )
    """,
    # version 8: a workspace's labels (JSON with sorted keys and no spaces; records written
    # before carry none)
    """
    ALTER TABLE deployments ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'
    """,
    # version 9: who asked for each operation (its actor: ``_actors``) and whom for (on behalf
    # of); operations recorded before carry neither
    """
    ALTER TABLE operations ADD COLUMN actor TEXT;
    ALTER TABLE operations ADD COLUMN on_behalf_of TEXT;
    CREATE INDEX operations_by_actor ON operations (actor, id)
    """,
    # version 10: a workspace's last activity (a touch, a verb; the autostop sweep's clock),
    # which records written before start from their last write
    """
    ALTER TABLE deployments ADD COLUMN last_activity TEXT;
    UPDATE deployments SET last_activity = updated_at
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: The version that added ``deployments.labels``.
LABELS_VERSION = 8


class Listed(NamedTuple):
    """One current record as ``hearth ls`` shows it."""

    slug: str
    state: str
    tier: str
    driver: str
    #: The DeploymentRef as JSON, with ``last_status`` the recorded state.
    ref: dict[str, Any]
    labels: dict[str, str] = {}  # noqa: RUF012 - a NamedTuple's default, never changed


def current(path: Path, labels: dict[str, str] | None = None) -> list[Listed]:
    """Every current record of the store at ``path`` (none when there is no store yet); with
    ``labels``, those carrying each of them."""
    if not path.exists():
        return []
    refuse_emptied(path)
    try:
        db = _reader(path)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {path} has schema version {version}, newer than this "
                    f"hearth ({SCHEMA_VERSION}); upgrade hearth"
                )
            if version == 0:
                return []
            carried = "labels" if version >= LABELS_VERSION else "'{}'"
            rows = db.execute(
                "SELECT slug, tier, driver, state, COALESCE(ref, listing), created_at, "
                f"{carried} FROM deployments WHERE archived = 0 ORDER BY slug"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"the store {path} cannot be used: {exc}") from None
    listed = []
    for slug, tier, driver, state, ref, created, stored in rows:
        carries = json.loads(stored) if stored else {}
        if labels and any(carries.get(key) != value for key, value in labels.items()):
            continue
        # The stored ref is the model's own JSON (DeploymentRef.model_dump_json); a record with
        # none (its provision failed) has the ref the model made for it when it was written
        # (``listing``); only a record written before schema 3 needs the model to load here.
        document = json.loads(ref) if ref else _synthesized(slug, tier, driver, state, created)
        document["last_status"] = state
        listed.append(Listed(slug, state, tier, driver, document, carries))
    return listed


def _reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at ``path``, which may be in a home this user cannot
    write (a backup, a home mounted read-only, another user's home shared for reading).

    It is opened with ``mode=ro``, which still needs the WAL's ``-shm`` file (SQLite creates it, or
    maps an existing one read-only). Where that fails, ``immutable=1`` (no locks, no WAL) is the
    last resort, taken only when the ``-wal`` file is absent or empty: then no connection has the
    database open (the last one to close checkpoints the WAL into the file and removes it), so the
    file holds every committed transaction, and in a home this user cannot write no writer of
    this user can start. A ``-wal`` that holds transactions cannot be read without its ``-shm``: that
    is a ``StoreError`` saying so, rather than a listing that misses the latest records.
    """
    uri = path.absolute().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0)
    try:
        db.execute("PRAGMA user_version").fetchone()  # the WAL and its -shm are opened on first read
        return db
    except sqlite3.OperationalError as exc:
        db.close()
        wal = path.with_name(path.name + "-wal")
        try:
            pending = wal.stat().st_size > 0
        except FileNotFoundError:
            pending = False
        if pending:
            raise StoreError(
                f"the store {path} cannot be read: {exc}; its write-ahead log {wal.name} holds "
                f"transactions that only a process able to create {path.name}-shm can read: run "
                "this as the home's owner, or make the home writable"
            ) from None
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30.0)


def refuse_emptied(path: Path) -> None:
    """Refuse a zero-length store file in a home that has been used: SQLite would take it for a
    new, empty database, and the registry would silently start afresh.

    The rule cannot race with a host creating a new store: ``SQLiteStore`` never shows a
    zero-length ``hearth.db`` (it builds the database under a temporary name and links it into
    place whole), so a zero-length one is a damaged file (truncated, or restored empty) or one an
    interrupted older hearth left. It is refused when the home shows earlier use: any of
    ``USED_HOME`` (``owners``, ``locks``, ``data``) or the store's own ``-wal`` file exists. A
    zero-length file in a home with none of them is taken as a new store, as before.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size:
        return
    used = [name for name in (*USED_HOME, f"{path.name}-wal") if (path.parent / name).exists()]
    if used:
        raise StoreError(
            f"the store {path} is empty (0 bytes) in a home that has been used (it holds "
            f"{', '.join(used)}): its records are gone; restore {path.name} from a backup, "
            "or remove it to start afresh with an empty registry"
        )


def _synthesized(slug: str, tier: str, driver: str, state: str, created: str) -> dict[str, Any]:
    from hearth_adaptersdk import DeploymentRef

    ref = DeploymentRef.model_validate(
        {
            "workspace_slug": slug,
            "tier": tier,
            "driver": driver,
            "last_status": state,
            "created": datetime.fromisoformat(created),
        }
    )
    return ref.model_dump(mode="json")
