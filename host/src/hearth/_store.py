"""The host's registry: deployments, the operations run on them, and one store-wide event log.

``Store`` is the async interface the lifecycle layer uses; ``SQLiteStore`` is the default (one
WAL-mode file under ``$HEARTH_HOME``, safe for several processes). Its work runs on one thread
of its own, with its own connection, so the event loop never waits for a disk or another
process's transaction. A PostgreSQL store implements the same interface. The schema carries a
version (``PRAGMA user_version``) and is migrated forward on open; a newer schema is refused.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

from hearth_adaptersdk import DeploymentRef, utc_now

from ._errors import InvalidInput, StoreError
from ._locks import Locks
from ._models import Deployment, Event, EventKind, LogLine, Operation, OperationState, synthesized_ref
from ._records import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "Deployment",
    "Event",
    "LogLine",
    "NewEvent",
    "NewOperation",
    "Operation",
    "SQLiteStore",
    "Store",
    "StoreError",
]

P = ParamSpec("P")
R = TypeVar("R")
#: The files SQLite keeps beside the database in WAL mode.
SIDE_FILES = ("-wal", "-shm")
#: What ``create_operation`` found: a new operation, the one with that key, or the slug's active one.
Found = Literal["created", "key", "active"]
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class NewOperation:
    """An operation to record (``Store.create_operation``)."""

    slug: str
    generation: int
    verb: str
    owner: str | None
    key: str | None = None
    tier: str | None = None
    driver: str | None = None
    reuse: bool = False
    #: Record it already finished (a verb with nothing to do): its state and ref.
    done: tuple[OperationState, DeploymentRef | None] | None = None

    @property
    def state(self) -> OperationState:
        """The state it is recorded in: queued, or the one ``done`` gives."""
        return self.done[0] if self.done is not None else "queued"


@dataclass(frozen=True)
class NewEvent:
    """A progress or log event to append (``Store.add_events``); the store gives its ``seq``."""

    operation: int
    slug: str
    verb: str
    kind: EventKind
    level: str | None = None
    message: str | None = None
    fraction: float | None = None
    at: datetime = field(default_factory=utc_now)
    #: The backend id a progress event names: written to the slug's current record at once.
    backend_id: str | None = None


class Store(Protocol):
    """What the lifecycle layer needs from a registry. Every method is a coroutine; none may
    block the event loop. Each write is one transaction and appends its events in it."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    # deployments
    async def get(self, slug: str) -> Deployment | None: ...
    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Deployment]: ...
    async def next_generation(self, slug: str) -> int: ...
    async def drivers(self) -> list[str]: ...
    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]: ...
    async def save(self, deployment: Deployment, *, replaces: Deployment | None = None) -> bool: ...
    async def archive(self, slug: str) -> None: ...
    # operations
    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]: ...
    async def begin(self, operation: int, deployment: Deployment, *, archive_first: bool = False) -> bool: ...
    async def end(
        self,
        operation: int,
        state: OperationState,
        error: dict[str, Any] | None = None,
        *,
        deployment: Deployment | None = None,
        archive: bool = False,
        result: DeploymentRef | None = None,
    ) -> bool: ...
    async def request_cancel(self, operation: int, reason: str) -> Operation | None: ...
    async def keyed(self, key: str) -> Operation | None: ...
    async def operation(self, operation: int) -> Operation | None: ...
    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        active: bool = False,
        limit: int | None = None,
        after: int | None = None,
        with_log: bool = False,
    ) -> list[Operation]: ...
    async def last_operation(self, slug: str, generation: int) -> Operation | None: ...
    # events
    async def add_events(self, events: Sequence[NewEvent]) -> None: ...
    async def events(
        self,
        *,
        after: int = 0,
        slug: str | None = None,
        operation: int | None = None,
        kind: str | None = None,
        limit: int = 500,
    ) -> list[Event]: ...
    async def last_seq(self) -> int: ...


STORE_ENV = "HEARTH_STORE"


def shown(url: str) -> str:
    """A store URL without its password (it never reaches a log, an error or the store)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(an unreadable store url)"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def store_from_url(url: str) -> Store:
    """The store a URL names: ``postgresql://...`` (the ``postgresql`` extra) or
    ``sqlite:///path/to/hearth.db``."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from ._pgstore import PostgresStore
        except ImportError as exc:
            raise InvalidInput(
                f"a postgresql:// store needs the postgresql extra (pip install 'hearth[postgresql]'): {exc}"
            ) from None
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite://") :])
    raise InvalidInput(f"{shown(url)[:120]!r} is not a store URL: use postgresql://... or sqlite:///path")


class LeasedStore(Store, Protocol):
    """A store several hosts share (PostgreSQL): each host holds a lease, renewed while it
    lives, by which the others know whether its operations are still run."""

    async def renew_lease(self, owner: str, seconds: float) -> None: ...
    async def lease_alive(self, owner: str) -> bool: ...
    async def drop_lease(self, owner: str) -> None: ...
    async def orphaned(self) -> list[Operation]: ...
    def slug_locks(self, owner: str) -> Locks: ...


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


OPERATION_COLUMNS = (
    "id, slug, generation, verb, state, created_at, started_at, finished_at, error, result, key, "
    "tier, driver, reuse, owner, cancel_requested"
)
DEPLOYMENT_COLUMNS = (
    "slug, generation, tier, driver, state, ref, reason, created_at, updated_at, unconfirmed, backend_id"
)
EVENT_COLUMNS = "seq, at, operation, slug, verb, kind, state, level, message, fraction, error, record_state"


# --- the statements both stores run ------------------------------------------------------------------
# Written once with SQLite's ``?``; ``PostgresStore`` runs them through ``for_postgres``.
SAVE = (
    f"INSERT INTO deployments ({DEPLOYMENT_COLUMNS}, listing) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (slug, generation) DO UPDATE SET tier = excluded.tier, "
    "driver = excluded.driver, state = excluded.state, ref = excluded.ref, "
    "reason = excluded.reason, updated_at = excluded.updated_at, "
    "unconfirmed = excluded.unconfirmed, listing = excluded.listing, "
    "backend_id = excluded.backend_id"
)
#: The record as the caller read it (``save(replaces=)``'s fence).
AS_READ = "SELECT updated_at, state FROM deployments WHERE slug = ? AND generation = ? AND archived = 0"
NEW_OPERATION = (
    "INSERT INTO operations (slug, generation, verb, state, created_at, started_at, finished_at, "
    "result, key, tier, driver, reuse, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Ends an operation only while it is still its owner's (the fence).
END_OPERATION = (
    "UPDATE operations SET finished_at = ?, state = ?, error = ?, result = ? "
    "WHERE id = ? AND state IN ('queued', 'running')"
)
#: Starts a queued operation only (the fence).
BEGIN_OPERATION = (
    "UPDATE operations SET state = 'running', started_at = ?, generation = ? "
    "WHERE id = ? AND state = 'queued'"
)
STATE_EVENT = (
    "INSERT INTO events (at, operation, slug, verb, kind, state, message, error, record_state) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
PROGRESS_EVENT = (
    "INSERT INTO events (at, operation, slug, verb, kind, level, message, fraction) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
NAME_BACKEND = "UPDATE deployments SET backend_id = ? WHERE slug = ? AND archived = 0"
ACTIVE_OF_SLUG = (
    f"SELECT {OPERATION_COLUMNS} FROM operations "
    "WHERE slug = ? AND state IN ('queued', 'running') ORDER BY id"
)
LAST_FINISHED = (
    f"SELECT {OPERATION_COLUMNS} FROM operations WHERE slug = ? AND generation = ? "
    "AND state NOT IN ('queued', 'running') ORDER BY id DESC LIMIT 1"
)
LOG_OF = (
    "SELECT at, level, message, fraction FROM events "
    "WHERE operation = ? AND kind IN ('progress', 'log') ORDER BY seq"
)


def for_postgres(statement: str) -> str:
    """A statement of this module with PostgreSQL's placeholders (none holds a literal ``?``)."""
    return statement.replace("?", "%s")


def save_args(deployment: Deployment) -> tuple[Any, ...]:
    ref = deployment.ref.model_dump_json() if deployment.ref is not None else None
    return (
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
        deployment.backend_id,
        None if ref is not None else _listing(deployment),
    )


def still_as_read(row: Sequence[Any] | None, replaces: Deployment) -> bool:
    return row is not None and tuple(row) == (replaces.updated_at.isoformat(), replaces.state)


def new_operation_args(new: NewOperation) -> tuple[Any, ...]:
    now = utc_now().isoformat()
    ref = new.done[1] if new.done is not None else None
    done = now if new.done is not None else None
    return (
        new.slug,
        new.generation,
        new.verb,
        new.state,
        now,
        done,
        done,
        ref.model_dump_json() if ref is not None else None,
        new.key,
        new.tier,
        new.driver,
        int(new.reuse),
        new.owner,
    )


def end_args(
    operation: int, state: str, error: dict[str, Any] | None, result: DeploymentRef | None
) -> tuple[Any, ...]:
    return (
        utc_now().isoformat(),
        state,
        json.dumps(error) if error is not None else None,
        result.model_dump_json() if result is not None else None,
        operation,
    )


def state_event_args(
    operation: int,
    slug: str,
    verb: str,
    kind: EventKind,
    *,
    state: str | None,
    message: str | None,
    error: dict[str, Any] | None,
    record_state: str | None,
) -> tuple[Any, ...]:
    error_json = json.dumps(error) if error is not None else None
    return (utc_now().isoformat(), operation, slug, verb, kind, state, message, error_json, record_state)


def progress_event_args(e: NewEvent) -> tuple[Any, ...]:
    return (e.at.isoformat(), e.operation, e.slug, e.verb, e.kind, e.level, e.message, e.fraction)


def deployments_query(
    *, state: str | None, driver: str | None, include_torn_down: bool, limit: int | None, after: str | None
) -> tuple[str, list[Any]]:
    """Current records by slug, filtered; ``after`` is the last slug of the previous page."""
    where, args = ["archived = 0"], list[Any]()
    for column, value in (("state", state), ("driver", driver)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if not include_torn_down:
        where.append("state != 'tier_torn_down'")
    if after is not None:
        where.append("slug > ?")
        args.append(after)
    query = f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE {' AND '.join(where)} ORDER BY slug"
    return query + (f" LIMIT {int(limit)}" if limit is not None else ""), args


def operations_query(
    *, slug: str | None, state: str | None, active: bool, limit: int | None, after: int | None
) -> tuple[str, list[Any]]:
    """Operations by id, filtered; ``after`` is the last id of the previous page."""
    where, args = ["1 = 1"], list[Any]()
    if active:
        where.append("state IN ('queued', 'running')")
    for column, value in (("slug", slug), ("state", state)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if after is not None:
        where.append("id > ?")
        args.append(after)
    query = f"SELECT {OPERATION_COLUMNS} FROM operations WHERE {' AND '.join(where)} ORDER BY id"
    return query + (f" LIMIT {int(limit)}" if limit is not None else ""), args


def events_query(
    *, after: int, slug: str | None, operation: int | None, kind: str | None, limit: int
) -> tuple[str, list[Any]]:
    where, args = ["seq > ?"], list[Any]([after])
    for column, value in (("kind", kind), ("slug", slug), ("operation", operation)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return (
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT {int(limit)}",
        args,
    )


class SQLiteStore:
    """The default store: one SQLite file in WAL mode, shared safely by several processes.

    Every call runs on the store's own thread (one connection, used by that thread only), in
    the order the calls were made; an awaiting task that is cancelled does not stop a write
    that has started.
    """

    def __init__(self, path: str | Path, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def _run(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._thread is None:
            raise StoreError(f"the store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(self._typed, work, *args, **kwargs))

    def _typed(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """SQLite's and the OS's errors become one-line ``StoreError``s naming the store."""
        try:
            return work(*args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"the store {self.path} cannot be used: {_why(exc)}") from None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    # --- lifetime ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-store")
            try:
                await self._run(self._open)
            except BaseException:
                await self.close()
                raise

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            private_file(self.path)
            for suffix in SIDE_FILES:  # files an older hearth may have left readable
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.chmod(0o600)
            self._db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            self._wal(self._busy_timeout)
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {_why(exc)}") from None

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(thread, self._close)
        thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _wal(self, bound: float) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler,
        when several processes open a new store together: retry within the busy timeout."""
        deadline = time.monotonic() + bound
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)  # on the store's thread, never the loop's

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.path} has schema version {version}, newer than "
                    f"this hearth ({SCHEMA_VERSION}); upgrade hearth"
                )
            for number in range(version, SCHEMA_VERSION):
                # executescript would commit our transaction: run the statements one by one
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite ends some failed transactions itself (disk full)
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- deployments -------------------------------------------------------------------------
    async def get(self, slug: str) -> Deployment | None:
        return await self._run(self._get, slug)

    def _get(self, slug: str) -> Deployment | None:
        row = self.db.execute(
            f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE slug = ? AND archived = 0", (slug,)
        ).fetchone()
        return _deployment(row) if row else None

    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Deployment]:
        """Current records by slug; ``after`` is the last slug of the previous page."""
        query, args = deployments_query(
            state=state, driver=driver, include_torn_down=include_torn_down, limit=limit, after=after
        )
        rows = await self._run(lambda: self.db.execute(query, args).fetchall())
        return [_deployment(row) for row in rows]

    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]:
        """The slug's current record and its queued or running operations, in one call: what
        every access to a slug looks at first."""

        def work() -> tuple[Deployment | None, list[Operation]]:
            rows = self.db.execute(ACTIVE_OF_SLUG, (slug,)).fetchall()
            return self._get(slug), [_operation(row) for row in rows]

        return await self._run(work)

    async def drivers(self) -> list[str]:
        """Every driver any record (archived or not) names: the ones reconcile asks."""

        def work() -> list[str]:
            rows = self.db.execute("SELECT DISTINCT driver FROM deployments ORDER BY driver").fetchall()
            return [row[0] for row in rows]

        return await self._run(work)

    async def next_generation(self, slug: str) -> int:
        def work() -> int:
            row = self.db.execute(
                "SELECT MAX(generation) FROM deployments WHERE slug = ?", (slug,)
            ).fetchone()
            return int(row[0] or 0) + 1

        return await self._run(work)

    async def save(self, deployment: Deployment, *, replaces: Deployment | None = None) -> bool:
        """Write the record; with ``replaces`` (the record as the caller read it) only if it is
        still so: False, and nothing written, when another host changed it meanwhile (the fence
        of a settle by a host that lost its slug lock)."""

        def work() -> bool:
            with self._write() as db:
                if replaces is not None:
                    row = db.execute(AS_READ, (replaces.slug, replaces.generation)).fetchone()
                    if not still_as_read(row, replaces):
                        return False
                _save(db, deployment)
                return True

        return await self._run(work)

    async def archive(self, slug: str) -> None:
        def work() -> None:
            with self._write() as db:
                db.execute("UPDATE deployments SET archived = 1 WHERE slug = ? AND archived = 0", (slug,))

        await self._run(work)

    # --- operations --------------------------------------------------------------------------
    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        """In one transaction: the operation with ``new.key`` if there is one; else the slug's
        active (queued or running) operation if there is one; else a new operation (queued, or
        already finished with ``new.done``). The caller decides whether to join or refuse."""
        return await self._run(self._create_operation, new)

    def _create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        with self._write() as db:
            if new.key is not None:
                keyed = self._operation_where("key = ?", new.key)
                if keyed is not None:
                    return keyed, "key"
            row = db.execute(ACTIVE_OF_SLUG, (new.slug,)).fetchone()
            if row:
                return _operation(row), "active"
            cursor = db.execute(NEW_OPERATION, new_operation_args(new))
            ident = cursor.lastrowid
            assert ident is not None
            _event(db, ident, new.slug, new.verb, "state", state=new.state)
            made = self._operation_where("id = ?", ident)
            assert made is not None
            return made, "created"

    async def begin(self, operation: int, deployment: Deployment, *, archive_first: bool = False) -> bool:
        """Record the operation running and the deployment in its transient state: one write.
        False, and nothing written, when the operation is no longer queued (another host
        settled it: the fence that keeps a stale holder from writing)."""

        def work() -> bool:
            with self._write() as db:
                started = db.execute(
                    BEGIN_OPERATION, (utc_now().isoformat(), deployment.generation, operation)
                ).rowcount
                if not started:
                    return False
                if archive_first:
                    db.execute(
                        "UPDATE deployments SET archived = 1 WHERE slug = ? AND archived = 0",
                        (deployment.slug,),
                    )
                _save(db, deployment)
                verb = db.execute("SELECT verb FROM operations WHERE id = ?", (operation,)).fetchone()[0]
                _event(
                    db,
                    operation,
                    deployment.slug,
                    verb,
                    "state",
                    state="running",
                    record_state=deployment.state,
                )
                return True

        return await self._run(work)

    async def end(
        self,
        operation: int,
        state: OperationState,
        error: dict[str, Any] | None = None,
        *,
        deployment: Deployment | None = None,
        archive: bool = False,
        result: DeploymentRef | None = None,
    ) -> bool:
        """Record an operation's outcome, and the deployment it left, in one write; False, and
        nothing written, if it had already finished (another host settled it first: a stale
        holder cannot overwrite what the settling wrote). With ``archive``, the deployment's
        generation is archived (a first provision that changed nothing leaves no live record)."""

        def work() -> bool:
            with self._write() as db:
                changed = db.execute(END_OPERATION, end_args(operation, state, error, result)).rowcount
                if not changed:
                    return False  # fenced: the record stays as whoever settled it wrote it
                if deployment is not None:
                    _save(db, deployment)
                    if archive:
                        db.execute(
                            "UPDATE deployments SET archived = 1 WHERE slug = ? AND generation = ?",
                            (deployment.slug, deployment.generation),
                        )
                slug, verb = db.execute(
                    "SELECT slug, verb FROM operations WHERE id = ?", (operation,)
                ).fetchone()
                record = db.execute(
                    "SELECT state FROM deployments WHERE slug = ? AND archived = 0", (slug,)
                ).fetchone()
                _event(
                    db,
                    operation,
                    slug,
                    verb,
                    "state",
                    state=state,
                    error=error,
                    record_state=record[0] if record else None,
                    message=(error or {}).get("message"),
                )
                return True

        return await self._run(work)

    async def request_cancel(self, operation: int, reason: str) -> Operation | None:
        """Record a cancel request for an unfinished operation (and a ``cancel`` event its owner
        acts on); the operation as it is now, None if there is none."""

        def work() -> Operation | None:
            with self._write() as db:
                found = self._operation_where("id = ?", operation)
                if found is None:
                    return None
                if found.finished:
                    return found
                db.execute("UPDATE operations SET cancel_requested = ? WHERE id = ?", (reason, operation))
                _event(db, operation, found.slug, found.verb, "cancel", message=reason)
                return found.model_copy(update={"cancel_requested": reason})

        return await self._run(work)

    async def keyed(self, key: str) -> Operation | None:
        """The operation started with idempotency key ``key``, if any."""
        return await self._run(self._operation_where, "key = ?", key)

    async def operation(self, operation: int) -> Operation | None:
        return await self._run(self._operation_where, "id = ?", operation)

    def _operation_where(self, condition: str, value: object) -> Operation | None:
        row = self.db.execute(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE {condition}", (value,)
        ).fetchone()
        return _operation(row) if row else None

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        active: bool = False,
        limit: int | None = None,
        after: int | None = None,
        with_log: bool = False,
    ) -> list[Operation]:
        """Operations by id; ``active``: queued or running only; ``after`` is the last id of the
        previous page; ``with_log`` fills each one's log from its progress and log events."""

        query, args = operations_query(slug=slug, state=state, active=active, limit=limit, after=after)

        def work() -> list[Operation]:
            found = [_operation(row) for row in self.db.execute(query, args).fetchall()]
            if with_log:
                found = [op.model_copy(update={"log": self._log(op.id)}) for op in found]
            return found

        return await self._run(work)

    def _log(self, operation: int) -> tuple[LogLine, ...]:
        return tuple(_log_line(row) for row in self.db.execute(LOG_OF, (operation,)).fetchall())

    async def last_operation(self, slug: str, generation: int) -> Operation | None:
        """The last finished operation of that generation of ``slug``."""

        def work() -> Operation | None:
            row = self.db.execute(LAST_FINISHED, (slug, generation)).fetchone()
            return _operation(row) if row else None

        return await self._run(work)

    # --- events --------------------------------------------------------------------------------
    async def add_events(self, events: Sequence[NewEvent]) -> None:
        """Several events (of any operations) in one transaction; a backend id an event names
        is written to its slug's current record in the same transaction."""

        def work() -> None:
            with self._write() as db:
                db.executemany(PROGRESS_EVENT, [progress_event_args(e) for e in events])
                named = [(e.backend_id, e.slug) for e in events if e.backend_id is not None]
                if named:
                    db.executemany(NAME_BACKEND, named)

        if events:
            await self._run(work)

    async def events(
        self,
        *,
        after: int = 0,
        slug: str | None = None,
        operation: int | None = None,
        kind: str | None = None,
        limit: int = 500,
    ) -> list[Event]:
        query, args = events_query(after=after, slug=slug, operation=operation, kind=kind, limit=limit)

        def work() -> list[Event]:
            rows = self.db.execute(query, args).fetchall()
            return [_event_model(row) for row in rows]

        return await self._run(work)

    async def last_seq(self) -> int:
        def work() -> int:
            row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._run(work)


def _event(
    db: sqlite3.Connection,
    operation: int,
    slug: str,
    verb: str,
    kind: EventKind,
    *,
    state: str | None = None,
    message: str | None = None,
    error: dict[str, Any] | None = None,
    record_state: str | None = None,
) -> None:
    db.execute(
        STATE_EVENT,
        state_event_args(
            operation, slug, verb, kind, state=state, message=message, error=error, record_state=record_state
        ),
    )


def _save(db: sqlite3.Connection, deployment: Deployment) -> None:
    db.execute(SAVE, save_args(deployment))


def _listing(deployment: Deployment) -> str:
    """The ref ``hearth ls`` shows for a record without one (its provision failed), made by the
    model when the record is written, so that ``ls`` never loads the models to list it."""
    return synthesized_ref(deployment).model_dump_json()


def _deployment(row: tuple[Any, ...]) -> Deployment:
    slug, generation, tier, driver, state, ref, reason, created, updated, unconfirmed, backend_id = row
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
        backend_id=backend_id,
    )


def _operation(row: tuple[Any, ...]) -> Operation:
    (
        ident,
        slug,
        generation,
        verb,
        state,
        created,
        started,
        finished,
        error,
        result,
        key,
        tier,
        driver,
        reuse,
        owner,
        cancel,
    ) = row
    return Operation(
        id=ident,
        slug=slug,
        generation=generation,
        verb=verb,
        state=state,
        created_at=datetime.fromisoformat(created),
        started_at=datetime.fromisoformat(started) if started else None,
        finished_at=datetime.fromisoformat(finished) if finished else None,
        error=json.loads(error) if error else None,
        ref=DeploymentRef.model_validate_json(result) if result else None,
        key=key,
        tier=tier,
        driver=driver,
        reuse=bool(reuse),
        owner=owner,
        cancel_requested=cancel,
    )


def _log_line(row: tuple[Any, ...]) -> LogLine:
    at, level, message, fraction = row
    return LogLine(
        at=datetime.fromisoformat(at), level=level or "info", message=message or "", fraction=fraction
    )


def _event_model(row: tuple[Any, ...]) -> Event:
    seq, at, operation, slug, verb, kind, state, level, message, fraction, error, record_state = row
    return Event(
        seq=seq,
        at=datetime.fromisoformat(at),
        operation=operation,
        slug=slug,
        verb=verb,
        kind=kind,
        state=state,
        level=level,
        message=message,
        fraction=fraction,
        error=json.loads(error) if error else None,
        record_state=record_state,
    )
