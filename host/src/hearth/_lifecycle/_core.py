"""The core every lifecycle collaborator shares: where the host lives, its settings, its store,
its locks and its adapters, and one ``written`` hook.

Collaborators get the core, never the ``Host``: the façade wires them, they do not reach back
(as uvicorn's ``Server`` hands ``ServerState`` to its protocols). Every write goes through
``Core.store``, which wakes whoever waits for a change once the write is done, so no caller
has to remember to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from hearth_adaptersdk import DeploymentRef

from .._actors import acting_now
from .._adapters._supervisor import ConnectionFactory, Supervisor
from .._dirs import STORE_ENV, find_project_dir, resolve_home, state_dir
from .._errors import HearthError, StoreError
from .._models import Deployment, Event, Operation, OperationState
from .._observe import Observers
from .._settings import Settings, SettingsSource, Tier, Timeouts
from .._store._base import Found, LeasedStore, NewEvent, NewOperation, Store
from .._store._locks import Locks, OwnerMark, SlugLocks, new_owner
from .._store._open import store_from_url
from .._store._records import STORE_FILE

R = TypeVar("R")


class Acting(TypedDict):
    """Who an operation recorded now says asked, and whom for."""

    actor: str
    on_behalf_of: str | None


class Core:
    """What the lifecycle's parts share. ``open`` prepares the store, ``opened`` opens it once
    (on first use, from any entry point), ``close_store`` ends it."""

    def __init__(
        self,
        project_dir: str | Path | None,
        home: str | Path | None,
        tiers: Mapping[str, Tier] | None,
        overrides: Mapping[str, float],
        *,
        idle_timeout: float | None,
        store: Store | None,
        store_url: str | None,
        in_process: Mapping[str, ConnectionFactory] | None,
        actor: str,
    ) -> None:
        #: Who asks when the caller's context names no one (``_actors``): the process's user,
        #: or what the embedding program named.
        self.actor = actor
        self.project_dir = find_project_dir(project_dir)
        self.home = resolve_home(home)
        self.state_dir = state_dir(self.home)
        self._settings_source = SettingsSource(self.project_dir, tiers, overrides)
        self.settings: Settings = self._settings_source.current()
        self._store_arg = store
        self._store_url = store_url
        #: The store as given or opened (``Host.store``); ``store`` is the same, waking watchers.
        self.raw: Store | None = None
        self._waking: _Waking | None = None
        #: Whether the store is shared beyond this home (a database other homes use too): then
        #: a lease in the store, not a mark in the home, proves this host alive.
        self.shared = False
        self._ready: asyncio.Future[None] | None = None
        self.locks: Locks = SlugLocks(self.state_dir / "locks")
        #: Who runs this host's operations, as other processes see it.
        self.owner = new_owner()
        self._mark = OwnerMark(self.state_dir / "owners", self.owner)
        self._on_written: list[Callable[[], None]] = []
        self._on_opened: list[Callable[[], None]] = []
        self._on_ended: list[Callable[[int, OperationState, bool], None]] = []
        #: Whoever measures this host (the daemon's metrics); nobody by default.
        self.observers = Observers()
        self.supervisor = Supervisor(
            self.settings,
            self.state_dir,
            project_dir=self.project_dir,
            home=self.home,
            handshake_timeout=self.timeouts.handshake,
            idle_timeout=idle_timeout,
            in_process=in_process,
            cancel_grace=self.timeouts.cancel_grace,
            observer=self.observers,
        )

    @property
    def timeouts(self) -> Timeouts:
        return self.settings.timeouts

    def refresh_settings(self) -> None:
        """Pick up an edited hearth.toml (one ``stat`` when it did not change)."""
        settings = self._settings_source.current()
        if settings is not self.settings:
            self.settings = settings
            self.supervisor.update_settings(settings)

    def acting(self) -> Acting:
        """The ``actor`` and ``on_behalf_of`` an operation recorded now carries: the caller's
        context's (``_actors.acting``: the daemon's request), else this host's actor."""
        now = acting_now()
        return Acting(
            actor=now.actor if now is not None and now.actor else self.actor,
            on_behalf_of=now.on_behalf_of if now is not None else None,
        )

    # --- hooks ----------------------------------------------------------------------------------
    def on_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every write through ``store``."""
        self._on_written.append(callback)

    def on_opened(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the store is open (and, when shared, this host's lease taken)."""
        self._on_opened.append(callback)

    def on_ended(self, callback: Callable[[int, OperationState, bool], None]) -> None:
        """Call ``callback(operation, state, recorded)`` after each ``end`` through ``store``
        (``recorded``: False when fenced, another host having ended it)."""
        self._on_ended.append(callback)

    def ended(self, operation: int, state: OperationState, recorded: bool) -> None:
        for callback in self._on_ended:
            callback(operation, state, recorded)

    def written(self) -> None:
        """A write committed: wake whoever waits for a change."""
        for callback in self._on_written:
            callback()

    # --- the store ------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.raw is not None

    @property
    def ready(self) -> bool:
        """Whether the store was opened (not only prepared)."""
        return self._ready is not None and self._ready.done()

    @property
    def store(self) -> Store:
        """The store; each write wakes the watchers when it is done."""
        if self._waking is None:
            raise HearthError("the host is closed; use 'async with Host(...)'")
        return self._waking

    def leased(self) -> LeasedStore:
        return cast(LeasedStore, self.raw)

    def open(self) -> None:
        """Prepare the home and the store (opened on first use)."""
        if self.raw is not None:
            return
        if self._store_arg is None:
            self._prepare_home()
        self.raw = self._store_arg or self._store_named()
        self._waking = _Waking(self.raw, self.written, self._opening, self.ended, self.observers)
        self.shared = hasattr(self.raw, "renew_lease")
        if self.shared:  # slugs are locked in the database, for every host on it
            self.locks = self.leased().slug_locks(self.owner)
        self._ready = None
        self._mark.acquire()

    def _store_named(self) -> Store:
        url = self._store_url or os.environ.get(STORE_ENV, "").strip() or self.settings.store
        if not url:
            from .._store._sqlite import SQLiteStore

            return SQLiteStore(self.state_dir / STORE_FILE)
        return store_from_url(url, wait=self.timeouts.store)

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

    async def opened(self) -> Store:
        """The store, opened once (on the store's own thread). Any call through ``store`` opens
        it too; an entry point awaits this first only where a store that cannot be opened must
        be reported before its other checks."""
        store = self.store
        await self._opening()
        return store

    async def _opening(self) -> None:
        if self._ready is not None and self._ready.done():
            return
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                assert self.raw is not None
                await self.raw.open()
                if self.shared:  # proven alive before it records anything
                    await self.leased().renew_lease(self.owner, self.timeouts.lease)
            except BaseException as exc:
                self._ready.set_exception(exc)
                self._ready.exception()  # retrieved: the caller raises it
                self._ready = None
                raise
            self._ready.set_result(None)
            for callback in self._on_opened:
                callback()
        else:
            await asyncio.shield(self._ready)

    async def close_store(self) -> None:
        """Release the locks' session, drop the lease and close the store."""
        closer = getattr(self.locks, "close", None)
        if closer is not None:  # the database's locks: their session ends
            with contextlib.suppress(HearthError):
                await closer()
        if self.raw is None:
            return
        if self.shared and self.ready:
            with contextlib.suppress(HearthError):  # its operations are all ended now
                await self.leased().drop_lease(self.owner)
        if self.ready:
            await self.raw.close()
        self.raw = None
        self._waking = None
        self._ready = None
        self._mark.release()


class _Waking:
    """A ``Store`` that opens on first use, calls ``written`` after each write and times each
    call for the observers: the one place the store is opened, watchers are woken and store
    latency measured, so no entry point has to remember any of it."""

    def __init__(
        self,
        store: Store,
        written: Callable[[], None],
        opening: Callable[[], Awaitable[None]],
        ended: Callable[[int, OperationState, bool], None],
        observers: Observers,
    ) -> None:
        self._store = store
        self._written = written
        self._opening = opening
        self._ended = ended
        self._observers = observers

    async def _timed(self, write: bool, call: Callable[[], Awaitable[R]]) -> R:
        began = time.perf_counter()
        try:
            return await call()
        finally:
            self._observers.store_call(write, time.perf_counter() - began)

    async def _read(self, call: Callable[[], Awaitable[R]]) -> R:
        await self._opening()
        return await self._timed(False, call)

    async def _write(self, call: Callable[[], Awaitable[R]]) -> R:
        await self._opening()
        try:
            return await self._timed(True, call)
        finally:
            self._written()

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def get(self, slug: str) -> Deployment | None:
        return await self._read(lambda: self._store.get(slug))

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
        return await self._read(
            lambda: self._store.deployments(
                state=state,
                driver=driver,
                include_torn_down=include_torn_down,
                limit=limit,
                after=after,
                labels=labels,
            )
        )

    async def deployment_counts(self) -> list[tuple[str, str, int]]:
        return await self._read(self._store.deployment_counts)

    async def next_generation(self, slug: str) -> int:
        return await self._read(lambda: self._store.next_generation(slug))

    async def drivers(self) -> list[str]:
        return await self._read(self._store.drivers)

    async def snapshot(self, slug: str) -> tuple[Deployment | None, list[Operation]]:
        return await self._read(lambda: self._store.snapshot(slug))

    async def save(
        self, deployment: Deployment, *, replaces: Deployment | None = None, note: str | None = None
    ) -> bool:
        return await self._write(lambda: self._store.save(deployment, replaces=replaces, note=note))

    async def archive(self, slug: str) -> None:
        await self._write(lambda: self._store.archive(slug))

    async def create_operation(self, new: NewOperation) -> tuple[Operation, Found]:
        return await self._write(lambda: self._store.create_operation(new))

    async def begin(
        self,
        operation: int,
        deployment: Deployment,
        *,
        archive_first: bool = False,
        idle_since: datetime | None = None,
    ) -> bool:
        # ``idle_since`` passed only when given (an autostop): a store written before it still begins
        fence: dict[str, Any] = {} if idle_since is None else {"idle_since": idle_since}
        return await self._write(
            lambda: self._store.begin(operation, deployment, archive_first=archive_first, **fence)
        )

    async def touch(self, slug: str, at: datetime) -> Deployment | None:
        return await self._write(lambda: self._store.touch(slug, at))

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
        recorded = await self._write(
            lambda: self._store.end(
                operation, state, error, deployment=deployment, archive=archive, result=result
            )
        )
        self._ended(operation, state, recorded)
        return recorded

    async def request_cancel(self, operation: int, reason: str) -> Operation | None:
        return await self._write(lambda: self._store.request_cancel(operation, reason))

    async def keyed(self, key: str) -> Operation | None:
        return await self._read(lambda: self._store.keyed(key))

    async def bind_key(self, key: str, operation: int, *, retakes: int | None = None) -> Operation | None:
        return await self._write(lambda: self._store.bind_key(key, operation, retakes=retakes))

    async def operation(self, operation: int, *, with_log: bool = False) -> Operation | None:
        return await self._read(lambda: self._store.operation(operation, with_log=with_log))

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
        # ``actor`` passed only when asked for: a store written before it existed still lists
        by_actor: dict[str, Any] = {} if actor is None else {"actor": actor}
        return await self._read(
            lambda: self._store.operations(
                slug=slug, state=state, active=active, limit=limit, after=after, with_log=with_log, **by_actor
            )
        )

    async def last_operation(self, slug: str, generation: int) -> Operation | None:
        return await self._read(lambda: self._store.last_operation(slug, generation))

    async def add_events(self, events: Sequence[NewEvent]) -> None:
        await self._write(lambda: self._store.add_events(events))

    async def prune_progress(self, before: datetime) -> int:
        await self._opening()  # nothing a watcher waits for goes: no wake-up
        return await self._timed(True, lambda: self._store.prune_progress(before))

    async def events(
        self,
        *,
        after: int = 0,
        slug: str | None = None,
        operation: int | None = None,
        kind: str | None = None,
        limit: int = 500,
    ) -> list[Event]:
        return await self._read(
            lambda: self._store.events(after=after, slug=slug, operation=operation, kind=kind, limit=limit)
        )

    async def last_seq(self) -> int:
        return await self._read(self._store.last_seq)
