"""The event log as the host sees it: progress buffered and written a loop turn at a time, one
bus that wakes whoever waits for a change, and the streams of ``watch`` and ``op.events()``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from .._errors import HearthError, StoreError
from .._models import Event
from .._store._base import NewEvent
from ._core import Core

log = logging.getLogger("hearth")

#: How often a host looks for other processes' events while someone waits for them (seconds).
POLL = 0.02
#: With a store that notifies (PostgreSQL): the longest wait for a notification before the
#: host reads the store's last event anyway (a notification lost with a broken connection).
LISTEN_FALLBACK = 0.5
#: The most events one read of the store returns.
BATCH = 500


class Bus:
    """Wakes whoever waits for events: at once for this process's writes, within ``POLL`` for
    another process's (one poll of the store's last sequence number, shared by every waiter;
    it runs only while someone waits or this host runs work, whose cancel requests it reads)."""

    def __init__(self, core: Core, busy: Callable[[], bool], on_cancel: Callable[[int, str], None]) -> None:
        self._core = core
        self._busy = busy
        self._on_cancel = on_cancel
        self._future: asyncio.Future[None] | None = None
        self._seen = 0
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None
        #: Set by ``close``: waiters end, nothing polls again.
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
        return bool(self._waiters or self._busy() or (self._future and not self._future.done()))

    async def _poll(self) -> None:
        core = self._core
        try:
            store = core.store
            waiting = getattr(core.raw, "wait_change", None)
            if not self._seen:
                self._seen = await store.last_seq()
            while self._wanted() and core.is_open:
                seq = await store.last_seq()
                if seq > self._seen:
                    if self._busy():
                        for event in await store.events(after=self._seen, kind="cancel", limit=10_000):
                            self._on_cancel(event.operation, event.message or "cancelled by request")
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


class EventLog:
    """Buffers this host's progress events and serves every process's events as streams."""

    def __init__(self, core: Core, busy: Callable[[], bool], on_cancel: Callable[[int, str], None]) -> None:
        self._core = core
        self._busy = busy
        self._on_cancel = on_cancel
        self._events: list[NewEvent] = []
        self._flushing: asyncio.Task[None] | None = None
        self.bus = Bus(core, busy, on_cancel)
        core.on_written(self._bump)

    def _bump(self) -> None:
        self.bus.bump()

    def reopen(self) -> None:
        """A new bus for a host opened again after a close."""
        self.bus = Bus(self._core, self._busy, self._on_cancel)

    def add(self, event: NewEvent) -> None:
        """Buffer one event; the events of one loop turn share one transaction."""
        if not self._events:
            asyncio.get_running_loop().call_soon(self._schedule_flush)
        self._events.append(event)

    def _schedule_flush(self) -> None:
        if self._events and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Write the buffered events; a store that fails loses them (logged), never the verb."""
        while (
            self._flushing is not None
            and not self._flushing.done()
            and self._flushing is not asyncio.current_task()
        ):
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._flushing)
        while self._events and self._core.is_open:  # events that came during a write go next
            events, self._events = self._events, []
            try:
                await asyncio.shield(self._core.store.add_events(events))
            except StoreError as exc:
                log.error("%d progress event(s) not recorded: %s", len(events), exc.message)

    async def after(
        self, position: int, *, slug: str | None = None, operation: int | None = None
    ) -> AsyncIterator[Event]:
        """Events after ``position`` as they come; for one operation, until its final event."""
        store = self._core.store
        bus = self.bus
        with bus.interest():
            while not bus.closed:
                changed = bus.changed()
                try:
                    batch = await store.events(after=position, slug=slug, operation=operation)
                except HearthError:
                    if bus.closed:
                        return  # the host closed under it
                    raise
                for event in batch:
                    position = event.seq
                    yield event
                    if operation is not None and event.final:
                        return
                if len(batch) == BATCH:
                    continue
                if operation is not None and not batch:
                    current = await store.operation(operation)
                    if current is None or current.finished:  # ``after`` was past its last event
                        if not await store.events(after=position, operation=operation, limit=1):
                            return
                        continue
                await asyncio.shield(changed)  # one waiter leaving must not end the others' wait
