"""``PostgresStore``: the registry in PostgreSQL, for hosts on several machines.

The same ``Store`` interface, schema and versioned migrations as ``SQLiteStore`` (written in
PostgreSQL's dialect; the version is kept in ``hearth_schema``), on psycopg 3's async
connections from a psycopg-pool pool. Timestamps, refs and errors are stored as the same text,
so both stores read rows with the same code (``hearth._store``).

Every write is one transaction that first takes one transaction-level advisory lock, as
SQLite's ``BEGIN IMMEDIATE`` takes its file's write lock: writers queue rather than interleave,
so what a write checks (a key, the slug's active operation) still holds when it inserts, and
events get their ``seq`` in commit order (a watcher that read up to ``seq`` N never later sees an
event below N appear). Reads take no lock.

Needs the ``postgresql`` extra (``pip install 'hearth[postgresql]'``: psycopg and psycopg-pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from hearth_adaptersdk import DeploymentRef, utc_now

from .._dirs import shown
from .._errors import SlugLocked, StoreError
from .._models import Deployment, Event, EventKind, LogLine, Operation, OperationState
from ._base import (
    ACTIVE_OF_SLUG,
    ACTIVITY,
    AS_READ,
    BEGIN_OPERATION,
    BIND_KEY,
    DEPLOYMENT_COLUMNS,
    DEPLOYMENT_COUNTS,
    END_OPERATION,
    FINAL_OF,
    KEYED,
    LAST_FINISHED,
    LOG_OF,
    NAME_BACKEND,
    NEW_OPERATION,
    OPERATION_COLUMNS,
    OPERATION_WAS,
    PENDING_FINALS,
    PROGRESS_EVENT,
    PRUNE_PROGRESS,
    RELEASE_KEY,
    SAVE,
    STATE_EVENT,
    TOUCH,
    UNBIND_KEY,
    Found,
    NewEvent,
    NewOperation,
    activity_text,
    deployments_query,
    end_args,
    events_query,
    final_waits,
    for_postgres,
    new_operation_args,
    operations_query,
    progress_event_args,
    record_changed,
    row_deployment,
    row_event,
    row_log_line,
    row_operation,
    row_pending,
    save_args,
    settles,
    state_event_args,
    still_as_read,
)
from ._records import SCHEMA_VERSION

R = TypeVar("R")
log = logging.getLogger("hearth.store")
Connection = psycopg.AsyncConnection[Any]

#: The transaction-level advisory lock every write takes first ("hearth" + 1).
WRITE_LOCK = int.from_bytes(b"hearth\x00\x01", "big")
#: The lock a migration takes, so that hosts opening a new database together migrate it once.
MIGRATE_LOCK = int.from_bytes(b"hearth\x00\x02", "big")
#: How long the pool retries one lost connection (backing off 1 s, 2 s, ...) before it gives that
#: attempt up; the next call that wants a connection starts a new one. Short, so that the wait
#: between attempts never grows past a few seconds: a database back after an outage is used
#: again within seconds, however long the outage was.
RECONNECT_GIVE_UP = 5.0

#: The schema as SQLite's ``MIGRATIONS`` builds it, version for version, in PostgreSQL's words.
PG_MIGRATIONS: Sequence[str] = (
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
        id BIGSERIAL PRIMARY KEY,
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
        id BIGSERIAL PRIMARY KEY,
        operation BIGINT NOT NULL REFERENCES operations (id),
        at TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        fraction DOUBLE PRECISION
    );
    CREATE INDEX operation_log_by_operation ON operation_log (operation, id)
    """,
    # version 2: a record whose backend state the host could not confirm
    """
    ALTER TABLE deployments ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0
    """,
    # version 3: operations as objects, and one store-wide event log
    """
    CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        at TEXT NOT NULL,
        operation BIGINT NOT NULL,
        slug TEXT NOT NULL,
        verb TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        level TEXT,
        message TEXT,
        fraction DOUBLE PRECISION,
        error TEXT,
        record_state TEXT
    );
    CREATE INDEX events_by_operation ON events (operation, seq);
    CREATE INDEX events_by_slug ON events (slug, seq);
    INSERT INTO events (at, operation, slug, verb, kind, level, message, fraction)
        SELECT l.at, l.operation, o.slug, o.verb, 'progress', l.level, l.message, l.fraction
        FROM operation_log l JOIN operations o ON o.id = l.operation ORDER BY l.id;
    DROP TABLE operation_log;
    ALTER TABLE operations RENAME COLUMN outcome TO state;
    ALTER TABLE operations RENAME COLUMN started_at TO created_at;
    ALTER TABLE operations RENAME COLUMN ended_at TO finished_at;
    ALTER TABLE operations ADD COLUMN started_at TEXT;
    UPDATE operations SET started_at = created_at;
    ALTER TABLE operations
        ADD COLUMN result TEXT,
        ADD COLUMN key TEXT UNIQUE,
        ADD COLUMN tier TEXT,
        ADD COLUMN driver TEXT,
        ADD COLUMN reuse INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN owner TEXT,
        ADD COLUMN cancel_requested TEXT;
    CREATE INDEX operations_active ON operations (slug) WHERE state IN ('queued', 'running');
    ALTER TABLE deployments ADD COLUMN listing TEXT
    """,
    # version 4: the backend's own id of a workspace's resource
    """
    ALTER TABLE deployments ADD COLUMN backend_id TEXT
    """,
    # version 5: the leases by which hosts sharing the database prove they are alive (the
    # database's clock decides, so the hosts' clocks need not agree)
    """
    CREATE TABLE owners (
        owner TEXT PRIMARY KEY,
        renewed_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )
    """,
    # version 6: events of a workspace's record, each with the workspace's generation
    """
    ALTER TABLE events
        ALTER COLUMN operation DROP NOT NULL,
        ALTER COLUMN verb DROP NOT NULL,
        ADD COLUMN generation INTEGER,
        ADD COLUMN record TEXT;
    UPDATE events e SET generation = o.generation FROM operations o WHERE o.id = e.operation
    """,
    # version 7: the idempotency keys that joined another key's operation, bound to it for good
    """
    CREATE TABLE operation_keys (
        key TEXT PRIMARY KEY,
        operation BIGINT NOT NULL
    )
    """,
    # version 8: a workspace's labels (JSON with sorted keys and no spaces)
    """
    ALTER TABLE deployments ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'
    """,
    # version 9: who asked for each operation (its actor) and whom for (on behalf of)
    """
    ALTER TABLE operations ADD COLUMN actor TEXT, ADD COLUMN on_behalf_of TEXT;
    CREATE INDEX operations_by_actor ON operations (actor, id)
    """,
    # version 10: a workspace's last activity (the autostop sweep's clock)
    """
    ALTER TABLE deployments ADD COLUMN last_activity TEXT;
    UPDATE deployments SET last_activity = updated_at
    """,
)
assert len(PG_MIGRATIONS) == SCHEMA_VERSION, "a migration was added to one store only"


class PostgresStore:
    """The registry in a PostgreSQL database named by ``url`` (``postgresql://...``).

    ``pool_size`` bounds the connections this store holds; ``connect_timeout`` bounds the wait
    for one (``[timeouts] store``): while the database is down every call fails with a
    ``StoreError`` within it, not after a hang. A pooled connection is checked before it is
    handed out, so none broken by an outage is used once the database is back.
    """

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: float = 5.0) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"{shown(url)[:120]!r} is not a postgresql:// URL")
        self.url = url
        self.where = shown(url)
        self._size = pool_size
        self._timeout = connect_timeout
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listener: Connection | None = None
        self._sweeping: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # --- plumbing ----------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise StoreError(f"the store {self.where} is closed")
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except StoreError:
            raise
        except PoolTimeout:
            self._sweep()
            raise StoreError(
                f"the store {self.where} cannot be used: no connection within {self._timeout:g} s "
                "(is the database up and reachable?)"
            ) from None
        except (psycopg.Error, OSError) as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._sweep()
            raise StoreError(f"the store {self.where} cannot be used: {_why(exc)}") from None

    def _sweep(self) -> None:
        """After a lost connection, check every idle one now (the pool replaces the broken), so
        that the calls after an outage do not find them one by one."""
        pool = self._pool
        if pool is not None and (self._sweeping is None or self._sweeping.done()):
            self._sweeping = asyncio.get_running_loop().create_task(pool.check(), name="hearth-store-check")
            self._sweeping.add_done_callback(_swept)

    async def _alive(self, conn: Connection) -> None:
        """The pool's check of a connection before it hands it out, bounded: a connection to a
        database that stopped answering is dropped, not waited on."""
        async with asyncio.timeout(self._timeout):
            await AsyncConnectionPool.check_connection(conn)

    async def check(self, timeout: float) -> None:
        """Readiness: a trivial query answered within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._read(lambda conn: _one(conn, "SELECT 1", ()))
        except TimeoutError:
            raise StoreError(f"the store {self.where} did not answer a query within {timeout:g} s") from None

    async def _read(self, work: Callable[[Connection], Awaitable[R]]) -> R:
        async with self._connection() as conn:
            return await work(conn)

    async def _write(self, work: Callable[[Connection], Awaitable[R]]) -> R:
        """One write transaction, after the write lock (writers queue, as in SQLite); it
        notifies the hosts that listen (``wait_change``) when it commits."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            done = await work(conn)
            await conn.execute("NOTIFY hearth_events")
            return done

    async def wait_change(self, timeout: float) -> None:
        """Return once another write committed (LISTEN/NOTIFY wakes every host on the database
        at once), or after ``timeout`` seconds: the caller reads ``last_seq`` either way. A
        listening connection an outage broke is replaced at once (once per call); while none
        can be made, this waits out ``timeout`` and the caller reads on a timer."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        for _ in range(2):
            try:
                listener = await self._listening()
                async for _ in listener.notifies(timeout=max(0.0, until - loop.time()), stop_after=1):
                    pass
                return
            except (psycopg.Error, OSError, StoreError) as exc:
                log.debug("listening on %s failed (%s)", self.where, _why(exc))
                await self._stop_listening()
        await asyncio.sleep(max(0.0, until - loop.time()))

    async def _listening(self) -> Connection:
        if self._listener is None or self._listener.closed:
            if self._pool is None:
                raise StoreError(f"the store {self.where} is closed")
            self._listener = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self._timeout)),
                application_name="hearth-listen",
            )
            await self._listener.execute("LISTEN hearth_events")
        return self._listener

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await listener.close()

    # --- lifetime ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        try:  # one connection first: a wrong database or user is said at once, in its words
            probe = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.where}: {_why(exc)}") from None
        await probe.close()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._size,
            open=False,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(self._timeout)),
                "application_name": "hearth-store",
            },
            timeout=self._timeout,
            check=self._alive,
            reconnect_timeout=RECONNECT_GIVE_UP,
            reconnect_failed=_gave_up,
            name="hearth-store",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout:
            await pool.close()
            raise StoreError(
                f"cannot open the store {self.where}: no connection within {self._timeout:g} s"
            ) from None
        except (psycopg.Error, OSError) as exc:
            await pool.close()
            raise StoreError(f"cannot open the store {self.where}: {_why(exc)}") from None
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._stop_listening()
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeping
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS hearth_schema (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT version FROM hearth_schema")).fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                await conn.execute("INSERT INTO hearth_schema (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.where} has schema version {version}, newer than "
                    f"this hearth ({SCHEMA_VERSION}); upgrade hearth"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in PG_MIGRATIONS[number].split(";"):
                    if statement.strip():
                        await conn.execute(statement.encode())
                await conn.execute("UPDATE hearth_schema SET version = %s", (number + 1,))

    # --- deployments -------------------------------------------------------------------------
    async def touch(self, slug: str, at: datetime) -> Deployment | None:
        async def work(conn: Connection) -> Deployment | None:
            await conn.execute(for_postgres(TOUCH).encode(), (activity_text(at), slug, activity_text(at)))
            return await _get(conn, slug)

        return await self._write(work)

    async def get(self, slug: str) -> Deployment | None:
        return await self._read(lambda conn: _get(conn, slug))

    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[Deployment]:
        query, args = deployments_query(
            state=state,
            driver=driver,
            include_torn_down=include_torn_down,
            limit=limit,
            after=after,
            labels=labels,
            contains="strpos",
        )
        rows = await self._read(lambda conn: _all(conn, query, args))
        return [row_deployment(row) for row in rows]

    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]:
        async def work(conn: Connection) -> tuple[Deployment | None, list[Operation]]:
            async with conn.transaction():  # one snapshot of both
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = await _all(conn, ACTIVE_OF_SLUG, (slug,))
                return await _get(conn, slug), [row_operation(row) for row in rows]

        return await self._read(work)

    async def deployment_counts(self) -> list[tuple[str, str, int]]:
        """(state, driver, how many) of the current records, in one grouped read."""
        rows = await self._read(lambda conn: _all(conn, DEPLOYMENT_COUNTS, ()))
        return [(str(state), str(driver), int(count)) for state, driver, count in rows]

    async def drivers(self) -> list[str]:
        rows = await self._read(
            lambda conn: _all(conn, "SELECT DISTINCT driver FROM deployments ORDER BY driver", ())
        )
        return [row[0] for row in rows]

    async def next_generation(self, slug: str) -> int:
        row = await self._read(
            lambda conn: _one(conn, "SELECT MAX(generation) FROM deployments WHERE slug = %s", (slug,))
        )
        return int((row or (0,))[0] or 0) + 1

    async def save(
        self, deployment: Deployment, *, replaces: Deployment | None = None, note: str | None = None
    ) -> bool:
        async def work(conn: Connection) -> bool:
            if replaces is not None:
                row = await _one(conn, AS_READ, (replaces.slug, replaces.generation))
                if not still_as_read(row, replaces):
                    return False
            before = await _get(conn, deployment.slug)
            await _save(conn, deployment)
            await _changed(conn, deployment.slug, before, operation=None, verb=None, note=note)
            return True

        return await self._write(work)

    async def archive(self, slug: str) -> None:
        async def work(conn: Connection) -> None:
            before = await _get(conn, slug)
            await conn.execute(
                "UPDATE deployments SET archived = 1 WHERE slug = %s AND archived = 0", (slug,)
            )
            if before is not None:
                await _changed(conn, slug, before, operation=None, verb=None)

        await self._write(work)

    # --- operations --------------------------------------------------------------------------
    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        async def work(conn: Connection) -> tuple[Operation, Found]:
            keyed = None if new.key is None else await _keyed(conn, new.key)
            if keyed is not None and new.keeps(keyed):
                return keyed, "key"
            row = await _one(conn, ACTIVE_OF_SLUG, (new.slug,))
            if row:
                return row_operation(row), "active"
            if keyed is not None:
                await conn.execute(for_postgres(RELEASE_KEY).encode(), (keyed.id, new.key))
                await conn.execute(for_postgres(UNBIND_KEY).encode(), (new.key,))
            made = await _one(conn, NEW_OPERATION + " RETURNING id", new_operation_args(new))
            assert made is not None
            ident = int(made[0])
            await _event(conn, ident, new.slug, new.verb, "state", state=new.state, generation=new.generation)
            found = await _operation_where(conn, "id = %s", ident)
            assert found is not None
            return found, "created"

        return await self._write(work)

    async def begin(
        self,
        operation: int,
        deployment: Deployment,
        *,
        archive_first: bool = False,
        idle_since: datetime | None = None,
    ) -> bool:
        async def work(conn: Connection) -> bool:
            if idle_since is not None:  # the row lock orders this against a touch's update
                seen = await _one(conn, ACTIVITY + " FOR UPDATE", (deployment.slug,))
                if seen is None or seen[0] is None or datetime.fromisoformat(seen[0]) != idle_since:
                    return False
            row = await _one(
                conn,
                BEGIN_OPERATION + " RETURNING verb",
                (utc_now().isoformat(), deployment.generation, operation),
            )
            if row is None:
                return False  # fenced: another host settled it
            before = await _get(conn, deployment.slug)
            if archive_first:
                await conn.execute(
                    "UPDATE deployments SET archived = 1 WHERE slug = %s AND archived = 0", (deployment.slug,)
                )
            await _save(conn, deployment)
            await _changed(conn, deployment.slug, before, operation=operation, verb=row[0])
            await _event(
                conn,
                operation,
                deployment.slug,
                row[0],
                "state",
                state="running",
                record_state=deployment.state,
                generation=deployment.generation,
            )
            return True

        return await self._write(work)

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
        async def work(conn: Connection) -> bool:
            was = await _one(conn, OPERATION_WAS, (operation,))  # under the write lock: as ended
            row = await _one(
                conn, END_OPERATION + " RETURNING slug, verb", end_args(operation, state, error, result)
            )
            if row is None or was is None:
                return False  # fenced: the record is left as whoever settled it wrote it
            slug, verb = row
            before = await _get(conn, slug)
            if deployment is not None:
                await _save(conn, deployment)
                if archive:
                    await conn.execute(
                        "UPDATE deployments SET archived = 1 WHERE slug = %s AND generation = %s",
                        (deployment.slug, deployment.generation),
                    )
                await _changed(conn, slug, before, operation=operation, verb=verb, exclude=operation)
            elif final_waits(was, before):
                return True  # its final event is written by the write that settles the record
            record = await _get(conn, slug)
            await _event(
                conn,
                operation,
                slug,
                verb,
                "state",
                state=state,
                error=error,
                record_state=record.state if record else None,
                message=(error or {}).get("message"),
                generation=int(was[3]),
            )
            return True

        return await self._write(work)

    async def request_cancel(self, operation: int, reason: str) -> Operation | None:
        async def work(conn: Connection) -> Operation | None:
            found = await _operation_where(conn, "id = %s", operation)
            if found is None or found.finished:
                return found
            await conn.execute(
                "UPDATE operations SET cancel_requested = %s WHERE id = %s", (reason, operation)
            )
            await _event(
                conn, operation, found.slug, found.verb, "cancel", message=reason, generation=found.generation
            )
            return found.model_copy(update={"cancel_requested": reason})

        return await self._write(work)

    async def keyed(self, key: str) -> Operation | None:
        return await self._read(lambda conn: _keyed(conn, key))

    async def bind_key(self, key: str, operation: int, *, retakes: int | None = None) -> Operation | None:
        async def work(conn: Connection) -> Operation | None:
            found = await _keyed(conn, key)
            if found is not None and not (found.id == retakes and found.finished):
                return found
            if found is not None:
                await conn.execute(for_postgres(RELEASE_KEY).encode(), (found.id, key))
                await conn.execute(for_postgres(UNBIND_KEY).encode(), (key,))
            await conn.execute(for_postgres(BIND_KEY).encode(), (key, operation))
            return await _operation_where(conn, "id = %s", operation)

        return await self._write(work)

    async def operation(self, operation: int, *, with_log: bool = False) -> Operation | None:
        async def work(conn: Connection) -> Operation | None:
            found = await _operation_where(conn, "id = %s", operation)
            if found is not None and with_log:
                final = await _one(conn, FINAL_OF, (found.id,))
                log = await _log(conn, found.id)
                found = found.model_copy(update={"log": log, "final_seq": final[0] if final else None})
            return found

        return await self._read(work)

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        active: bool = False,
        limit: int | None = None,
        after: int | None = None,
        with_log: bool = False,
        actor: str | None = None,
    ) -> list[Operation]:
        query, args = operations_query(
            slug=slug, state=state, active=active, limit=limit, after=after, actor=actor
        )

        async def work(conn: Connection) -> list[Operation]:
            found = [row_operation(row) for row in await _all(conn, query, args)]
            if with_log:
                found = [op.model_copy(update={"log": await _log(conn, op.id)}) for op in found]
            return found

        return await self._read(work)

    async def last_operation(self, slug: str, generation: int) -> Operation | None:
        row = await self._read(lambda conn: _one(conn, LAST_FINISHED, (slug, generation)))
        return row_operation(row) if row else None

    def slug_locks(self, owner: str) -> PgSlugLocks:
        """Per-slug locks every host on this database respects (for ``owner``'s host)."""
        return PgSlugLocks(self.url, owner, self._timeout)

    # --- leases --------------------------------------------------------------------------------
    async def renew_lease(self, owner: str, seconds: float) -> None:
        """``owner`` is alive for ``seconds`` more, by the database's clock."""

        async def work(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO owners (owner, renewed_at, expires_at) "
                "VALUES (%s, now(), now() + make_interval(secs => %s)) "
                "ON CONFLICT (owner) DO UPDATE SET renewed_at = excluded.renewed_at, "
                "expires_at = excluded.expires_at",
                (owner, float(seconds)),
            )

        await self._read(work)

    async def lease_alive(self, owner: str) -> bool:
        """Whether ``owner`` holds a lease that has not expired (none: it is not alive)."""
        row = await self._read(
            lambda conn: _one(conn, "SELECT expires_at > now() FROM owners WHERE owner = %s", (owner,))
        )
        return bool(row and row[0])

    async def orphaned(self) -> list[Operation]:
        """Queued or running operations whose owner holds no live lease: a host that died or
        lost touch; any host may take them over (``Host`` ends them and settles the record)."""
        rows = await self._read(
            lambda conn: _all(
                conn,
                f"SELECT {OPERATION_COLUMNS} FROM operations o WHERE state IN ('queued', 'running') "
                "AND NOT EXISTS (SELECT 1 FROM owners w WHERE w.owner = o.owner AND w.expires_at > now()) "
                "ORDER BY id",
                (),
            )
        )
        return [row_operation(row) for row in rows]

    async def drop_lease(self, owner: str) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute("DELETE FROM owners WHERE owner = %s", (owner,))

        await self._read(work)

    # --- events --------------------------------------------------------------------------------
    async def add_events(self, events: Sequence[NewEvent]) -> None:
        if not events:
            return

        async def work(conn: Connection) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    for_postgres(PROGRESS_EVENT).encode(), [progress_event_args(e) for e in events]
                )
                named = [(e.backend_id, e.slug) for e in events if e.backend_id is not None]
                if named:
                    await cursor.executemany(for_postgres(NAME_BACKEND).encode(), named)

        await self._write(work)

    async def prune_progress(self, before: datetime) -> int:
        async def work(conn: Connection) -> int:
            cursor = await conn.execute(for_postgres(PRUNE_PROGRESS).encode(), (before.isoformat(),))
            return cursor.rowcount

        return await self._write(work)

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
        rows = await self._read(lambda conn: _all(conn, query, args))
        return [row_event(row) for row in rows]

    async def last_seq(self) -> int:
        row = await self._read(lambda conn: _one(conn, "SELECT MAX(seq) FROM events", ()))
        return int((row or (0,))[0] or 0)


# --- per-slug locks across machines ------------------------------------------------------------------
#: How often a waiting ``hold`` tries the slug's lock again (as the file locks do).
LOCK_POLL = 0.02


class PgSlugLocks:
    """Per-slug mutual exclusion across every host on the database: PostgreSQL session-level
    advisory locks (keyed by ``hashtextextended(slug, 0)``) on one dedicated connection of
    this host, named after the host (``application_name`` is its owner token, so a refusal
    names the holder). A host that dies loses its locks with its session; a connection that
    breaks loses them too, which the store's fence makes harmless (the next write of an
    operation another host settled is refused). Same interface as ``SlugLocks``."""

    def __init__(self, url: str, owner: str, connect_timeout: float = 30.0) -> None:
        self.url = url
        self.where = shown(url)
        self.owner = owner
        self._timeout = connect_timeout
        self._conn: Connection | None = None
        self._connecting = asyncio.Lock()
        self._local: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def _connection(self) -> Connection:
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url,
                        autocommit=True,
                        application_name=self.owner[:63],
                        connect_timeout=max(1, int(self._timeout)),
                    )
                except (psycopg.Error, OSError) as exc:
                    raise StoreError(f"the slug locks in {self.where} cannot be used: {_why(exc)}") from None
            return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()  # the server releases every lock of the session

    @asynccontextmanager
    async def hold(self, slug: str, timeout: float | None) -> AsyncIterator[None]:
        """Hold ``slug``'s lock; waits at most ``timeout`` seconds (None: without bound, 0: try once)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        local = self._local.setdefault(slug, asyncio.Lock())
        self._users[slug] = self._users.get(slug, 0) + 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await local.acquire()
            except TimeoutError:
                raise SlugLocked(
                    f"workspace {slug!r} is busy in this process; waited {timeout:g} s"
                ) from None
            try:
                key = await self._acquire(slug, deadline, timeout)
                try:
                    yield
                finally:
                    await self._release(key)
            finally:
                local.release()
        finally:
            self._users[slug] -= 1
            if not self._users[slug]:
                del self._users[slug], self._local[slug]

    async def _acquire(self, slug: str, deadline: float | None, timeout: float | None) -> int:
        loop = asyncio.get_running_loop()
        renewed = False
        while True:
            conn = await self._connection()
            try:
                row = await (
                    await conn.execute(
                        "SELECT hashtextextended(%s, 0), pg_try_advisory_lock(hashtextextended(%s, 0))",
                        (slug, slug),
                    )
                ).fetchone()
            except (psycopg.Error, OSError) as exc:
                if conn.closed and not renewed:  # an outage ended the session: try a new one once
                    renewed = True
                    continue
                raise StoreError(f"the slug locks in {self.where} cannot be used: {_why(exc)}") from None
            assert row is not None
            key, taken = int(row[0]), bool(row[1])
            if taken:
                return key
            if deadline is not None and loop.time() >= deadline:
                holder = await self._holder(conn, key)
                raise SlugLocked(
                    f"workspace {slug!r} is being changed by another hearth process"
                    f"{f' ({holder})' if holder else ''}; waited {timeout:g} s"
                )
            await asyncio.sleep(LOCK_POLL)  # advisory locks have no async wake-up to wait on

    async def _holder(self, conn: Connection, key: int) -> str:
        """Who holds the lock: its host's owner token (``host:pid:token``), as the server says."""
        try:
            row = await (
                await conn.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
                    "AND l.objsubid = 1 LIMIT 1",
                    ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
                )
            ).fetchone()
        except (psycopg.Error, OSError):
            return ""
        if not row or not row[0]:
            return ""
        host, _, rest = str(row[0]).partition(":")
        pid = rest.partition(":")[0]
        return f"held by {row[0]}: host {host}, pid {pid}" if pid else f"held by {row[0]}"

    async def _release(self, key: int) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return  # the session ended: the server released it
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


# --- statements ------------------------------------------------------------------------------------
async def _all(conn: Connection, query: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``query`` (written with ``%s``, or one of ``hearth._store``'s statements)."""
    cursor = await conn.execute(for_postgres(query).encode(), args)
    return list(await cursor.fetchall())


async def _one(conn: Connection, query: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
    cursor = await conn.execute(for_postgres(query).encode(), args)
    row = await cursor.fetchone()
    return tuple(row) if row is not None else None


async def _get(conn: Connection, slug: str) -> Deployment | None:
    row = await _one(
        conn, f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE slug = %s AND archived = 0", (slug,)
    )
    return row_deployment(row) if row else None


async def _operation_where(conn: Connection, condition: str, value: object) -> Operation | None:
    row = await _one(conn, f"SELECT {OPERATION_COLUMNS} FROM operations WHERE {condition}", (value,))
    return row_operation(row) if row else None


async def _keyed(conn: Connection, key: str) -> Operation | None:
    row = await _one(conn, KEYED, (key, key))
    return row_operation(row) if row else None


async def _log(conn: Connection, operation: int) -> tuple[LogLine, ...]:
    rows = await _all(conn, LOG_OF, (operation,))
    return tuple(row_log_line(row) for row in rows)


async def _event(
    conn: Connection,
    operation: int,
    slug: str,
    verb: str,
    kind: EventKind,
    *,
    state: str | None = None,
    message: str | None = None,
    error: dict[str, Any] | None = None,
    record_state: str | None = None,
    generation: int | None = None,
) -> None:
    args = state_event_args(
        operation,
        slug,
        verb,
        kind,
        state=state,
        message=message,
        error=error,
        record_state=record_state,
        generation=generation,
    )
    await conn.execute(for_postgres(STATE_EVENT).encode(), args)


async def _changed(
    conn: Connection,
    slug: str,
    before: Deployment | None,
    *,
    operation: int | None,
    verb: str | None,
    note: str | None = None,
    exclude: int | None = None,
) -> None:
    """The events of a change of ``slug``'s record (``record_changed``), in its write."""
    pending = []
    if before is not None and settles(before):
        rows = await _all(conn, PENDING_FINALS, (slug, before.generation))
        pending = [found for found in map(row_pending, rows) if found.id != exclude]
    change = record_changed(
        slug, before, await _get(conn, slug), pending, operation=operation, verb=verb, note=note
    )
    async with conn.cursor() as cursor:
        if change.logs:
            await cursor.executemany(for_postgres(PROGRESS_EVENT).encode(), change.logs)
        await cursor.executemany(for_postgres(STATE_EVENT).encode(), change.events)


async def _save(conn: Connection, deployment: Deployment) -> None:
    await conn.execute(for_postgres(SAVE).encode(), save_args(deployment))


def _swept(task: asyncio.Task[None]) -> None:
    failed = None if task.cancelled() else task.exception()
    if failed is not None:
        log.debug("checking the pool's connections failed: %s", _why(failed))


def _gave_up(pool: AsyncConnectionPool[Connection]) -> None:
    """A reconnection attempt gave up (``RECONNECT_GIVE_UP``): the next call starts another."""
    log.warning(
        "the store's pool %s could not reconnect for %g s; the next call tries again",
        pool.name,
        RECONNECT_GIVE_UP,
    )


def _why(exc: BaseException) -> str:
    """psycopg's message, first line only (its detail can repeat what the server saw)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["PG_MIGRATIONS", "PgSlugLocks", "PostgresStore"]
