"""The event log as the host sees it: progress buffered and written a loop turn at a time, one
bus that wakes whoever waits for a change, and the streams of ``watch`` and ``op.events()``:
one reader of the store per host fans each change out to them in memory, each stream's queue
bounded (``QUEUE``), so that open streams cost a writer nothing but a share of one read."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

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
#: The most events a stream may have waiting for it: one that falls further behind the host's
#: reader is dropped, its queue emptied. ``watch`` then reads the store from its last event
#: itself, unseen; the daemon's streams end, and the client resumes after its last ``seq``.
QUEUE = 1000


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
                            if event.operation is not None:  # a cancel is always of one
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


class _Subscriber:
    """One stream of the fan-out: what it wants (after ``after``, of ``slug`` or ``operation``)
    and at most ``limit`` events waiting for it; past that it is dropped (its queue emptied)
    and reads the store again from its last event, or ends, as its stream chooses."""

    __slots__ = ("_waiter", "after", "dropped", "ended", "error", "limit", "operation", "queue", "slug")

    def __init__(self, after: int, slug: str | None, operation: int | None, limit: int) -> None:
        self.after = after
        self.slug = slug
        self.operation = operation
        self.limit = limit
        self.queue: collections.deque[Event] = collections.deque()
        self.dropped = False
        #: The host closed: the stream ends.
        self.ended = False
        #: The store could not be read: the stream raises it.
        self.error: HearthError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, batch: list[Event]) -> None:
        slug, operation, after = self.slug, self.operation, self.after
        wanted = [
            e
            for e in batch
            if e.seq > after
            and (slug is None or e.slug == slug)
            and (operation is None or e.operation == operation)
        ]
        if not wanted:
            return
        if len(self.queue) + len(wanted) > self.limit:
            self.dropped = True
            self.queue.clear()
        else:
            self.queue.extend(wanted)
        self.wake()

    def end(self, error: HearthError | None = None) -> None:
        self.ended = True
        self.error = error
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until the reader hands it events, drops it, or ends."""
        if self.queue or self.dropped or self.ended:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Fanout:
    """One reader of the store per host: at each change one task reads the new events once
    (after ``position``, the last it handed out, ``BATCH`` at a time) and hands each stream
    what it wants, in memory. So a write costs one read however many streams are open. It
    runs while some stream is subscribed, and forgets its position when none is (a stream that
    comes later starts from the store's last event, not from a backlog no one wants)."""

    def __init__(self, core: Core, bus: Bus) -> None:
        self._core = core
        self._bus = bus
        #: The last event handed out; None while no stream is subscribed.
        self.position: int | None = None
        #: The most events a stream may have waiting (``QUEUE``).
        self.limit = QUEUE
        self._subscribers: set[_Subscriber] = set()
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[int] | None = None

    @property
    def streams(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, after: int, slug: str | None, operation: int | None) -> tuple[_Subscriber, int]:
        """A new stream and the reader's position: every event past it will be queued for the
        stream; those up to it, the stream reads from the store itself."""
        while self.position is None:
            if self._starting is None or self._starting.done():
                self._starting = asyncio.get_running_loop().create_task(self._core.store.last_seq())
                self._starting.add_done_callback(_retrieved)  # its awaiters may all have left
            starting = self._starting
            seq = await asyncio.shield(starting)
            if self.position is None and starting is self._starting:
                self.position = seq
        subscriber = _Subscriber(after, slug, operation, self.limit)
        self._subscribers.add(subscriber)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="hearth-fanout")
        return subscriber, self.position

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.queue.clear()
        if not self._subscribers:
            self._idle()

    def _idle(self) -> None:
        """No stream left: the reader stops and nothing is kept."""
        reader, self._reader = self._reader, None
        self.position = None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()

    async def _read(self) -> None:
        me = asyncio.current_task()
        bus = self._bus
        store = self._core.store
        failure: HearthError | None = None
        try:
            with bus.interest():
                while self._subscribers and not bus.closed and self._reader is me:
                    changed = bus.changed()
                    assert self.position is not None
                    batch = await store.events(after=self.position, limit=BATCH)
                    if self._reader is not me:
                        return
                    if batch:
                        self.position = batch[-1].seq
                        for subscriber in list(self._subscribers):
                            subscriber.offer(batch)
                            if subscriber.dropped:
                                self._subscribers.discard(subscriber)
                        if len(batch) == BATCH:
                            await asyncio.sleep(0)  # the streams take their share before the next
                            continue
                    await asyncio.shield(changed)  # the future is shared with other waiters
        except HearthError as exc:
            failure = None if bus.closed else exc
        except Exception as exc:  # a bug: the streams must not wait for ever
            log.exception("the host's reader of events failed")
            failure = HearthError(f"the event stream failed: {type(exc).__name__}")
        if self._reader is me:  # closed, failed, or every stream left: end those that are left
            for subscriber in list(self._subscribers):
                subscriber.end(failure)
            self._subscribers.clear()
            self._idle()


class EventLog:
    """Buffers this host's progress events and serves every process's events as streams."""

    def __init__(self, core: Core, busy: Callable[[], bool], on_cancel: Callable[[int, str], None]) -> None:
        self._core = core
        self._busy = busy
        self._on_cancel = on_cancel
        self._events: list[NewEvent] = []
        self._flushing: asyncio.Task[None] | None = None
        self.bus = Bus(core, busy, on_cancel)
        self.fanout = Fanout(core, self.bus)
        core.on_written(self._bump)

    def _bump(self) -> None:
        self.bus.bump()

    def reopen(self) -> None:
        """A new bus for a host opened again after a close."""
        self.bus = Bus(self._core, self._busy, self._on_cancel)
        self.fanout = Fanout(self._core, self.bus)

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
        async with contextlib.aclosing(self.batches(position, slug=slug, operation=operation)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(
        self,
        position: int,
        *,
        slug: str | None = None,
        operation: int | None = None,
        end_behind: bool = False,
    ) -> AsyncGenerator[list[Event]]:
        """``after`` in lists: the events that came together (a stream writes each list at once).
        Those the host's reader already passed are read from the store first, then the stream
        joins the fan-out. One dropped for falling ``QUEUE`` events behind starts over from its
        last event, or with ``end_behind`` ends there (its reader resumes after that event)."""
        store = self._core.store
        bus, fanout = self.bus, self.fanout
        while not bus.closed:
            try:
                subscriber, start = await fanout.subscribe(position, slug, operation)
            except HearthError:
                if bus.closed:
                    return  # the host closed under it
                raise
            try:
                while position < start:  # what the reader passed already: from the store
                    try:
                        read = await store.events(after=position, slug=slug, operation=operation)
                    except HearthError:
                        if bus.closed:
                            return  # the host closed under it
                        raise
                    batch = [e for e in read if e.seq <= start]  # those past it are in the queue
                    batch, final = _through_final(batch, operation)
                    if batch:
                        position = batch[-1].seq
                        yield batch
                    if final:
                        return
                    if len(read) < BATCH or len(batch) < len(read):
                        break
                if operation is not None and await self._past_its_end(operation, position):
                    return
                while True:
                    if subscriber.queue:
                        batch, final = _through_final(list(subscriber.queue), operation)
                        subscriber.queue.clear()
                        position = batch[-1].seq
                        yield batch
                        if final:
                            return
                        continue
                    if subscriber.dropped:
                        break
                    if subscriber.ended:
                        if subscriber.error is not None:
                            raise subscriber.error
                        return
                    await subscriber.wait()
            finally:
                fanout.unsubscribe(subscriber)
            if end_behind:
                return
            log.debug("a stream fell %d events behind; it reads the store from #%d", fanout.limit, position)

    async def _past_its_end(self, operation: int, position: int) -> bool:
        """Whether the operation's final event is written and no event follows ``position``
        (``after`` was past its last event): then its stream ends at once. A finished operation
        whose final event waits for its record to settle (``_states.final_event_waits``) is
        still streamed."""
        store = self._core.store
        try:
            current = await store.operation(operation)
            if current is not None and not current.finished:
                return False
            if current is not None:
                states = await store.events(operation=operation, kind="state")
                if not any(event.final for event in states):
                    return False
            return not await store.events(after=position, operation=operation, limit=1)
        except HearthError:
            if self.bus.closed:
                return True
            raise


#: The events of a slug whose labels are not known yet (a first provision's, before its record
#: is written) held back for it at most; past it they are dropped, as of an unlabelled slug.
UNDECIDED_MAX = 1000


async def labelled(
    batches: AsyncIterator[list[Event]], labels: dict[str, str], core: Core
) -> AsyncGenerator[list[Event]]:
    """The events of ``batches`` whose workspace carried every label of ``labels`` when the
    event was written. Events do not store labels; every change of a record writes a
    ``workspace`` event with the record, so a slug's labels at an event are those of its last
    ``workspace`` event before it (read from the store once per slug, then followed in the
    stream). A first provision's events before its record exists (its ``queued``) take the
    labels its first ``workspace`` event gives: when that is not written yet they are held back
    until it comes (and dropped if the operation ends without one: the workspace never
    existed). A ``workspace`` event passes when the workspace carried them before it or carries
    them after it, so a watcher sees a workspace leave its set; and an operation whose events
    passed is followed to its final event (a cancelled first provision's end comes after its
    record is gone). Lists left empty are not yielded."""
    known: dict[str, dict[str, str] | None] = {}  # None: not known yet (held back in ``undecided``)
    undecided: dict[str, list[Event]] = {}
    following: set[int] = set()

    def carries(slug: str) -> bool:
        have = known[slug] or {}
        return all(have.get(key) == value for key, value in labels.items())

    def keep(event: Event, kept: list[Event]) -> None:
        kept.append(event)
        if event.operation is not None:
            if event.final:
                following.discard(event.operation)
            else:
                following.add(event.operation)

    try:
        async for batch in batches:
            kept: list[Event] = []
            for event in batch:
                slug = event.slug
                if slug not in known:
                    known[slug] = await _labels_before(core, slug, event.seq)
                if known[slug] is None and event.kind != "workspace":
                    held = undecided.setdefault(slug, [])
                    held.append(event)
                    if event.final or len(held) > UNDECIDED_MAX:  # it never got a record
                        del undecided[slug], known[slug]
                    continue
                before = known[slug] is not None and carries(slug)
                if event.kind == "workspace":
                    known[slug] = dict(event.record.labels) if event.record is not None else {}
                    for waiting in undecided.pop(slug, []):
                        if carries(slug):
                            keep(waiting, kept)
                if before or carries(slug) or event.operation in following:
                    keep(event, kept)
            if kept:
                yield kept
    finally:
        closer = getattr(batches, "aclose", None)
        if closer is not None:
            await closer()


async def flattened(batches: AsyncGenerator[list[Event]]) -> AsyncGenerator[Event]:
    """The events of ``batches``, one at a time."""
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for event in batch:
                yield event


async def _labels_before(core: Core, slug: str, seq: int) -> dict[str, str] | None:
    """The labels ``slug`` carried just before event ``seq``: its last ``workspace`` event's
    record's; before its first one (a first provision's ``queued``), the labels that one gave
    it; its current record's when it has no ``workspace`` event (events older than them); None
    when there is neither yet (a first provision whose record is still to be written)."""
    store = core.store
    last: Event | None = None
    position = 0
    while True:
        page = await store.events(after=position, slug=slug, kind="workspace", limit=BATCH)
        for event in page:
            if event.seq >= seq:
                last = last or event
                page = []
                break
            last = event
        if len(page) < BATCH:
            break
        position = page[-1].seq
    if last is not None:
        return dict(last.record.labels) if last.record is not None else {}
    record = await store.get(slug)
    return dict(record.labels) if record is not None else None


def _through_final(events: list[Event], operation: int | None) -> tuple[list[Event], bool]:
    """``events`` up to the operation's final one (its stream ends there), and whether it came."""
    if operation is not None:
        for index, event in enumerate(events):
            if event.final:
                return events[: index + 1], True
    return events, False


def _retrieved(task: asyncio.Task[int]) -> None:
    if not task.cancelled():
        task.exception()
