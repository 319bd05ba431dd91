"""What every store shares: the ``Store`` interface, the records a write takes, and the SQL both
stores run, written once with SQLite's ``?`` (``PostgresStore`` runs it through ``for_postgres``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from hearth_adaptersdk import DeploymentRef, utc_now

from .._models import Deployment, Event, EventKind, LogLine, Operation, OperationState, synthesized_ref
from .._states import TRANSIENT, final_event_waits
from ._locks import Locks

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
    #: Who asked for it, and whom for (``Operation.actor``, ``Operation.on_behalf_of``).
    actor: str | None = None
    on_behalf_of: str | None = None
    #: Record it already finished (a verb with nothing to do): its state and ref.
    done: tuple[OperationState, DeploymentRef | None] | None = None
    #: The finished operation whose ``key`` this one takes over (``_states.key_released``: its
    #: start failed on a store write); it keeps no key. Any other operation with the key is
    #: returned as found.
    retakes: int | None = None

    def keeps(self, keyed: Operation) -> bool:
        """Whether ``keyed``, the operation found with this key, keeps it (is the answer)."""
        return not (keyed.id == self.retakes and keyed.finished)

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
        labels: dict[str, str] | None = None,
    ) -> list[Deployment]: ...
    async def deployment_counts(self) -> list[tuple[str, str, int]]: ...
    async def next_generation(self, slug: str) -> int: ...
    async def drivers(self) -> list[str]: ...
    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]: ...
    async def save(
        self, deployment: Deployment, *, replaces: Deployment | None = None, note: str | None = None
    ) -> bool: ...
    async def archive(self, slug: str) -> None: ...
    # operations
    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]: ...
    async def begin(
        self,
        operation: int,
        deployment: Deployment,
        *,
        archive_first: bool = False,
        idle_since: datetime | None = None,
    ) -> bool: ...
    async def touch(self, slug: str, at: datetime) -> Deployment | None: ...
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
    async def bind_key(self, key: str, operation: int, *, retakes: int | None = None) -> Operation | None: ...
    async def operation(self, operation: int, *, with_log: bool = False) -> Operation | None: ...
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
    ) -> list[Operation]: ...
    async def last_operation(self, slug: str, generation: int) -> Operation | None: ...
    # events
    async def add_events(self, events: Sequence[NewEvent]) -> None: ...
    async def prune_progress(self, before: datetime) -> int: ...
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


class LeasedStore(Store, Protocol):
    """A store several hosts share (PostgreSQL): each host holds a lease, renewed while it
    lives, by which the others know whether its operations are still run."""

    async def renew_lease(self, owner: str, seconds: float) -> None: ...
    async def lease_alive(self, owner: str) -> bool: ...
    async def drop_lease(self, owner: str) -> None: ...
    async def orphaned(self) -> list[Operation]: ...
    def slug_locks(self, owner: str) -> Locks: ...


def reason_of(exc: BaseException) -> str:
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
    "tier, driver, reuse, owner, cancel_requested, actor, on_behalf_of"
)
DEPLOYMENT_COLUMNS = (
    "slug, generation, tier, driver, state, ref, reason, created_at, updated_at, unconfirmed, backend_id, "
    "labels, last_activity"
)
EVENT_COLUMNS = (
    "seq, at, operation, slug, verb, kind, state, level, message, fraction, error, record_state, "
    "generation, record"
)
#: What an event is read with: its columns, and its operation's actor and on-behalf-of (kept
#: once, on the operation; an event of no operation has none).
EVENT_SELECT = (
    ", ".join(f"e.{column.strip()}" for column in EVENT_COLUMNS.split(","))
    + ", o.actor, o.on_behalf_of FROM events e LEFT JOIN operations o ON o.id = e.operation"
)


# --- the statements both stores run ------------------------------------------------------------------
# Written once with SQLite's ``?``; ``PostgresStore`` runs them through ``for_postgres``.
SAVE = (
    f"INSERT INTO deployments ({DEPLOYMENT_COLUMNS}, listing) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (slug, generation) DO UPDATE SET tier = excluded.tier, "
    "driver = excluded.driver, state = excluded.state, ref = excluded.ref, "
    "reason = excluded.reason, updated_at = excluded.updated_at, "
    "unconfirmed = excluded.unconfirmed, listing = excluded.listing, "
    "backend_id = excluded.backend_id, labels = excluded.labels, "
    # activity only moves forward: a write of a record read before a touch keeps the touch
    "last_activity = CASE WHEN deployments.last_activity IS NULL "
    "OR excluded.last_activity > deployments.last_activity "
    "THEN excluded.last_activity ELSE deployments.last_activity END"
)
#: A touch: the current record's activity moved forward to ``at``, never back (args: at, slug,
#: at). One statement, so it is ordered against ``begin``'s fence by the database.
TOUCH = (
    "UPDATE deployments SET last_activity = ? WHERE slug = ? AND archived = 0 "
    "AND (last_activity IS NULL OR last_activity < ?)"
)
#: ``begin``'s autostop fence: the current record's activity, read in the begin's transaction.
ACTIVITY = "SELECT last_activity FROM deployments WHERE slug = ? AND archived = 0"
#: The record as the caller read it (``save(replaces=)``'s fence).
AS_READ = "SELECT updated_at, state FROM deployments WHERE slug = ? AND generation = ? AND archived = 0"
NEW_OPERATION = (
    "INSERT INTO operations (slug, generation, verb, state, created_at, started_at, finished_at, "
    "result, key, tier, driver, reuse, owner, actor, on_behalf_of) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The operation an idempotency key answers: the one it started, or the one it joined (bound in
#: ``operation_keys``); args (key, key).
KEYED = (
    f"SELECT {OPERATION_COLUMNS} FROM operations WHERE id = COALESCE("
    "(SELECT id FROM operations WHERE key = ?), (SELECT operation FROM operation_keys WHERE key = ?))"
)
#: Gives a finished operation's idempotency key up to the operation that retakes it, whether
#: the key started it (args: id, key) ...
RELEASE_KEY = "UPDATE operations SET key = NULL WHERE id = ? AND key = ?"
#: ... or joined it (args: key).
UNBIND_KEY = "DELETE FROM operation_keys WHERE key = ?"
#: Binds a key that joined an operation to it (args: key, operation).
BIND_KEY = "INSERT INTO operation_keys (key, operation) VALUES (?, ?)"
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
    "INSERT INTO events (at, operation, slug, verb, kind, state, message, error, record_state, "
    "generation, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A progress or log event, with its operation's generation.
PROGRESS_EVENT = (
    "INSERT INTO events (at, operation, slug, verb, kind, level, message, fraction, generation) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, (SELECT generation FROM operations WHERE id = ?))"
)
#: An operation as ``end`` finds it: its state before, and what its events carry.
OPERATION_WAS = "SELECT state, slug, verb, generation FROM operations WHERE id = ?"
#: The finished operations of a generation whose final event waits for its record to settle
#: (``_states.final_event_waits``).
PENDING_FINALS = (
    "SELECT id, verb, state, error, generation FROM operations o WHERE slug = ? AND generation = ? "
    "AND state NOT IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM events e "
    "WHERE e.operation = o.id AND e.kind = 'state' AND e.state = o.state) ORDER BY id"
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
#: The ``progress`` events of operations that finished before a moment (ISO text, as stored).
PRUNE_PROGRESS = (
    "DELETE FROM events WHERE kind = 'progress' AND operation IN "
    "(SELECT id FROM operations WHERE finished_at IS NOT NULL AND finished_at < ?)"
)
#: How many current records each (state, driver) has: one grouped read, whatever the count,
#: for the daemon's ``hearth_workspaces`` gauge (every replica on one database sees the same).
DEPLOYMENT_COUNTS = (
    "SELECT state, driver, COUNT(*) FROM deployments WHERE archived = 0 "
    "GROUP BY state, driver ORDER BY state, driver"
)
#: The ``seq`` of an operation's final event, once written.
FINAL_OF = (
    "SELECT MAX(seq) FROM events WHERE operation = ? AND kind = 'state' "
    "AND state IN ('succeeded', 'failed', 'cancelled', 'interrupted')"
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
        labels_json(deployment.labels),
        activity_text(deployment.last_activity or deployment.updated_at),
        None if ref is not None else listing_ref(deployment),
    )


def activity_text(at: datetime) -> str:
    """A time as ``last_activity`` stores it: UTC ISO with microseconds always, so that the
    text compares as the times do (``SAVE``'s and ``TOUCH``'s forward-only rule)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def labels_json(labels: dict[str, str]) -> str:
    """Labels as stored: JSON with sorted keys and no spaces, so that one label is the
    substring ``"key":"value"`` of it (keys and values hold no quote), what ``labelled`` finds."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


#: How each store asks whether a text holds another: SQLite's ``instr``, PostgreSQL's ``strpos``
#: (both case-sensitive, unlike SQLite's ``LIKE``).
Contains = Literal["instr", "strpos"]


def labelled(labels: dict[str, str] | None, contains: Contains) -> tuple[list[str], list[Any]]:
    """The conditions (and their args) that a record's ``labels`` column carries every label
    of ``labels``."""
    where, args = list[str](), list[Any]()
    for key, value in sorted((labels or {}).items()):
        where.append(f"{contains}(labels, ?) > 0")
        args.append(json.dumps({key: value}, separators=(",", ":"))[1:-1])
    return where, args


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
        new.actor,
        new.on_behalf_of,
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
    operation: int | None,
    slug: str,
    verb: str | None,
    kind: EventKind,
    *,
    state: str | None,
    message: str | None,
    error: dict[str, Any] | None,
    record_state: str | None,
    generation: int | None = None,
    record: Deployment | None = None,
) -> tuple[Any, ...]:
    error_json = json.dumps(error) if error is not None else None
    # the record as stored: ``operation`` is a read's, never part of it
    record_json = record.model_dump_json(exclude={"operation"}) if record is not None else None
    return (
        utc_now().isoformat(),
        operation,
        slug,
        verb,
        kind,
        state,
        message,
        error_json,
        record_state,
        generation,
        record_json,
    )


def progress_event_args(e: NewEvent) -> tuple[Any, ...]:
    return (
        e.at.isoformat(),
        e.operation,
        e.slug,
        e.verb,
        e.kind,
        e.level,
        e.message,
        e.fraction,
        e.operation,
    )


@dataclass(frozen=True)
class Pending:
    """A finished operation whose final event waits for its record to settle."""

    id: int
    verb: str
    state: str
    error: dict[str, Any] | None
    generation: int


def row_pending(row: Sequence[Any]) -> Pending:
    ident, verb, state, error, generation = row
    return Pending(int(ident), verb, state, json.loads(error) if error else None, int(generation))


def final_waits(was: Sequence[Any] | None, before: Deployment | None) -> bool:
    """Whether ``end`` leaves the final event to the settle (``OPERATION_WAS`` row, the record)."""
    if was is None:
        return False
    record = None if before is None else (before.state, before.generation)
    return final_event_waits(was[0], record, int(was[3]))


@dataclass(frozen=True)
class Change:
    """The events a change of a slug's record writes, in order (``record_changed``): the
    settle's note in the log of the operation that left it transient, one ``workspace`` event
    with the record as it now is, then the final events that waited for it."""

    events: list[tuple[Any, ...]]
    logs: list[tuple[Any, ...]]


def record_changed(
    slug: str,
    before: Deployment | None,
    after: Deployment | None,
    pending: Sequence[Pending],
    *,
    operation: int | None,
    verb: str | None,
    note: str | None = None,
) -> Change:
    """What a write that changed ``slug``'s record from ``before`` to ``after`` appends. Its
    cause is ``operation`` or, for a settle, the operation that left the record transient."""
    logs = []
    if pending and note:
        last = pending[-1]
        logs.append(progress_event_args(NewEvent(last.id, slug, last.verb, "log", "info", note)))
    if operation is None and pending:
        operation, verb = pending[-1].id, pending[-1].verb
    now = after or before
    events = [
        state_event_args(
            operation,
            slug,
            verb,
            "workspace",
            state=None,
            message=None,
            error=None,
            record_state=None if after is None else after.state,
            generation=None if now is None else now.generation,
            record=after,
        )
    ]
    for op in pending:
        events.append(
            state_event_args(
                op.id,
                slug,
                op.verb,
                "state",
                state=op.state,
                message=(op.error or {}).get("message"),
                error=op.error,
                record_state=None if after is None else after.state,
                generation=op.generation,
            )
        )
    return Change(events, logs)


def settles(before: Deployment | None) -> bool:
    """Whether a write over ``before`` may settle operations whose final event waits."""
    return before is not None and before.state in TRANSIENT


def deployments_query(
    *,
    state: str | None,
    driver: str | None,
    include_torn_down: bool,
    limit: int | None,
    after: str | None,
    labels: dict[str, str] | None = None,
    contains: Contains = "instr",
) -> tuple[str, list[Any]]:
    """Current records by slug, filtered (``labels``: carrying each of them); ``after`` is the
    last slug of the previous page."""
    where, args = labelled(labels, contains)
    where.insert(0, "archived = 0")
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
    *,
    slug: str | None,
    state: str | None,
    active: bool,
    limit: int | None,
    after: int | None,
    actor: str | None = None,
) -> tuple[str, list[Any]]:
    """Operations by id, filtered; ``after`` is the last id of the previous page."""
    where, args = ["1 = 1"], list[Any]()
    if active:
        where.append("state IN ('queued', 'running')")
    for column, value in (("slug", slug), ("state", state), ("actor", actor)):
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
    where, args = ["e.seq > ?"], list[Any]([after])
    for column, value in (("kind", kind), ("slug", slug), ("operation", operation)):
        if value is not None:
            where.append(f"e.{column} = ?")
            args.append(value)
    return (
        f"SELECT {EVENT_SELECT} WHERE {' AND '.join(where)} ORDER BY e.seq LIMIT {int(limit)}",
        args,
    )


def row_deployment(row: tuple[Any, ...]) -> Deployment:
    slug, generation, tier, driver, state, ref, reason, created, updated, unconfirmed, backend_id = row[:11]
    labels = row[11]
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
        labels=json.loads(labels) if labels else {},
        last_activity=datetime.fromisoformat(row[12]) if len(row) > 12 and row[12] else None,
    )


def row_operation(row: tuple[Any, ...]) -> Operation:
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
        actor,
        on_behalf_of,
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
        actor=actor,
        on_behalf_of=on_behalf_of,
    )


def row_log_line(row: tuple[Any, ...]) -> LogLine:
    at, level, message, fraction = row
    return LogLine(
        at=datetime.fromisoformat(at), level=level or "info", message=message or "", fraction=fraction
    )


def row_event(row: tuple[Any, ...]) -> Event:
    seq, at, operation, slug, verb, kind, state, level, message, fraction, error, record_state = row[:12]
    generation, record = row[12:14]
    actor, on_behalf_of = row[14:16] if len(row) >= 16 else (None, None)
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
        generation=generation,
        record=Deployment.model_validate_json(record) if record else None,
        actor=actor,
        on_behalf_of=on_behalf_of,
    )


def listing_ref(deployment: Deployment) -> str:
    """The ref ``hearth ls`` shows for a record without one (its provision failed), made by the
    model when the record is written, so that ``ls`` never loads the models to list it."""
    return synthesized_ref(deployment).model_dump_json()
