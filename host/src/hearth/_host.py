"""``Host``: the HEARTH rules of seed 000 on top of any adapter, with work as operations.

A verb is an operation: ``start_provision`` (and ``start_upgrade``, ``start_teardown``) check the
input and the lifecycle rules at once, record the operation (queued, visible to every process
sharing the store) and run it in a task the host owns. The task takes the slug's cross-process
lock, reads the record again, checks the transition, starts the adapter, records the transient
state, calls the adapter (each progress event goes to the store's event log) and records the
outcome by the rules of ``_states.py``: a failed verb marks the deployment ``failed`` and is never
retried (D8); an answer that says nothing changed leaves the record as it was; a cancel whose
rollback is not confirmed says so. A start with a used key returns that operation; one that
matches the slug's running operation joins it; one that conflicts with it is ``busy``. An
operation whose host died is settled on the next access to its slug. Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import inspect
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self, cast

from pydantic import BaseModel, Field, PlainSerializer, ValidationError

from hearth_adaptersdk import (
    DeploymentRef,
    PlanResult,
    Progress,
    ProvisioningProfile,
    StatusReport,
    codes,
    utc_now,
)

from ._client import AdapterClient, Interruption, ProgressCallback
from ._dirs import find_project_dir, resolve_home, state_dir
from ._discovery import DriverInfo, candidates, discover_all
from ._errors import (
    AdapterError,
    BackendFailure,
    BackendUnavailable,
    Busy,
    CallTimeout,
    Cancelled,
    Conflict,
    HearthError,
    Interrupted,
    InvalidInput,
    NotFound,
    ProtocolViolation,
    SlugLocked,
    StoreError,
    Unsupported,
)
from ._locks import Locks, OwnerMark, SlugLocks, new_owner
from ._models import FINISHED, Deployment, Event, Operation, existing_json, synthesized_ref
from ._records import STORE_FILE
from ._settings import Settings, SettingsSource, Tier, Timeouts, positive_seconds
from ._states import (
    TRANSIENT,
    Plan,
    Recorded,
    Transition,
    Verb,
    cancel_rolled_back,
    changed_nothing,
    joins,
    plan,
    resolve,
    same_ready,
    teardown_done,
)
from ._store import STORE_ENV, LeasedStore, NewEvent, NewOperation, SQLiteStore, Store, store_from_url
from ._supervisor import ConnectionFactory, Supervisor

log = logging.getLogger("hearth")

#: How long a verb waits for another process's work on the same slug when it has no timeout.
DEFAULT_LOCK_WAIT = Timeouts.lock_wait
#: How much of a caller's input an error message repeats.
ECHO = 80
#: The longest idempotency key accepted.
KEY_MAX = 200
#: How often a host looks for other processes' events while someone waits for them (seconds).
POLL = 0.02
#: With a store that notifies (PostgreSQL): the longest wait for a notification before the
#: host reads the store's last event anyway (a notification lost with a broken connection).
LISTEN_FALLBACK = 0.5
#: How often a wait for another process's operation checks that its host is alive (seconds).
LIVENESS = 1.0
STATES: frozenset[str] = frozenset(
    {"provisioning", "ready", "upgrading", "failed", "tearing_down", "tier_torn_down"}
)
VERB_OF: dict[str, Verb] = {"provisioning": "provision", "upgrading": "upgrade", "tearing_down": "teardown"}
Call = Callable[[AdapterClient, float | None, ProgressCallback, Interruption], Any]
#: ``on_progress`` may be a plain function or a coroutine function.
ProgressListener = Callable[[Progress], object] | Callable[[Progress], Awaitable[object]]


def _resolved_json(resolved: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"slug": slug, "from": old, "to": new} for slug, old, new in resolved]


class ReconcileReport(BaseModel):
    """What ``reconcile`` found and did; nothing is ever deleted. Its JSON form writes each
    resolution as ``{"slug", "from", "to"}``."""

    #: (slug, recorded state, resolved state) for records left transient or unconfirmed.
    resolved: Annotated[
        list[tuple[str, str, str]], PlainSerializer(_resolved_json, return_type=list[dict[str, str]])
    ] = Field(default_factory=list)
    #: Records that claim a backend the adapter confirms absent: marked failed.
    ghosts: list[str] = Field(default_factory=list)
    #: Deployments an adapter lists that have no record: reported, never removed.
    orphans: list[DeploymentRef] = Field(default_factory=list)
    #: Slugs skipped because another process is working on them right now.
    busy: list[str] = Field(default_factory=list)
    #: Drivers that could not be asked, with the reason (their records are left as they are).
    unreachable: dict[str, str] = Field(default_factory=dict)
    #: A dry run: what is listed above would be done; nothing was changed.
    dry_run: bool = False

    @property
    def drift(self) -> bool:
        """Whether records and backends disagree (what a dry run exits 3 for)."""
        return bool(self.resolved or self.ghosts or self.orphans)


class CheckResult(BaseModel):
    """Whether a verb would be accepted now (``Host.check``); nothing was started."""

    slug: str
    verb: str
    accepted: bool
    #: The error the verb would fail with at once, when it would not be accepted.
    error: dict[str, Any] | None = None
    #: The operation it would join (same verb and arguments already running).
    joins: int | None = None


def echo(value: object, size: int = ECHO) -> str:
    """``repr`` of a caller's input, cut: an error never repeats a 100,000-character slug."""
    text = repr(value)
    if len(text) <= size:
        return text
    return repr(value[:size]) + "…" if isinstance(value, str) else text[:size] + "…"


@dataclass
class _Work:
    """An operation this host runs: its task, who listens to its progress, why it was cancelled."""

    operation: Operation
    task: asyncio.Task[DeploymentRef | None] | None = None
    listeners: builtins.list[ProgressListener] = field(default_factory=builtins.list)
    cancel: tuple[str, str] | None = None
    begun: bool = False
    #: Ends the operation of a task cancelled before its first step (``Host._work_done``).
    ending: asyncio.Future[None] | None = None


@dataclass(frozen=True)
class _Request:
    """One start's arguments, checked."""

    verb: Verb
    slug: str
    tier: str | None = None
    driver: str | None = None
    reuse: bool = False
    key: str | None = None
    deadline: float | None = None


class _Bus:
    """Wakes whoever waits for events: at once for this process's writes, within ``POLL`` for
    another process's (one poll of the store's last sequence number, shared by every waiter;
    it runs only while someone waits or this host runs work, whose cancel requests it reads)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._future: asyncio.Future[None] | None = None
        self._seen = 0
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None
        #: Set by ``Host.close``: waiters end, nothing polls again.
        self.closed = False

    def bump(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next change; take it before reading, so none is missed."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        self.ensure_polling()
        return self._future

    @contextlib.contextmanager
    def interest(self) -> Iterator[None]:
        self._waiters += 1
        try:
            self.ensure_polling()
            yield
        finally:
            self._waiters -= 1

    def ensure_polling(self) -> None:
        if not self.closed and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="hearth-events")

    def _wanted(self) -> bool:
        return bool(self._waiters or self._host._work or (self._future and not self._future.done()))

    async def _poll(self) -> None:
        host = self._host
        try:
            store = await host._opened()
            waiting = getattr(store, "wait_change", None)
            if not self._seen:
                self._seen = await store.last_seq()
            while self._wanted() and host._store is not None:
                seq = await store.last_seq()
                if seq > self._seen:
                    if host._work:
                        for event in await store.events(after=self._seen, kind="cancel", limit=10_000):
                            work = host._work.get(event.operation)
                            if work is not None:
                                host._cancel_work(work, "cancelled", event.message or "cancelled by request")
                    self._seen = seq
                    self.bump()
                if waiting is not None:  # the database wakes us when another host writes
                    await waiting(LISTEN_FALLBACK)
                else:
                    await asyncio.sleep(POLL)
        except HearthError as exc:
            log.error("watching the store's events stopped: %s", exc.message)
            self.bump()

    async def close(self) -> None:
        self.closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        self.bump()


class Host:
    """Deploys and manages workspaces; use as ``async with Host(...) as host``."""

    def __init__(
        self,
        project_dir: str | Path | None = None,
        home: str | Path | None = None,
        tiers: Mapping[str, Tier] | None = None,
        *,
        handshake_timeout: float | None = None,
        idle_timeout: float | None = 60.0,
        lock_wait: float | None = None,
        store: Store | None = None,
        in_process: Mapping[str, ConnectionFactory] | None = None,
        cancel_grace: float | None = None,
        drain_grace: float | None = None,
        store_url: str | None = None,
    ) -> None:
        """``in_process`` maps driver names to connection factories (e.g. an in-memory driver)
        that take precedence over discovery; ``store`` replaces the SQLite registry, as does
        ``store_url`` (``postgresql://...``; else ``$HEARTH_STORE``, else ``store`` in
        hearth.toml, else the home's SQLite file);
        ``idle_timeout=None`` keeps adapters running until the host closes. The bounds left
        None come from ``[timeouts]`` in hearth.toml (re-read when the file changes), else the
        defaults of ``Timeouts``."""
        self.project_dir = find_project_dir(project_dir)
        self.home = resolve_home(home)
        self.state_dir = state_dir(self.home)
        overrides = {
            name: _positive(value, name)
            for name, value in (
                ("handshake", handshake_timeout),
                ("lock_wait", lock_wait),
                ("cancel_grace", cancel_grace),
                ("drain_grace", drain_grace),
            )
            if value is not None
        }
        if idle_timeout is not None:
            _positive(idle_timeout, "idle_timeout")
        self._settings_source = SettingsSource(self.project_dir, tiers, overrides)
        self.settings: Settings = self._settings_source.current()
        self._store_arg = store
        self._store_url = store_url
        self._store: Store | None = None
        #: Whether the store is shared beyond this home (a database other homes use too): then
        #: a lease in the store, not a mark in the home, proves this host alive.
        self.shared_store = False
        self._renewing: asyncio.Task[None] | None = None
        self._store_ready: asyncio.Future[None] | None = None
        self._locks: Locks = SlugLocks(self.state_dir / "locks")
        #: Who runs this host's operations, as other processes see it.
        self.owner = new_owner()
        self._mark = OwnerMark(self.state_dir / "owners", self.owner)
        self._events: builtins.list[NewEvent] = []
        self._flushing: asyncio.Task[None] | None = None
        self._work: dict[int, _Work] = {}
        self._bus = _Bus(self)
        self._background: set[asyncio.Task[Any]] = set()
        #: One line per cancellation this host settled: what became of the work.
        self.interruptions: builtins.list[str] = []
        self._supervisor = Supervisor(
            self.settings,
            self.state_dir,
            project_dir=self.project_dir,
            home=self.home,
            handshake_timeout=self.timeouts.handshake,
            idle_timeout=idle_timeout,
            in_process=in_process,
            cancel_grace=self.timeouts.cancel_grace,
        )

    @property
    def timeouts(self) -> Timeouts:
        return self.settings.timeouts

    def reload_settings(self) -> Settings:
        """Read hearth.toml now, as the next call would (the daemon does it on SIGHUP); an
        invalid file raises ``InvalidInput`` and the calls fail with it until it is fixed."""
        self._refresh_settings()
        return self.settings

    def _refresh_settings(self) -> None:
        """Pick up an edited hearth.toml (one ``stat`` when it did not change)."""
        settings = self._settings_source.current()
        if settings is not self.settings:
            self.settings = settings
            self._supervisor.update_settings(settings)

    # --- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.open()
        await self._opened()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Prepare the home and the store (opened on first use); ``async with`` does this."""
        if self._store is None:
            if self._store_arg is None:
                self._prepare_home()
            self._store = self._store_arg or self._store_named()
            self.shared_store = hasattr(self._store, "renew_lease")
            if self.shared_store:  # slugs are locked in the database, for every host on it
                self._locks = self._leased().slug_locks(self.owner)
            self._store_ready = None
            self._bus = _Bus(self)
            self._mark.acquire()

    def _store_named(self) -> Store:
        url = self._store_url or os.environ.get(STORE_ENV, "").strip() or self.settings.store
        if not url:
            return SQLiteStore(self.state_dir / STORE_FILE)
        return store_from_url(url)

    async def _opened(self) -> Store:
        """The store, opened once (on the store's own thread)."""
        store = self.store
        if self._store_ready is None:
            self._store_ready = asyncio.get_running_loop().create_future()
            try:
                await store.open()
                if self.shared_store:  # proven alive before it records anything
                    await self._leased().renew_lease(self.owner, self.timeouts.lease)
                    self._renewing = asyncio.get_running_loop().create_task(
                        self._renew_lease(), name="hearth-lease"
                    )
            except BaseException as exc:
                self._store_ready.set_exception(exc)
                self._store_ready.exception()  # retrieved: the caller raises it
                self._store_ready = None
                raise
            self._store_ready.set_result(None)
        elif not self._store_ready.done():
            await asyncio.shield(self._store_ready)
        return store

    def _leased(self) -> LeasedStore:
        return cast(LeasedStore, self.store)

    async def _renew_lease(self) -> None:
        """Renew this host's lease every third of it while the host is open, and take over the
        operations of hosts whose lease ran out (each is ended ``interrupted`` and its record
        settled from the adapter's ``status``; hosts racing to do so settle it once). A
        renewal that fails is logged and tried again: past the lease, others take over."""
        while self._store is not None:
            await asyncio.sleep(self.timeouts.lease / 3)
            store = self._leased()
            try:
                await store.renew_lease(self.owner, self.timeouts.lease)
                for operation in await store.orphaned():
                    if operation.id in self._work:
                        continue  # ours: our lease was late, the work goes on (the fence guards it)
                    log.info(
                        "taking over operation #%s (%s of %s): its host %s holds no lease",
                        operation.id,
                        operation.verb,
                        operation.slug,
                        operation.owner,
                    )
                    await self._interrupted(operation)
                    await self._heal(operation.slug)
            except HearthError as exc:
                log.warning("the lease of %s could not be renewed: %s", self.owner, exc.message)

    def _prepare_home(self) -> None:
        folder = self.state_dir
        if folder.exists() and not folder.is_dir():
            raise StoreError(
                f"the hearth home {folder} is not a folder; set HEARTH_HOME (or --home) to a folder"
            )
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"the hearth home {folder} cannot be created: {exc.strerror or exc}") from None

    async def close(self) -> None:
        """Let operations in flight finish (``drain_grace``), cancel the rest (recorded
        ``interrupted``), then stop every adapter this host started and close the store."""
        active = [work.task for work in self._work.values() if work.task is not None and not work.task.done()]
        if active:
            _, pending = await asyncio.wait(active, timeout=self.timeouts.drain_grace)
            for work in builtins.list(self._work.values()):
                if work.task in pending:
                    self._cancel_work(work, "interrupted", "the host was closed while it ran")
            if pending:
                await asyncio.wait(pending, timeout=self.timeouts.cancel_grace + 5.0)
        await self._bus.close()
        for task in builtins.list(self._background):
            task.cancel()
        await self._supervisor.close()
        closer = getattr(self._locks, "close", None)
        if closer is not None:  # the database's locks: their session ends
            with contextlib.suppress(HearthError):
                await closer()
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(BaseException):
                await self._renewing
            self._renewing = None
        if self._store is not None:
            with contextlib.suppress(HearthError):
                await self._flush_events()
            if self.shared_store and self._store_ready is not None and self._store_ready.done():
                with contextlib.suppress(HearthError):  # its operations are all ended now
                    await self._leased().drop_lease(self.owner)
            if self._store_ready is not None and self._store_ready.done():
                await self._store.close()
            self._store = None
            self._store_ready = None
            self._mark.release()

    def cancel_running(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int:
        """Cancel every operation this host runs, recording ``reason``; the number cancelled.
        The CLI calls it on SIGINT/SIGTERM/SIGHUP (``outcome`` ``interrupted`` for the latter).
        ``again`` (the CLI's second signal): stop waiting for the rollbacks already asked for;
        their records then say the rollback is not confirmed."""
        return sum(
            self._cancel_work(work, outcome, reason, again=again)
            for work in builtins.list(self._work.values())
        )

    def _cancel_work(self, work: _Work, outcome: str, reason: str, *, again: bool = False) -> bool:
        """Cancel the work once: a second cancel of a task cuts its rollback short, which only
        ``again`` asks for."""
        if work.task is None or work.task.done():
            return False
        if work.cancel is not None:
            if again:
                work.task.cancel()
            return again
        work.cancel = (outcome, reason)
        work.task.cancel()
        return True

    @property
    def store(self) -> Store:
        if self._store is None:
            raise HearthError("the host is closed; use 'async with Host(...)'")
        return self._store

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    # --- input checks --------------------------------------------------------------------------
    def _check_slug(self, slug: str) -> None:
        if not isinstance(slug, str) or not re.fullmatch(codes.SLUG_PATTERN, slug):
            raise InvalidInput(
                f"{echo(slug)} is not a workspace slug: use 1 to 63 lowercase "
                "letters, digits and '-', starting and ending with a letter or digit"
            )

    def _check_key(self, key: str | None) -> None:
        if key is not None and (
            not isinstance(key, str) or not 0 < len(key) <= KEY_MAX or not key.isprintable()
        ):
            raise InvalidInput(
                f"{echo(key)} is not an idempotency key: use 1 to {KEY_MAX} printable characters"
            )

    def _check_driver(self, driver: str) -> None:
        if not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver):
            raise InvalidInput(
                f"{echo(driver)} is not a driver name (lowercase letters, digits and '-', at most 40)"
            )
        if self._supervisor.knows(driver) or driver in self._supervisor.running():
            return
        if candidates(driver, self.project_dir, self.home):
            return  # whether it may run is for discover() to say, with its reasons
        available = {
            c.driver for c in discover_all(project_dir=self.project_dir, home=self.home) if c.acceptable
        }
        available |= self._supervisor.in_process_drivers()
        choices = ", ".join(sorted(available)) or "none installed"
        raise InvalidInput(
            f"unknown driver {driver!r}: no hearth-adapter-{driver} found; available: {choices}"
        )

    def _profile(self, tier: str, driver: str) -> ProvisioningProfile:
        try:
            return self.settings.profile(tier, driver)
        except ValidationError as exc:
            raise InvalidInput(
                f"tier {echo(tier)} does not make a valid profile for driver "
                f"{driver!r}: {exc.errors(include_url=False)[0]['msg']}"
            ) from None

    async def _existing(self, slug: str, record: Deployment | None = None) -> Deployment:
        found = record or await self.store.get(slug)
        if found is None:
            hint = ""
            history = await self.store.operations(slug=slug)
            if history:
                last = history[-1]
                hint = (
                    f" (its last operation, {last.verb} #{last.id}, ended {last.outcome} "
                    "and left no workspace)"
                )
            raise NotFound(f"no workspace {slug!r}{hint}")
        return found

    # --- operations: start ---------------------------------------------------------------------
    async def start_provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        key: str | None = None,
        reuse: bool = False,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
    ) -> Operation:
        """Check and record a provision of ``slug``, and run it in the background; the
        operation, at once. Bad input and refused transitions raise here."""
        request = _Request("provision", slug, tier, driver, bool(reuse), key, _deadline(timeout))
        operation, _ = await self._start(request, on_progress)
        return operation

    async def start_upgrade(
        self,
        slug: str,
        *,
        tier: str,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
    ) -> Operation:
        """Check and record an upgrade of ``slug`` to ``tier``, and run it in the background."""
        request = _Request("upgrade", slug, tier, key=key, deadline=_deadline(timeout))
        operation, _ = await self._start(request, on_progress)
        return operation

    async def start_teardown(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
    ) -> Operation:
        """Check and record a teardown of ``slug``, and run it in the background."""
        request = _Request("teardown", slug, key=key, deadline=_deadline(timeout))
        operation, _ = await self._start(request, on_progress)
        return operation

    async def _checked(self, request: _Request) -> tuple[_Request, Deployment | None, Operation | None]:
        """The request with its driver filled in, the record after healing and the slug's live
        operation; raises what the verb would fail with at once."""
        self._check_slug(request.slug)
        self._check_key(request.key)
        if request.verb != "teardown" and not isinstance(request.tier, str):
            raise InvalidInput(f"{echo(request.tier)} is not a tier name")
        await self._opened()
        self._refresh_settings()
        if request.verb == "provision":
            assert request.driver is not None and request.tier is not None
            self._check_driver(request.driver)
            self._profile(request.tier, request.driver)
        record, active = await self._heal(request.slug)
        if request.verb != "provision":
            if record is None and active is not None:  # a first provision still queued: busy, not absent
                self._join(active, request, None)
            record = await self._existing(request.slug, record)
            if request.verb == "upgrade":
                assert request.tier is not None
                self._profile(request.tier, record.driver)
            request = _Request(
                request.verb, request.slug, request.tier, record.driver, False, request.key, request.deadline
            )
        return request, record, active

    def _plan(self, request: _Request, record: Deployment | None) -> Plan:
        """The rules of ``_states.plan`` for ``request`` on ``record``; a conflict carries the
        existing workspace's ref."""
        recorded = None if record is None else Recorded(record.state, record.tier, record.driver)
        try:
            return plan(
                request.verb,
                recorded,
                request.slug,
                tier=request.tier,
                driver=request.driver,
                reuse=request.reuse,
            )
        except Conflict as exc:
            assert record is not None
            exc.data["existing"] = existing_json(record)
            raise

    def _precheck(self, request: _Request, record: Deployment | None) -> DeploymentRef | bool | None:
        """The lifecycle rules before anything is recorded: raises a refusal; ``False`` when
        the verb has work to do, else what it returns without work (the same ready workspace,
        a teardown already done)."""
        if not self._plan(request, record).noop:
            return False
        return record.ref if record is not None and request.verb == "provision" else None

    async def _start(self, request: _Request, on_progress: ProgressListener | None) -> tuple[Operation, bool]:
        """The operation for ``request`` and whether this call created it."""
        request, record, active = await self._checked(request)
        store = self.store
        if request.key is not None:
            keyed = await store.keyed(request.key)
            if keyed is not None:
                return self._same_key(keyed, request), False
        while True:
            if active is not None:
                return self._join(active, request, on_progress), False
            done = self._precheck(request, record)
            new = NewOperation(
                request.slug,
                record.generation if record is not None else await store.next_generation(request.slug),
                request.verb,
                self.owner,
                request.key,
                request.tier,
                request.driver,
                request.reuse,
                done=None
                if done is False
                else ("succeeded", done if isinstance(done, DeploymentRef) else None),
            )
            operation, how = await store.create_operation(new)
            self._bus.bump()
            if how == "key":
                return self._same_key(operation, request), False
            if how == "active":
                if await self._owner_alive(operation):
                    return self._join(operation, request, on_progress), False
                await self._interrupted(operation)
                record, active = await self._heal(request.slug)
                continue
            operation.bound(self)
            if operation.finished:
                return operation, True
            work = _Work(operation)
            if on_progress is not None:
                work.listeners.append(on_progress)
            self._work[operation.id] = work
            work.task = asyncio.get_running_loop().create_task(
                self._execute(work, request), name=f"hearth-{request.verb}-{request.slug}-#{operation.id}"
            )
            work.task.add_done_callback(functools.partial(self._work_done, work))
            self._bus.ensure_polling()
            return operation, True

    def _work_done(self, work: _Work, task: asyncio.Task[DeploymentRef | None]) -> None:
        """A finished work task: its error is the operation's (kept in the store; awaiting it is
        optional, so it is retrieved here), and a task cancelled before its first step, which
        ran none of its own handlers, still ends its operation."""
        self._work.pop(work.operation.id, None)
        if not task.cancelled():
            task.exception()
            return
        if not work.begun and self._store is not None:
            outcome, reason = work.cancel or ("cancelled", "cancelled by the caller")
            ending = asyncio.ensure_future(
                self._end_unstarted(
                    work.operation, outcome, {"kind": outcome, "message": f"{reason}; it had not started"}
                )
            )
            work.ending = ending
            self._background.add(ending)
            ending.add_done_callback(self._background.discard)

    def _same_key(self, operation: Operation, request: _Request) -> Operation:
        """A key already used: that operation, if it was for the same thing."""
        theirs = (operation.slug, operation.verb, operation.tier, operation.driver, operation.reuse)
        ours = (request.slug, request.verb, request.tier, request.driver, request.reuse)
        if theirs[:2] != ours[:2] or (request.verb != "teardown" and theirs[2:4] != ours[2:4]):
            raise Conflict(
                f"the idempotency key {echo(request.key)} was used for operation #{operation.id} "
                f"({operation.verb} of {operation.slug!r}) with other arguments",
                codes.CONFLICT,
                {"kind": "conflict", "operation": operation.id},
            )
        return operation.bound(self)

    def _join(self, active: Operation, request: _Request, on_progress: ProgressListener | None) -> Operation:
        """Join the slug's running operation if it does what ``request`` asks, else ``busy``."""
        if request.key is not None and active.key == request.key:
            return self._same_key(active, request)
        if not joins(
            (active.verb, active.tier, active.driver, active.reuse),
            (request.verb, request.tier, request.driver, request.reuse),
        ):
            raise Busy(
                f"workspace {request.slug!r} is busy: operation #{active.id} ({active.verb}"
                f"{f' to {active.tier}' if active.verb == 'upgrade' else ''}) is {active.state}",
                active.id,
            )
        work = self._work.get(active.id)
        if work is not None and on_progress is not None:
            work.listeners.append(on_progress)
        return active.bound(self)

    async def _active_operation(self, slug: str) -> Operation | None:
        """The slug's queued or running operation whose host is alive (dead ones are settled)."""
        return (await self._look(slug))[1]

    async def _owner_alive(self, operation: Operation) -> bool:
        if operation.id in self._work or operation.owner == self.owner:
            return operation.id in self._work
        if operation.owner is None:  # recorded by an older hearth: its slug lock tells
            try:
                async with self._locks.hold(operation.slug, 0.0):
                    return False
            except SlugLocked:
                return True
        if self.shared_store:  # hosts of other homes and machines: their lease tells
            return await self._leased().lease_alive(operation.owner)
        return OwnerMark.alive(self.state_dir / "owners", operation.owner)

    async def _interrupted(self, operation: Operation) -> None:
        """End the operation of a host found dead, saying who found it and how."""
        how = (
            f"its host {operation.owner} held no lease (it stopped, or lost touch with the "
            f"database); taken over by {self.owner}"
            if self.shared_store
            else "the hearth process running it stopped before it finished"
        )
        await self.store.end(operation.id, "interrupted", {"kind": "interrupted", "message": how})
        self._bus.bump()

    async def _heal(self, slug: str) -> tuple[Deployment | None, Operation | None]:
        """Settle what a dead host left on ``slug``: its operations end ``interrupted`` and a
        record it left transient is resolved from the adapter's ``status``. The record after,
        and the slug's live operation (none once a record was settled)."""
        record, live = await self._look(slug)
        if record is None or record.state not in TRANSIENT or live is not None:
            return record, live
        from ._reconcile import Reconciler

        try:
            async with self._locks.hold(slug, 0.0):
                reconciler = Reconciler(self, dry_run=False, timeout=None)
                await reconciler.settle(slug)
                for _, was, now in reconciler.report.resolved:
                    await self._note_settled(record, was, now)
        except SlugLocked:
            pass  # someone is settling it right now
        except HearthError as exc:
            if exc.kind == "store_error":
                raise
            log.warning("could not settle %s from its adapter: %s", slug, exc.message)
        self._bus.bump()
        return await self.store.get(slug), None

    async def _note_settled(self, record: Deployment, was: str, now: str) -> None:
        """Say in the log of the operation that left ``record`` transient what settled it."""
        last = await self.store.last_operation(record.slug, record.generation)
        if last is None:
            return
        settled = await self.store.get(record.slug)
        why = f" ({settled.reason})" if settled is not None and settled.reason else ""
        note = f"settled by {self.owner} from the adapter's status: the record went from {was} to {now}{why}"
        await self.store.add_events([NewEvent(last.id, record.slug, last.verb, "log", "info", note)])

    async def _look(self, slug: str) -> tuple[Deployment | None, Operation | None]:
        """The slug's record and its live operation (one store call; a dead host's operations
        are ended ``interrupted`` on the way)."""
        record, active = await self.store.snapshot(slug)
        for operation in active:
            if await self._owner_alive(operation):
                return record, operation
            await self._interrupted(operation)
        return record, None

    # --- operations: run -----------------------------------------------------------------------
    async def _execute(self, work: _Work, request: _Request) -> DeploymentRef | None:
        """The work of one operation, in the host's task: hold the slug, check again, run."""
        operation, slug = work.operation, request.slug
        try:
            async with self._locks.hold(slug, self._lock_wait(request.deadline)):
                record = await self.store.get(slug)
                return await self._perform(work, request, record)
        except asyncio.CancelledError:
            if not work.begun:
                outcome, reason = work.cancel or ("cancelled", "cancelled by the caller")
                await self._end_unstarted(
                    operation, outcome, {"kind": outcome, "message": f"{reason}; it had not started"}
                )
            raise
        except HearthError as exc:
            if not work.begun:
                await self._end_unstarted(operation, "failed", {**exc.to_json(), "changed_nothing": True})
            raise
        except Exception as exc:
            if not work.begun:
                await self._end_unstarted(
                    operation, "failed", {"kind": "error", "message": f"{type(exc).__name__}: {exc}"}
                )
            raise
        finally:
            self._work.pop(operation.id, None)

    async def _end_unstarted(self, operation: Operation, state: str, error: dict[str, Any]) -> None:
        """An operation that never reached the adapter: the record is as it was."""
        await asyncio.shield(self.store.end(operation.id, state, error))  # type: ignore[arg-type]
        self._bus.bump()

    async def _perform(
        self, work: _Work, request: _Request, record: Deployment | None
    ) -> DeploymentRef | None:
        slug, verb, deadline = request.slug, request.verb, self._verb_deadline(request.deadline, request.verb)
        if verb != "provision":
            record = await self._existing(slug, record)
        rule = self._plan(request, record)
        if rule.noop:
            ref = record.ref if record is not None and verb == "provision" else None
            await self._finish_without_work(work, ref)
            return ref
        assert rule.transition is not None
        if verb == "provision":
            assert request.tier is not None and request.driver is not None
            profile = self._profile(request.tier, request.driver)
            working = await self._provisioning(request, None if rule.archive else record, rule.transition)
            return await self._run(
                work,
                None if rule.archive else record,
                working,
                rule.transition,
                "provision",
                deadline=deadline,
                archive_first=rule.archive,
                call=lambda client, remaining, callback, interruption: client.provision(
                    slug, profile, on_progress=callback, timeout=remaining, interruption=interruption
                ),
            )
        assert record is not None
        plan_ = rule.transition
        working = record.model_copy(update={"state": plan_.during, "updated_at": utc_now()})
        if verb == "upgrade":
            assert request.tier is not None and record.ref is not None
            profile, current = self._profile(request.tier, record.driver), record.ref
            return await self._run(
                work,
                record,
                working,
                plan_,
                "upgrade",
                deadline=deadline,
                new_tier=request.tier,
                call=lambda client, remaining, callback, interruption: client.upgrade(
                    current, profile, on_progress=callback, timeout=remaining, interruption=interruption
                ),
            )
        ref = record.ref or _synthesized_ref(record)
        return await self._run(
            work,
            record,
            working,
            plan_,
            "teardown",
            deadline=deadline,
            call=lambda client, remaining, callback, interruption: client.teardown(
                ref, on_progress=callback, timeout=remaining, interruption=interruption
            ),
        )

    async def _finish_without_work(self, work: _Work, ref: DeploymentRef | None) -> None:
        work.begun = True
        await self.store.end(work.operation.id, "succeeded", result=ref)
        self._bus.bump()

    async def _provisioning(
        self, request: _Request, record: Deployment | None, step: Transition
    ) -> Deployment:
        """The record to write while provisioning: the current one in its new state, or a new
        generation of the slug."""
        assert request.tier is not None and request.driver is not None
        now = utc_now()
        if record is not None:
            return record.model_copy(
                update={
                    "state": step.during,
                    "tier": request.tier,
                    "driver": request.driver,
                    "updated_at": now,
                }
            )
        return Deployment(
            slug=request.slug,
            generation=await self.store.next_generation(request.slug),
            tier=request.tier,
            driver=request.driver,
            state=step.during,
            ref=None,
            created_at=now,
            updated_at=now,
        )

    async def _run(
        self,
        work: _Work,
        previous: Deployment | None,
        working: Deployment,
        plan: Transition,
        verb: Verb,
        *,
        deadline: float,
        call: Call,
        new_tier: str | None = None,
        archive_first: bool = False,
    ) -> DeploymentRef | None:
        """Start the adapter, record ``plan.during``, call it, and record what its answer says."""
        async with self._supervisor.use(working.driver, timeout=_remaining(deadline)) as client:
            remaining = _remaining(deadline)
            if remaining <= 0:
                raise CallTimeout(
                    f"the deadline passed before {verb} of {working.slug!r} could be "
                    "sent (starting the adapter took the time); nothing was changed"
                )
            operation = work.operation.id
            if not await self.store.begin(operation, working, archive_first=archive_first):
                work.begun = True  # it was ended: nothing is left to end
                raise Interrupted(
                    f"operation #{operation} ({verb} of {working.slug!r}) was settled by another "
                    "host while this one waited (its lease had run out); nothing was sent to the adapter"
                )
            work.begun = True
            self._bus.bump()

            outcome = _Outcome(self, previous, working, plan, verb, operation, client)

            def progress(event: Progress) -> None:
                named = event.backend_id
                if named is not None and named != outcome.working.backend_id:
                    # written with the event, at once; the outcome's record carries it too
                    outcome.working = outcome.working.model_copy(update={"backend_id": named})
                else:
                    named = None
                self._event(
                    NewEvent(
                        operation,
                        working.slug,
                        verb,
                        "progress",
                        event.level,
                        event.message,
                        event.fraction,
                        backend_id=named,
                    )
                )
                for listener in work.listeners:
                    self._call_listener(listener, event)

            interruption = Interruption()
            try:
                result = await call(client, remaining, progress, interruption)
            except asyncio.CancelledError:
                why, reason = work.cancel or ("cancelled", "cancelled by the caller")
                await outcome.cancelled(why, reason, interruption, new_tier)
                raise
            except CallTimeout as exc:
                await outcome.timed_out(exc)
                raise
            except HearthError as exc:
                await outcome.failed(exc)
                raise
            except Exception as exc:  # a bug, or the OS failing under us: never a stuck record
                error = (
                    StoreError(f"{verb} of {working.slug!r} stopped: {type(exc).__name__}: {exc}")
                    if isinstance(exc, OSError)
                    else HearthError(
                        f"{verb} of {working.slug!r} stopped on an unexpected {type(exc).__name__}: {exc}"
                    )
                )
                await outcome.failed(error, unconfirmed=True)
                raise error from exc
            return await outcome.succeeded(result, new_tier)

    def _call_listener(self, listener: ProgressListener, event: Progress) -> None:
        """Call one ``on_progress``: a coroutine runs as a task; an exception is logged."""
        try:
            result = listener(event)
        except Exception:
            log.exception("an on_progress callback raised")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._background.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an on_progress callback raised", exc_info=task.exception())

    # --- events --------------------------------------------------------------------------------
    def _event(self, event: NewEvent) -> None:
        """Buffer one event; the events of one loop turn share one transaction."""
        if not self._events:
            asyncio.get_running_loop().call_soon(self._schedule_flush)
        self._events.append(event)

    def _schedule_flush(self) -> None:
        if self._events and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self._flush_events())

    async def _flush_events(self) -> None:
        """Write the buffered events; a store that fails loses them (logged), never the verb."""
        while (
            self._flushing is not None
            and not self._flushing.done()
            and self._flushing is not asyncio.current_task()
        ):
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._flushing)
        while self._events and self._store is not None:  # events that came during a write go next
            events, self._events = self._events, []
            try:
                await asyncio.shield(self.store.add_events(events))
            except StoreError as exc:
                log.error("%d progress event(s) not recorded: %s", len(events), exc.message)
            self._bus.bump()

    def watch(self, after: int = 0, slug: str | None = None) -> AsyncIterator[Event]:
        """Every event of every process sharing the store, after sequence number ``after``,
        as they come (``slug`` narrows it); resume from the last ``seq`` you saw. The input is
        checked here, before the first event; the iterator ends when the host closes."""
        if slug is not None:
            self._check_slug(slug)
        return self._events_after(_sequence(after), slug=slug)

    async def _events_after(
        self, cursor: int, *, slug: str | None = None, operation: int | None = None
    ) -> AsyncIterator[Event]:
        store = await self._opened()
        with self._bus.interest():
            while not self._bus.closed:
                changed = self._bus.changed()
                try:
                    batch = await store.events(after=cursor, slug=slug, operation=operation)
                except HearthError:
                    if self._bus.closed:
                        return  # the host closed under it
                    raise
                for event in batch:
                    cursor = event.seq
                    yield event
                    if operation is not None and event.final:
                        return
                if len(batch) == 500:
                    continue
                if operation is not None and not batch:
                    current = await store.operation(operation)
                    if current is None or current.finished:  # ``after`` was past its last event
                        if not await store.events(after=cursor, operation=operation, limit=1):
                            return
                        continue
                await asyncio.shield(changed)  # one waiter leaving must not end the others' wait

    def _operation_events(self, ident: int, after: int) -> AsyncIterator[Event]:
        return self._events_after(_sequence(after), operation=ident)

    # --- operations: find, wait, cancel --------------------------------------------------------
    async def operation(self, ident: int) -> Operation:
        """The operation ``ident``, from any process; ``not_found`` if there is none."""
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 < ident < 2**63:
            raise InvalidInput(f"{echo(ident)} is not an operation id")
        found = await (await self._opened()).operation(ident)
        if found is None:
            raise NotFound(f"no operation #{ident}")
        return found.bound(self)

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
    ) -> builtins.list[Operation]:
        """Operations by id, from every process; ``after``: the last id of the previous page."""
        if slug is not None:
            self._check_slug(slug)
        if state is not None and state not in {"queued", "running", *FINISHED}:
            raise InvalidInput(f"{echo(state)} is not an operation state")
        store = await self._opened()
        found = await store.operations(slug=slug, state=state, limit=_page(limit), after=_cursor(after))
        return [op.bound(self) for op in found]

    async def _operation_wait(self, ident: int, timeout: float | None) -> Operation:
        deadline = _deadline(timeout)
        with self._bus.interest():
            while True:
                changed = self._bus.changed()
                current = await self.operation(ident)
                if current.finished:
                    return current
                work = self._work.get(ident)
                waits: builtins.list[asyncio.Future[Any]] = [changed]
                if work is not None and work.task is not None and not work.task.done():
                    waits.append(work.task)
                elif work is None and not await self._owner_alive(current):
                    await self._heal(current.slug)  # its host died: settle it, then read it again
                    continue
                remaining = None if deadline is None else _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return current
                bound = LIVENESS if remaining is None else min(remaining, LIVENESS)
                await asyncio.wait(waits, timeout=bound, return_when=asyncio.FIRST_COMPLETED)

    async def _operation_result(self, ident: int, timeout: float | None) -> DeploymentRef | None:
        work = self._work.get(ident)
        if work is not None and work.task is not None:
            await asyncio.wait([work.task], timeout=timeout)
            if work.task.done() and not work.task.cancelled():
                return work.task.result()  # its own exception, with every attribute
        return (await self._operation_wait(ident, timeout)).settled()

    async def _operation_cancel(self, ident: int, reason: str) -> Operation:
        if not isinstance(reason, str) or not reason:
            raise InvalidInput("a cancel needs a reason (a non-empty string)")
        work = self._work.get(ident)
        found = await (await self._opened()).request_cancel(ident, reason[:500])
        if work is not None and work.task is not None:
            self._cancel_work(work, "cancelled", reason)
            if not work.begun:  # a queued operation ends at once: let the caller see it ended
                await asyncio.wait([work.task], timeout=self.timeouts.cancel_grace)
                if work.ending is not None:
                    await asyncio.wait([work.ending], timeout=self.timeouts.cancel_grace)
            return await self.operation(ident)
        if found is None:
            raise NotFound(f"no operation #{ident}")
        self._bus.bump()
        return found.bound(self)

    # --- the verbs: start, then the result ------------------------------------------------------
    async def provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        reuse: bool = False,
        key: str | None = None,
    ) -> DeploymentRef:
        """Provision ``slug``; the same (slug, tier, driver) again returns the stored ref."""
        self._check_slug(slug)
        store = await self._opened()
        quick = await store.get(slug)
        if (
            isinstance(tier, str)
            and isinstance(driver, str)
            and key is None
            and same_ready(quick, tier, driver)
        ):
            assert quick is not None and quick.ref is not None
            return quick.ref
        request = _Request("provision", slug, tier, driver, bool(reuse), key, _deadline(timeout))
        ref = await self._result_for_caller(request, *await self._start(request, on_progress), on_progress)
        assert ref is not None
        return ref

    async def upgrade(
        self,
        slug: str,
        *,
        tier: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> DeploymentRef:
        """Move a ready workspace to another tier (or re-apply its own)."""
        request = _Request("upgrade", slug, tier, key=key, deadline=_deadline(timeout))
        ref = await self._result_for_caller(request, *await self._start(request, on_progress), on_progress)
        assert ref is not None
        return ref

    async def teardown(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> None:
        """Irreversibly remove the workspace; a second teardown does nothing."""
        self._check_slug(slug)
        store = await self._opened()
        quick = await store.get(slug)
        if key is None and teardown_done(quick):
            return
        request = _Request("teardown", slug, key=key, deadline=_deadline(timeout))
        await self._result_for_caller(request, *await self._start(request, on_progress), on_progress)

    async def _result_for_caller(
        self, request: _Request, operation: Operation, created: bool, on_progress: ProgressListener | None
    ) -> DeploymentRef | None:
        """The plain verbs' wait: a cancelled caller cancels work it started (not work it
        joined) and waits, within the cancel grace, for it to be settled; an operation run by
        another process relays its progress from the event log."""
        work = self._work.get(operation.id)
        relay = None
        if work is None and on_progress is not None and not operation.finished:
            relay = asyncio.get_running_loop().create_task(self._relay(operation.id, on_progress))
        try:
            if work is None or work.task is None:  # joined: the caller's timeout bounds its wait
                bound = None if request.deadline is None else max(_remaining(request.deadline), 0.0)
                return await self._operation_result(operation.id, bound)
            try:
                return await asyncio.shield(work.task)
            except asyncio.CancelledError:
                if created and not work.task.done():  # this caller was cancelled, not the work
                    self._cancel_work(work, "cancelled", "cancelled by the caller")
                    await asyncio.wait([work.task], timeout=self.timeouts.cancel_grace + 5.0)
                raise
        finally:
            if relay is not None:
                relay.cancel()

    async def _relay(self, ident: int, on_progress: ProgressListener) -> None:
        async for event in self._events_after(0, operation=ident):
            if event.kind == "progress":
                self._call_listener(on_progress, event.as_progress())

    # --- queries -------------------------------------------------------------------------------
    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``tier_torn_down`` (a state, not an error) once torn down.
        A record a dead host left transient is settled first, from this same ``status``."""
        self._check_slug(slug)
        deadline = _deadline(timeout)
        await self._opened()
        record = await self._existing(slug, (await self._heal(slug))[0])
        if record.state == "tier_torn_down":
            return StatusReport(
                state="tier_torn_down",
                observed_at=utc_now(),
                message=f"torn down at {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
                details={"recorded_state": record.state},
            )
        ref = record.ref or _synthesized_ref(record)
        async with self._supervisor.use(record.driver, timeout=_remaining(deadline)) as client:
            report = await client.status(
                ref, timeout=self.timeouts.status if deadline is None else max(_remaining(deadline), 0.001)
            )
        if record.unconfirmed and record.state not in TRANSIENT:
            record = await self._confirm(record, report)
        details = {**report.details, "recorded_state": record.state}
        if record.backend_id is not None:
            details.setdefault("backend_id", record.backend_id)
        notes = [report.message] if report.message else []
        if record.reason:
            notes.append(
                f"the last operation failed: {record.reason}"
                if record.state == "failed"
                else f"the record notes: {record.reason}"
            )
        if record.state in TRANSIENT:
            notes.append(await self._transient_note(record))
        last = await self.store.last_operation(record.slug, record.generation)
        if last is not None and last.error is not None and last.error.get("changed_nothing"):
            notes.append(
                f"the last {last.verb} (#{last.id}) ended {last.outcome} and changed "
                f"nothing: {last.error.get('message') or last.error.get('kind')}"
            )
        return report.model_copy(update={"details": details, "message": "; ".join(notes) or None})

    async def _confirm(self, record: Deployment, report: StatusReport) -> Deployment:
        """A record whose outcome was not confirmed, settled from the ``status`` answer just
        received (as reconcile would); unchanged if the slug is busy or the answer says nothing."""
        from ._reconcile import Reconciler

        try:
            async with self._locks.hold(record.slug, 0.0):
                await Reconciler(self, dry_run=False, timeout=None).settle(record.slug, report)
        except SlugLocked:
            return record
        self._bus.bump()
        return await self.store.get(record.slug) or record

    async def _transient_note(self, record: Deployment) -> str:
        """Whether a transient record is being worked on, or was left by a host that died."""
        active = await self._active_operation(record.slug)
        if active is not None:
            return f"operation #{active.id} ({active.verb}) is {active.state}"
        return (
            f"the record says {record.state}, but no hearth process is working on it (one stopped "
            "in the middle) and its adapter could not settle it; reconcile looks again"
        )

    async def list(self) -> builtins.list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the host recorded it."""
        store = await self._opened()
        return [
            (d.ref or _synthesized_ref(d)).model_copy(update={"last_status": d.state})
            for d in await store.deployments()
        ]

    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[Deployment]:
        """The host's records by slug (with bookkeeping such as the failure reason); ``after``
        is the last slug of the previous page."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"{echo(state)} is not a workspace state: {', '.join(sorted(STATES))}")
        if driver is not None and (
            not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver)
        ):
            raise InvalidInput(f"{echo(driver)} is not a driver name")
        if after is not None and not isinstance(after, str):
            raise InvalidInput(f"after must be the last slug of the previous page, not {echo(after)}")
        store = await self._opened()
        return await store.deployments(
            state=state, driver=driver, include_torn_down=include_torn_down, limit=_page(limit), after=after
        )

    async def deployment(self, slug: str) -> Deployment:
        """The record of ``slug``; ``not_found`` if there is none. Like every access to a slug,
        it first settles what a dead host left there (its record is read after)."""
        self._check_slug(slug)
        await self._opened()
        record, _ = await self._heal(slug)
        return await self._existing(slug, record)

    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]:
        """The operations run on ``slug`` (all generations), each with its log; ``limit``: the
        last ``limit`` of them. ``not_found`` for a slug nothing was ever done with."""
        self._check_slug(slug)
        store = await self._opened()
        record, _ = await self._look(slug)  # a dead host's operations say interrupted, not running
        found = await store.operations(slug=slug, with_log=True)
        if not found and record is None:
            raise NotFound(f"no workspace {slug!r}, and no operation was ever run on it")
        count = _page(limit)
        if count is not None:
            found = found[len(found) - count :] if count else []
        return [op.bound(self) for op in found]

    def tiers(self) -> builtins.list[Tier]:
        """The tiers this host offers (built-in and hearth.toml's), by name."""
        self._refresh_settings()
        return [self.settings.tiers[name] for name in sorted(self.settings.tiers)]

    async def drivers(self) -> builtins.list[DriverInfo]:
        """What discovery finds for each driver (path, version, refusals) and the in-process ones."""
        from ._discovery import driver_infos

        return await driver_infos(
            self.project_dir,
            self.home,
            in_process_drivers=self._supervisor.in_process_drivers(),
            version_probe=self.timeouts.version_probe,
        )

    async def check(
        self, slug: str, verb: str, *, tier: str | None = None, driver: str | None = None
    ) -> CheckResult:
        """Whether ``verb`` would be accepted now (the input, the lifecycle rules, an operation
        it would join or be refused by, and the adapter's ``validate_profile``); starts nothing."""
        if verb not in ("provision", "upgrade", "teardown"):
            raise InvalidInput(f"{echo(verb)} is not a verb: provision, upgrade or teardown")
        if verb == "provision" and (tier is None or driver is None):
            raise InvalidInput("checking a provision needs a tier and a driver")
        if verb == "upgrade" and tier is None:
            raise InvalidInput("checking an upgrade needs a tier")
        request = _Request(verb, slug, tier, driver)  # type: ignore[arg-type]
        try:
            request, record, active = await self._checked(request)
            if active is not None:
                self._join(active, request, None)
                return CheckResult(slug=slug, verb=verb, accepted=True, joins=active.id)
            self._precheck(request, record)
            if verb != "teardown":
                assert request.tier is not None and request.driver is not None
                await self._validate_profile(request.driver, self._profile(request.tier, request.driver))
        except HearthError as exc:
            if exc.kind == "store_error":
                raise
            return CheckResult(slug=slug, verb=verb, accepted=False, error=exc.to_json())
        return CheckResult(slug=slug, verb=verb, accepted=True)

    async def plan(
        self, slug: str, *, tier: str, driver: str | None = None, timeout: float | None = None
    ) -> PlanResult:
        """What moving ``slug`` to ``tier`` would do, by the adapter's ``plan``; nothing is
        changed or recorded. For a new, failed or torn-down workspace that is a provision
        (``driver`` is needed for a new one), for a ready one an upgrade (``driver`` defaults to
        the record's). The input and the lifecycle rules are checked as the verb checks them, and
        what the verb would refuse is refused; ``unsupported`` when the adapter does not
        announce ``plan``."""
        self._check_slug(slug)
        if not isinstance(tier, str):
            raise InvalidInput(f"{echo(tier)} is not a tier name")
        deadline = _deadline(timeout)
        await self._opened()
        self._refresh_settings()
        if driver is not None:
            self._check_driver(driver)
        record, active = await self._heal(slug)
        if active is not None:
            raise Busy(
                f"workspace {slug!r} is busy: operation #{active.id} ({active.verb}) is {active.state}; "
                "plan it once that is done",
                active.id,
            )
        if record is None and driver is None:
            raise InvalidInput(f"{slug!r} is a new workspace: planning it needs a driver")
        provision = record is None or record.state in ("failed", "tier_torn_down")
        chosen = driver or (record.driver if record is not None else "")
        if record is not None and not provision and chosen != record.driver:
            raise Conflict(
                f"workspace {slug!r} exists on driver {record.driver!r}; a workspace cannot move "
                "to another driver: tear it down, then provision it again, reusing the slug",
                codes.CONFLICT,
                {"kind": "conflict", "existing": existing_json(record)},
            )
        self._plan(_Request("provision" if provision else "upgrade", slug, tier, chosen, True), record)
        profile = self._profile(tier, chosen)
        ref = None if provision or record is None else (record.ref or _synthesized_ref(record))
        async with self._supervisor.use(chosen, timeout=_remaining(deadline)) as client:
            if not client.supports("plan"):
                raise Unsupported(
                    f"driver {chosen!r} cannot plan: its adapter does not announce plan",
                    codes.UNSUPPORTED,
                    {"kind": "unsupported", "reason": "plan is not announced", "method": "plan"},
                )
            bound = self.timeouts.status if deadline is None else max(_remaining(deadline), 0.001)
            return await client.plan(slug, ref, profile, timeout=bound)

    async def _validate_profile(self, driver: str, profile: ProvisioningProfile) -> None:
        from ._errors import InvalidProfile

        async with self._supervisor.use(driver, timeout=self.timeouts.handshake) as client:
            if not client.supports("validate_profile"):
                return
            answer = await client.validate_profile(profile, timeout=self.timeouts.status)
        valid, errors = answer.valid, list(answer.errors)
        if not valid:
            raise InvalidProfile(
                f"{driver}: the profile is not valid: {'; '.join(errors) or 'no reason given'}",
                codes.INVALID_PROFILE,
                {"kind": "invalid_profile", "errors": errors},
            )

    def _lock_wait(self, deadline: float | None) -> float:
        remaining = None if deadline is None else _remaining(deadline)
        return self.timeouts.lock_wait if remaining is None else max(remaining, 0.0)

    def _verb_deadline(self, deadline: float | None, verb: Verb) -> float:
        """The caller's deadline, else the verb's default bound from now."""
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + float(getattr(self.timeouts, verb))

    # --- reconcile, adopt, forget --------------------------------------------------------------
    async def reconcile(
        self, slug: str | None = None, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReconcileReport:
        """Settle records a dead host left transient and records whose outcome was not
        confirmed; mark ghosts; report orphans; delete nothing (see ``hearth._reconcile``).
        ``slug`` limits it to one workspace; ``dry_run`` reports what it would do and changes
        nothing. One ``list`` per driver. A second run right after a first changes nothing;
        an unreachable backend changes nothing."""
        from ._reconcile import Reconciler

        _deadline(timeout)  # validates
        await self._opened()
        if slug is not None:
            self._check_slug(slug)
            await self._existing(slug)
        report = await Reconciler(self, dry_run=dry_run, timeout=timeout).run(slug)
        self._bus.bump()
        return report

    async def adopt(self, slug: str, *, driver: str, tier: str, timeout: float | None = None) -> Deployment:
        """Turn a deployment the adapter lists but hearth has no record of into a record."""
        from ._reconcile import adopt

        self._check_slug(slug)
        self._check_driver(driver)
        _deadline(timeout)
        await self._opened()
        self._profile(tier, driver)
        return await adopt(self, slug, driver=driver, tier=tier, timeout=timeout)

    async def forget(self, slug: str) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was."""
        from ._reconcile import forget

        self._check_slug(slug)
        await self._opened()
        return await forget(self, slug)


@dataclass
class _Outcome:
    """Records what one verb's answer says, by the rules of ``_states.py``."""

    host: Host
    previous: Deployment | None
    working: Deployment
    plan: Transition
    verb: Verb
    operation: int
    client: AdapterClient

    @property
    def _store(self) -> Store:
        return self.host.store

    async def _end(
        self,
        outcome: str,
        error: dict[str, Any] | None,
        deployment: Deployment,
        archive: bool = False,
        result: DeploymentRef | None = None,
    ) -> None:
        """Write the operation's events, then its outcome and the record it left: one write
        that a cancelled caller cannot stop half-way."""
        host = self.host
        await host._flush_events()
        recorded = await asyncio.shield(
            self._store.end(
                self.operation,
                outcome,  # type: ignore[arg-type]
                error,
                deployment=deployment,
                archive=archive,
                result=result,
            )
        )
        host._bus.bump()
        if not recorded:  # fenced: another host settled it, and its record stands
            log.warning(
                "operation #%s (%s of %s) ended %s here, but another host had settled it (this "
                "host's lease had run out): its record stands, this outcome is not written",
                self.operation,
                self.verb,
                self.working.slug,
                outcome,
            )
            raise Interrupted(
                f"operation #{self.operation} ({self.verb} of {self.working.slug!r}) was settled by "
                f"another host while this one ran it (this host's lease had run out); its outcome "
                f"here ({outcome}) was not recorded: see the workspace's record and log"
            )

    async def succeeded(self, result: Any, new_tier: str | None) -> DeploymentRef | None:
        record = self.working
        if self.verb == "teardown":
            ref = (record.ref or _synthesized_ref(record)).model_copy(
                update={"last_status": "tier_torn_down", "endpoint": None}
            )
        else:
            ref = result
            if ref.workspace_slug != record.slug:
                error = ProtocolViolation(
                    f"the adapter answered {self.verb} of {record.slug!r} "
                    f"with a ref for {ref.workspace_slug!r}"
                )
                await self.failed(error, unconfirmed=True)
                raise error
        await self._end(
            "succeeded",
            None,
            record.model_copy(
                update={
                    "state": self.plan.on_success,
                    "ref": ref,
                    "tier": new_tier or record.tier,
                    "updated_at": utc_now(),
                    "reason": None,
                    "unconfirmed": False,
                }
            ),
            result=ref if self.verb != "teardown" else None,
        )
        return ref if self.verb != "teardown" else None

    async def unchanged(self, outcome: str, error: dict[str, Any]) -> None:
        """The answer says nothing changed: the record stays as it was (a first provision
        leaves no live record); the operation keeps the error."""
        error = {**error, "changed_nothing": True}
        if self.previous is None:
            await self._end(
                outcome,
                error,
                self.working.model_copy(update={"state": "failed", "reason": error.get("message")}),
                archive=True,
            )
        else:
            await self._end(outcome, error, self.previous)

    async def failed(
        self, exc: HearthError, *, unconfirmed: bool | None = None, outcome: str = "failed"
    ) -> None:
        """D8, unless the answer says that nothing changed."""
        if isinstance(exc, BackendFailure):
            for line in exc.logs:
                self.host._event(NewEvent(self.operation, self.working.slug, self.verb, "log", "error", line))
        error = exc.to_json()
        if isinstance(exc, AdapterError) and changed_nothing(self.verb, exc.code, exc.data):
            await self.unchanged(outcome, error)
            return
        if unconfirmed is None:  # the adapter died, broke the protocol or lost its backend
            unconfirmed = not isinstance(exc, AdapterError) or isinstance(exc, BackendUnavailable)
        reason = exc.message + (
            "; what the backend holds is not confirmed: reconcile checks it" if unconfirmed else ""
        )
        try:
            await self._end(
                outcome,
                error,
                self.working.model_copy(
                    update={
                        "state": "failed",
                        "updated_at": utc_now(),
                        "reason": reason,
                        "unconfirmed": unconfirmed,
                    }
                ),
            )
        except StoreError:
            if isinstance(exc, StoreError):
                return  # the store is what failed: the record stays transient for reconcile
            raise

    async def timed_out(self, exc: CallTimeout) -> None:
        error = exc.to_json()
        if self.verb == "teardown" and exc.rolled_back is not None:
            await self._settle_teardown("cancelled", f"timed out: {exc.message}", error)
        elif exc.rolled_back:
            await self.unchanged("cancelled", error)
        else:
            await self._unconfirmed("cancelled", f"timed out: {exc.message}", error)

    async def cancelled(
        self, outcome: str, reason: str, interruption: Interruption, new_tier: str | None
    ) -> None:
        """The caller was cancelled: record what the adapter's answer (if any) says."""
        error = {"kind": "cancelled" if outcome == "cancelled" else "interrupted", "message": reason}
        note = f"{self.verb} of {self.working.slug!r}"
        if interruption.succeeded:
            result = (
                None
                if self.verb == "teardown"
                else self.client._validated(DeploymentRef, interruption.result, self.verb)
            )
            await self.succeeded(result, new_tier)
            self.host.interruptions.append(
                f"{note} had finished before the cancel took effect; it is recorded as done"
            )
        elif not interruption.answered:
            await self._unconfirmed(outcome, reason, error)
            self.host.interruptions.append(
                f"{note} was told to cancel; its rollback is not confirmed (reconcile checks it)"
            )
        elif not isinstance(interruption.error, Cancelled):
            assert interruption.error is not None
            await self.failed(interruption.error, outcome=outcome)
            after = await self._store.get(self.working.slug)
            self.host.interruptions.append(
                f"{note} was cancelled and the adapter answered with an error "
                f"({interruption.error.kind}); the workspace is recorded "
                f"{after.state if after is not None else 'nowhere (nothing changed)'}"
            )
        elif self.verb == "teardown":
            observed, state = await self._settle_teardown(outcome, reason, error)
            self.host.interruptions.append(
                f"{note} was cancelled; the backend shows {observed}, the workspace is recorded {state}"
            )
        elif cancel_rolled_back(self.verb, True, interruption.error.data):
            await self.unchanged(
                outcome, {**error, "rolled_back": True, "message": f"{reason}; the adapter rolled back"}
            )
            self.host.interruptions.append(
                f"{note} was cancelled and rolled back"
                + ("" if self.previous is None else f"; the workspace is {self.previous.state} as before")
            )
        else:
            await self._unconfirmed(outcome, reason, {**error, "rolled_back": False})
            self.host.interruptions.append(
                f"{note} was cancelled; the adapter could not confirm its rollback (reconcile checks it)"
            )

    async def _unconfirmed(self, outcome: str, reason: str, error: dict[str, Any]) -> None:
        what = "rollback not confirmed" if self.verb != "teardown" else "teardown not confirmed"
        reason = reason.replace("; the rollback is not confirmed", "")
        await self._end(
            outcome,
            error,
            self.working.model_copy(
                update={
                    "state": "failed",
                    "updated_at": utc_now(),
                    "unconfirmed": True,
                    "reason": f"{reason}; {what}: the backend may still hold resources; reconcile checks it",
                }
            ),
        )

    async def _settle_teardown(self, outcome: str, reason: str, error: dict[str, Any]) -> tuple[str, str]:
        """A cancelled teardown cannot be undone: record what the adapter's status shows;
        (what it observed, the state recorded)."""
        observed = "unknown"
        ref = self.working.ref or _synthesized_ref(self.working)
        try:
            if self.client.alive:
                report = await self.client.status(ref, timeout=self.host.timeouts.status)
                observed = report.state
        except (HearthError, asyncio.CancelledError):
            observed = "unknown"
        resolution = resolve(self.working.state, observed, verb="teardown")
        if resolution is None:
            await self._unconfirmed(outcome, reason, error)
            return "an unknown state", "failed (not confirmed)"
        await self._end(
            outcome,
            error,
            self.working.model_copy(
                update={
                    "state": resolution.state,
                    "updated_at": utc_now(),
                    "unconfirmed": resolution.unconfirmed,
                    "reason": f"{reason}; {resolution.reason}" if resolution.reason else None,
                }
            ),
        )
        return observed, resolution.state


_synthesized_ref = synthesized_ref


_positive = positive_seconds


def _page(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput(f"limit must be a whole number of at least 0, not {echo(limit)}")
    return limit


def _cursor(after: int | None) -> int | None:
    return None if after is None else _sequence(after)


def _sequence(after: int) -> int:
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidInput(f"after must be a whole number of at least 0, not {echo(after)}")
    return after


def _deadline(timeout: float | None) -> float | None:
    """The loop time at which ``timeout`` ends; nan, inf, 0 and negatives are invalid input."""
    if timeout is None:
        return None
    return asyncio.get_running_loop().time() + _positive(timeout, "timeout")


def _remaining(deadline: float | None) -> float:
    if deadline is None:
        return math.inf
    return deadline - asyncio.get_running_loop().time()
