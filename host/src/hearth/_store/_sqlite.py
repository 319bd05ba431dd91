"""``SQLiteStore``, the default registry: one WAL-mode file under ``$HEARTH_HOME``, safe for
several processes. Its work runs on one thread of its own, with its own connection, so the event
loop never waits for a disk or another process's transaction. The schema carries a version
(``PRAGMA user_version``) and is migrated forward on open; a newer schema is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from hearth_adaptersdk import DeploymentRef, utc_now

from .._errors import StoreError
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
    SIDE_FILES,
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
    new_operation_args,
    operations_query,
    private_file,
    progress_event_args,
    reason_of,
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
from ._records import MIGRATIONS, SCHEMA_VERSION, refuse_emptied

P = ParamSpec("P")
R = TypeVar("R")


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

    async def _on_thread(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
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
            raise StoreError(f"the store {self.path} cannot be used: {reason_of(exc)}") from None

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
                await self._on_thread(self._open)
            except BaseException:
                await self.close()
                raise

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                self._create()
            refuse_emptied(self.path)
            private_file(self.path)
            for suffix in SIDE_FILES:  # files an older hearth may have left readable
                side = self.path.with_name(self.path.name + suffix)
                # another process closing the database may remove them under us: nothing to do then
                with contextlib.suppress(FileNotFoundError):
                    side.chmod(0o600)
            self._db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            self._wal(self._busy_timeout)
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {reason_of(exc)}") from None

    def _create(self) -> None:
        """Make a new store whole: build it (WAL mode, the current schema) under a temporary name
        and link it into place, never replacing a file another process linked first. So no
        process ever sees a zero-length ``hearth.db`` that a hearth is still filling in, and
        ``refuse_emptied`` can tell an emptied store from a new one without racing. Where the file
        system cannot link, the store is created in place, as before."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            private_file(temporary)
            self._db = sqlite3.connect(temporary, timeout=self._busy_timeout, isolation_level=None)
            try:
                self._wal(self._busy_timeout)
                self._migrate()
            finally:
                self._close()  # the last connection: the WAL is checkpointed into the file
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            except OSError:
                private_file(self.path)
        finally:
            for suffix in ("", *SIDE_FILES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{temporary}{suffix}")

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

    async def check(self, timeout: float) -> None:
        """Readiness: the file opens and reads, and SQLite's ``quick_check`` finds its pages
        whole (cheap: no index is compared with its table). On a read-only connection and a
        thread of its own, so the store's calls do not queue behind it. The check stops after
        half of ``timeout`` while it is still reading (a large store is checked in part, not
        called broken); a read that hangs is the caller's bound to catch."""
        if self._thread is None:
            raise StoreError(f"the store {self.path} is closed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._typed, self._quick_check, timeout))

    def _quick_check(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout / 2
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            rows = db.execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                return  # read without fault until the deadline
            raise
        finally:
            db.close()
        lines = (line.strip() for row in rows if row[0] != "ok" for line in str(row[0]).splitlines())
        problems = [line for line in lines if line and not line.startswith("***")]
        if problems:
            said = "; ".join(problems[:3])[:300]
            raise StoreError(f"the store {self.path} is damaged (SQLite's quick_check): {said}")

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
        """One write transaction, taken up front so concurrent writers queue instead of failing;
        one that fails, its COMMIT too, is rolled back: an insert whose caller was told it failed
        must not stay pending on the connection (its reads would see it, and no later write
        could begin)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")  # a COMMIT that fails (disk full) may leave the transaction open
        except BaseException:
            if db.in_transaction:  # SQLite ends some failed transactions itself (disk full)
                db.execute("ROLLBACK")
            raise

    # --- deployments -------------------------------------------------------------------------
    async def get(self, slug: str) -> Deployment | None:
        return await self._on_thread(self._get, slug)

    def _get(self, slug: str) -> Deployment | None:
        row = self.db.execute(
            f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE slug = ? AND archived = 0", (slug,)
        ).fetchone()
        return row_deployment(row) if row else None

    async def touch(self, slug: str, at: datetime) -> Deployment | None:
        """Move the current record's ``last_activity`` forward to ``at`` (never back); the
        record as it now is, None when there is none. No event: a console calls it often."""

        def work() -> Deployment | None:
            with self._write() as db:
                db.execute(TOUCH, (activity_text(at), slug, activity_text(at)))
                return self._get(slug)

        return await self._on_thread(work)

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
        """Current records by slug; ``after`` is the last slug of the previous page."""
        query, args = deployments_query(
            state=state,
            driver=driver,
            include_torn_down=include_torn_down,
            limit=limit,
            after=after,
            labels=labels,
            contains="instr",
        )
        rows = await self._on_thread(lambda: self.db.execute(query, args).fetchall())
        return [row_deployment(row) for row in rows]

    async def deployment_counts(self) -> list[tuple[str, str, int]]:
        """(state, driver, how many) of the current records, in one grouped read."""
        rows = await self._on_thread(lambda: self.db.execute(DEPLOYMENT_COUNTS).fetchall())
        return [(str(state), str(driver), int(count)) for state, driver, count in rows]

    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]:
        """The slug's current record and its queued or running operations, in one call: what
        every access to a slug looks at first."""

        def work() -> tuple[Deployment | None, list[Operation]]:
            rows = self.db.execute(ACTIVE_OF_SLUG, (slug,)).fetchall()
            return self._get(slug), [row_operation(row) for row in rows]

        return await self._on_thread(work)

    async def drivers(self) -> list[str]:
        """Every driver any record (archived or not) names: the ones reconcile asks."""

        def work() -> list[str]:
            rows = self.db.execute("SELECT DISTINCT driver FROM deployments ORDER BY driver").fetchall()
            return [row[0] for row in rows]

        return await self._on_thread(work)

    async def next_generation(self, slug: str) -> int:
        def work() -> int:
            row = self.db.execute(
                "SELECT MAX(generation) FROM deployments WHERE slug = ?", (slug,)
            ).fetchone()
            return int(row[0] or 0) + 1

        return await self._on_thread(work)

    async def save(
        self, deployment: Deployment, *, replaces: Deployment | None = None, note: str | None = None
    ) -> bool:
        """Write the record; with ``replaces`` (the record as the caller read it) only if it is
        still so: False, and nothing written, when another host changed it meanwhile (the fence
        of a settle by a host that lost its slug lock). ``note``: a settle's line for the log of
        the operation that left the record transient."""

        def work() -> bool:
            with self._write() as db:
                if replaces is not None:
                    row = db.execute(AS_READ, (replaces.slug, replaces.generation)).fetchone()
                    if not still_as_read(row, replaces):
                        return False
                before = self._get(deployment.slug)
                _save(db, deployment)
                self._changed(db, deployment.slug, before, operation=None, verb=None, note=note)
                return True

        return await self._on_thread(work)

    async def archive(self, slug: str) -> None:
        def work() -> None:
            with self._write() as db:
                before = self._get(slug)
                db.execute("UPDATE deployments SET archived = 1 WHERE slug = ? AND archived = 0", (slug,))
                if before is not None:
                    self._changed(db, slug, before, operation=None, verb=None)

        await self._on_thread(work)

    def _changed(
        self,
        db: sqlite3.Connection,
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
            rows = db.execute(PENDING_FINALS, (slug, before.generation)).fetchall()
            pending = [found for found in map(row_pending, rows) if found.id != exclude]
        change = record_changed(
            slug, before, self._get(slug), pending, operation=operation, verb=verb, note=note
        )
        db.executemany(PROGRESS_EVENT, change.logs)
        db.executemany(STATE_EVENT, change.events)

    # --- operations --------------------------------------------------------------------------
    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        """In one transaction: the operation with ``new.key`` if there is one (unless ``new``
        retakes its key: it is released when ``new`` is recorded); else the slug's
        active (queued or running) operation if there is one; else a new operation (queued, or
        already finished with ``new.done``). The caller decides whether to join or refuse."""
        return await self._on_thread(self._create_operation, new)

    def _create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        with self._write() as db:
            keyed = None if new.key is None else self._keyed(new.key)
            if keyed is not None and new.keeps(keyed):
                return keyed, "key"
            row = db.execute(ACTIVE_OF_SLUG, (new.slug,)).fetchone()
            if row:
                return row_operation(row), "active"
            if keyed is not None:
                db.execute(RELEASE_KEY, (keyed.id, new.key))
                db.execute(UNBIND_KEY, (new.key,))
            cursor = db.execute(NEW_OPERATION, new_operation_args(new))
            ident = cursor.lastrowid
            assert ident is not None
            _event(db, ident, new.slug, new.verb, "state", state=new.state, generation=new.generation)
            made = self._operation_where("id = ?", ident)
            assert made is not None
            return made, "created"

    async def begin(
        self,
        operation: int,
        deployment: Deployment,
        *,
        archive_first: bool = False,
        idle_since: datetime | None = None,
    ) -> bool:
        """Record the operation running and the deployment in its transient state: one write.
        False, and nothing written, when the operation is no longer queued (another host
        settled it: the fence that keeps a stale holder from writing), or, with ``idle_since``
        (an autostop), when the record's activity is no longer that (a touch it did not see)."""

        def work() -> bool:
            with self._write() as db:
                if idle_since is not None:
                    row = db.execute(ACTIVITY, (deployment.slug,)).fetchone()
                    if row is None or row[0] is None or datetime.fromisoformat(row[0]) != idle_since:
                        return False
                started = db.execute(
                    BEGIN_OPERATION, (utc_now().isoformat(), deployment.generation, operation)
                ).rowcount
                if not started:
                    return False
                before = self._get(deployment.slug)
                if archive_first:
                    db.execute(
                        "UPDATE deployments SET archived = 1 WHERE slug = ? AND archived = 0",
                        (deployment.slug,),
                    )
                _save(db, deployment)
                verb = db.execute("SELECT verb FROM operations WHERE id = ?", (operation,)).fetchone()[0]
                self._changed(db, deployment.slug, before, operation=operation, verb=verb)
                _event(
                    db,
                    operation,
                    deployment.slug,
                    verb,
                    "state",
                    state="running",
                    record_state=deployment.state,
                    generation=deployment.generation,
                )
                return True

        return await self._on_thread(work)

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
                was = db.execute(OPERATION_WAS, (operation,)).fetchone()
                changed = db.execute(END_OPERATION, end_args(operation, state, error, result)).rowcount
                if not changed:
                    return False  # fenced: the record stays as whoever settled it wrote it
                _, slug, verb, generation = was
                before = self._get(slug)
                if deployment is not None:
                    _save(db, deployment)
                    if archive:
                        db.execute(
                            "UPDATE deployments SET archived = 1 WHERE slug = ? AND generation = ?",
                            (deployment.slug, deployment.generation),
                        )
                    self._changed(db, slug, before, operation=operation, verb=verb, exclude=operation)
                elif final_waits(was, before):
                    return True  # its final event is written by the write that settles the record
                record = self._get(slug)
                _event(
                    db,
                    operation,
                    slug,
                    verb,
                    "state",
                    state=state,
                    error=error,
                    record_state=record.state if record else None,
                    message=(error or {}).get("message"),
                    generation=generation,
                )
                return True

        return await self._on_thread(work)

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
                _event(
                    db,
                    operation,
                    found.slug,
                    found.verb,
                    "cancel",
                    message=reason,
                    generation=found.generation,
                )
                return found.model_copy(update={"cancel_requested": reason})

        return await self._on_thread(work)

    async def keyed(self, key: str) -> Operation | None:
        """The operation idempotency key ``key`` answers (it started it, or joined it), if any."""
        return await self._on_thread(self._keyed, key)

    def _keyed(self, key: str) -> Operation | None:
        row = self.db.execute(KEYED, (key, key)).fetchone()
        return row_operation(row) if row else None

    async def bind_key(self, key: str, operation: int, *, retakes: int | None = None) -> Operation | None:
        """Bind ``key``, which joined ``operation``, to it for good; the operation the key
        answers now: ``operation``, or the one the key was bound to first (a concurrent start
        with it). A key bound to ``retakes`` (finished: its start failed on a write) is taken
        over. None if ``operation`` is gone."""

        def work() -> Operation | None:
            with self._write() as db:
                found = self._keyed(key)
                if found is not None and not (found.id == retakes and found.finished):
                    return found
                if found is not None:
                    db.execute(RELEASE_KEY, (found.id, key))
                    db.execute(UNBIND_KEY, (key,))
                db.execute(BIND_KEY, (key, operation))
                return self._operation_where("id = ?", operation)

        return await self._on_thread(work)

    async def operation(self, operation: int, *, with_log: bool = False) -> Operation | None:
        """The operation ``operation``; ``with_log``: with its log."""

        def work() -> Operation | None:
            found = self._operation_where("id = ?", operation)
            if found is not None and with_log:
                final = self.db.execute(FINAL_OF, (found.id,)).fetchone()
                found = found.model_copy(update={"log": self._log(found.id), "final_seq": final[0]})
            return found

        return await self._on_thread(work)

    def _operation_where(self, condition: str, value: object) -> Operation | None:
        row = self.db.execute(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE {condition}", (value,)
        ).fetchone()
        return row_operation(row) if row else None

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
        """Operations by id; ``active``: queued or running only; ``after`` is the last id of the
        previous page; ``with_log`` fills each one's log from its progress and log events."""

        query, args = operations_query(
            slug=slug, state=state, active=active, limit=limit, after=after, actor=actor
        )

        def work() -> list[Operation]:
            found = [row_operation(row) for row in self.db.execute(query, args).fetchall()]
            if with_log:
                found = [op.model_copy(update={"log": self._log(op.id)}) for op in found]
            return found

        return await self._on_thread(work)

    def _log(self, operation: int) -> tuple[LogLine, ...]:
        return tuple(row_log_line(row) for row in self.db.execute(LOG_OF, (operation,)).fetchall())

    async def last_operation(self, slug: str, generation: int) -> Operation | None:
        """The last finished operation of that generation of ``slug``."""

        def work() -> Operation | None:
            row = self.db.execute(LAST_FINISHED, (slug, generation)).fetchone()
            return row_operation(row) if row else None

        return await self._on_thread(work)

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
            await self._on_thread(work)

    async def prune_progress(self, before: datetime) -> int:
        """Delete the ``progress`` events of operations that finished before ``before``; how many."""

        def work() -> int:
            with self._write() as db:
                return db.execute(PRUNE_PROGRESS, (before.isoformat(),)).rowcount

        return await self._on_thread(work)

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
            return [row_event(row) for row in rows]

        return await self._on_thread(work)

    async def last_seq(self) -> int:
        def work() -> int:
            row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._on_thread(work)


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
    generation: int | None = None,
) -> None:
    db.execute(
        STATE_EVENT,
        state_event_args(
            operation,
            slug,
            verb,
            kind,
            state=state,
            message=message,
            error=error,
            record_state=record_state,
            generation=generation,
        ),
    )


def _save(db: sqlite3.Connection, deployment: Deployment) -> None:
    db.execute(SAVE, save_args(deployment))
