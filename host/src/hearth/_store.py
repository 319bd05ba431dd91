"""The host's registry: deployments, the operations run on them, and each operation's log.

``Store`` is the small interface the lifecycle layer uses; ``SQLiteStore`` is the default
(one WAL-mode file under ``$HEARTH_HOME``, safe for several processes). A PostgreSQL store
for several console replicas implements the same interface. The schema carries a version
(``PRAGMA user_version``) and is migrated forward on open; a newer schema is refused.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from hearth_adaptersdk import DeploymentRef, State, utc_now

from ._errors import StoreError
from ._records import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Deployment", "LogBuffer", "LogLine", "Operation", "SQLiteStore", "Store", "StoreError"]

log = logging.getLogger("hearth")
Outcome = str  # "running" | "succeeded" | "failed" | "cancelled" | "interrupted"
P = ParamSpec("P")
R = TypeVar("R")
#: The files SQLite keeps beside the database in WAL mode.
SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True)
class Deployment:
    """The host's record of one workspace (one generation of a slug)."""

    slug: str
    generation: int
    tier: str
    driver: str
    state: State
    ref: DeploymentRef | None
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    #: The host could not confirm what the backend holds (a rollback that did not answer, an
    #: interrupted verb): ``reconcile`` asks the adapter and settles the record.
    unconfirmed: bool = False


@dataclass(frozen=True)
class LogLine:
    at: datetime
    level: str
    message: str
    fraction: float | None = None


@dataclass(frozen=True)
class Operation:
    id: int
    slug: str
    generation: int
    verb: str
    started_at: datetime
    ended_at: datetime | None
    outcome: Outcome
    error: dict[str, Any] | None
    log: tuple[LogLine, ...] = ()


class Store(Protocol):
    """What the lifecycle layer needs from a registry."""

    def get(self, slug: str) -> Deployment | None: ...
    def save(self, deployment: Deployment) -> None: ...
    def archive(self, slug: str) -> None: ...
    def next_generation(self, slug: str) -> int: ...
    def deployments(self) -> list[Deployment]: ...
    def begin(self, deployment: Deployment, verb: str) -> int: ...
    def log(self, operation: int, level: str, message: str, fraction: float | None = None) -> None: ...
    def log_many(self, lines: Sequence[tuple[int, LogLine]]) -> None: ...
    def end(
        self,
        operation: int,
        outcome: Outcome,
        error: dict[str, Any] | None = None,
        *,
        deployment: Deployment | None = None,
        archive: bool = False,
    ) -> None: ...
    def operations(self, slug: str) -> list[Operation]: ...
    def close(self) -> None: ...


def _typed(method: Callable[P, R]) -> Callable[P, R]:
    """SQLite's and the OS's errors become one-line ``StoreError``s naming the store."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            store = args[0]
            assert isinstance(store, SQLiteStore)
            raise StoreError(f"the store {store.path} cannot be used: {_why(exc)}") from None

    return wrapper


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def private_file(path: Path) -> None:
    """Create ``path`` (mode 0600) if missing and make it 0600 if it exists; SQLite gives its
    WAL and SHM files the database file's mode, so the store's files all stay private."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SQLiteStore:
    """The default store: one SQLite file in WAL mode, shared safely by several processes."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            private_file(self.path)
            for suffix in SIDE_FILES:  # files an older hearth may have left readable
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.chmod(0o600)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._wal(busy_timeout)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {_why(exc)}") from None

    def _wal(self, bound: float) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler,
        when several processes open a new store together: retry within the busy timeout."""
        deadline = time.monotonic() + bound
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        with self._write():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.path} has schema version {version}, newer than "
                    f"this hearth ({SCHEMA_VERSION}); upgrade hearth"
                )
            for number in range(version, SCHEMA_VERSION):
                # executescript would commit our transaction: run the statements one by one
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:  # SQLite ends some failed transactions itself (disk full)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- deployments -------------------------------------------------------------------------
    @_typed
    def get(self, slug: str) -> Deployment | None:
        row = self._db.execute(
            "SELECT slug, generation, tier, driver, state, ref, reason, created_at, updated_at, "
            "unconfirmed "
            "FROM deployments WHERE slug = ? AND archived = 0",
            (slug,),
        ).fetchone()
        return _deployment(row) if row else None

    @_typed
    def save(self, deployment: Deployment) -> None:
        with self._write() as db:
            _save(db, deployment)

    @_typed
    def archive(self, slug: str) -> None:
        with self._write() as db:
            db.execute("UPDATE deployments SET archived = 1 WHERE slug = ? AND archived = 0", (slug,))

    @_typed
    def next_generation(self, slug: str) -> int:
        row = self._db.execute("SELECT MAX(generation) FROM deployments WHERE slug = ?", (slug,)).fetchone()
        return (row[0] or 0) + 1

    @_typed
    def deployments(self) -> list[Deployment]:
        rows = self._db.execute(
            "SELECT slug, generation, tier, driver, state, ref, reason, created_at, updated_at, "
            "unconfirmed "
            "FROM deployments WHERE archived = 0 ORDER BY slug"
        ).fetchall()
        return [_deployment(row) for row in rows]

    # --- operations --------------------------------------------------------------------------
    @_typed
    def begin(self, deployment: Deployment, verb: str) -> int:
        """Record the deployment (in its transient state) and start an operation: one write."""
        with self._write() as db:
            _save(db, deployment)
            cursor = db.execute(
                "INSERT INTO operations (slug, generation, verb, started_at, outcome) "
                "VALUES (?, ?, ?, ?, 'running')",
                (deployment.slug, deployment.generation, verb, utc_now().isoformat()),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def log(self, operation: int, level: str, message: str, fraction: float | None = None) -> None:
        self.log_many([(operation, LogLine(utc_now(), level, message, fraction))])

    @_typed
    def log_many(self, lines: Sequence[tuple[int, LogLine]]) -> None:
        """Several log lines (of any operations) in one transaction."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO operation_log (operation, at, level, message, fraction) VALUES (?, ?, ?, ?, ?)",
                [(op, line.at.isoformat(), line.level, line.message, line.fraction) for op, line in lines],
            )

    @_typed
    def end(
        self,
        operation: int,
        outcome: Outcome,
        error: dict[str, Any] | None = None,
        *,
        deployment: Deployment | None = None,
        archive: bool = False,
    ) -> None:
        """Record an operation's outcome, and the deployment it left, in one write. With
        ``archive``, the deployment's generation is archived (a first provision that changed
        nothing leaves no live record; its operation stays in the logs)."""
        with self._write() as db:
            if deployment is not None:
                _save(db, deployment)
                if archive:
                    db.execute(
                        "UPDATE deployments SET archived = 1 WHERE slug = ? AND generation = ?",
                        (deployment.slug, deployment.generation),
                    )
            db.execute(
                "UPDATE operations SET ended_at = ?, outcome = ?, error = ? WHERE id = ?",
                (utc_now().isoformat(), outcome, json.dumps(error) if error is not None else None, operation),
            )

    @_typed
    def operations(self, slug: str) -> list[Operation]:
        rows = self._db.execute(
            "SELECT id, slug, generation, verb, started_at, ended_at, outcome, error "
            "FROM operations WHERE slug = ? ORDER BY id",
            (slug,),
        ).fetchall()
        found = []
        for row in rows:
            lines = self._db.execute(
                "SELECT at, level, message, fraction FROM operation_log WHERE operation = ? ORDER BY id",
                (row[0],),
            ).fetchall()
            found.append(
                Operation(
                    id=row[0],
                    slug=row[1],
                    generation=row[2],
                    verb=row[3],
                    started_at=datetime.fromisoformat(row[4]),
                    ended_at=datetime.fromisoformat(row[5]) if row[5] else None,
                    outcome=row[6],
                    error=json.loads(row[7]) if row[7] else None,
                    log=tuple(LogLine(datetime.fromisoformat(a), lv, m, f) for a, lv, m, f in lines),
                )
            )
        return found

    def close(self) -> None:
        self._db.close()


class LogBuffer:
    """Progress lines wait one event-loop turn so that many operations share one transaction.

    A host with dozens of operations in flight receives their progress events in bursts;
    one write per burst instead of one per line keeps the store off the critical path. The
    lines are written before their operation's outcome (``flush``), and at most one loop
    turn of lines can be lost if the process dies.
    """

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store
        self._lines: list[tuple[int, LogLine]] = []

    def add(self, operation: int, line: LogLine) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append((operation, line))

    def flush(self) -> None:
        """Write the waiting lines; a store that fails loses them (logged), never the verb."""
        if self._lines:
            lines, self._lines = self._lines, []
            try:
                self._store().log_many(lines)
            except StoreError as exc:
                log.error("%d progress line(s) not recorded: %s", len(lines), exc.message)


def _save(db: sqlite3.Connection, deployment: Deployment) -> None:
    ref = deployment.ref.model_dump_json() if deployment.ref is not None else None
    db.execute(
        "INSERT INTO deployments (slug, generation, tier, driver, state, ref, reason, "
        "created_at, updated_at, unconfirmed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (slug, generation) DO UPDATE SET tier = excluded.tier, "
        "driver = excluded.driver, state = excluded.state, ref = excluded.ref, "
        "reason = excluded.reason, updated_at = excluded.updated_at, "
        "unconfirmed = excluded.unconfirmed",
        (
            deployment.slug,
            deployment.generation,
            deployment.tier,
            deployment.driver,
            deployment.state,
            ref,
            deployment.reason,
            deployment.created_at.isoformat(),
            deployment.updated_at.isoformat(),
            int(deployment.unconfirmed),
        ),
    )


def _deployment(row: tuple[Any, ...]) -> Deployment:
    slug, generation, tier, driver, state, ref, reason, created, updated, unconfirmed = row
    return Deployment(
        slug=slug,
        generation=generation,
        tier=tier,
        driver=driver,
        state=state,
        ref=DeploymentRef.model_validate_json(ref) if ref else None,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        reason=reason,
        unconfirmed=bool(unconfirmed),
    )
