"""``serve(driver)``: run a driver as an adapter on stdin/stdout.

Before any driver code runs, the real stdout is moved to a private descriptor and fd 1
is pointed at stderr, so a stray ``print`` (or a library's) cannot corrupt the protocol.

On exit (stdin EOF, after ``shutdown``, or when the host dies) the requests in flight are
cancelled once, and the server waits for them and for their ``ctx.cleanup`` work up to the
rollback grace; only what is still running after it is abandoned (``os._exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from ._codec import FrameTooLarge, LineDecoder
from ._connection import WriteCoalescer
from ._driver import Driver
from ._session import DEFAULT_ROLLBACK_GRACE, ServerSession
from .codes import PROTOCOL_ENV

log = logging.getLogger("hearth_adaptersdk")
_PARENT_POLL = 0.5
_EXIT_GRACE = 3.0
#: The environment variable that sets the rollback grace (seconds) when ``serve`` is not given one.
ROLLBACK_GRACE_ENV = "HEARTH_ROLLBACK_GRACE"


def serve(
    driver: Driver | type[Driver],
    argv: Sequence[str] | None = None,
    *,
    rollback_grace: float | None = None,
) -> None:
    """Serve ``driver`` (an instance, or a class to instantiate) until stdin closes; exits.

    ``rollback_grace`` bounds, in seconds, how long a cancelled request's ``ctx.cleanup`` work
    is waited for before it is answered (``rolled_back: false``), and how long the exit waits
    for the requests in flight and their cleanups. When it is None, ``$HEARTH_ROLLBACK_GRACE``
    sets it (an invalid value is ignored with a warning), else ``DEFAULT_ROLLBACK_GRACE`` (30 s).
    """
    parent = os.getppid()  # as early as possible: the host must not be gone already
    if rollback_grace is not None and not (math.isfinite(rollback_grace) and rollback_grace >= 0):
        raise ValueError(f"rollback_grace must be a number of seconds >= 0, not {rollback_grace!r}")
    argv = sys.argv[1:] if argv is None else argv
    cls = driver if isinstance(driver, type) else type(driver)
    if "--version" in argv:
        print(f"hearth-adapter-{cls.name} {cls.version}")
        sys.exit(0)
    if os.environ.get(PROTOCOL_ENV) != "1":
        sys.stderr.write(
            f"hearth-adapter-{cls.name} is a hearth adapter: the hearth host starts it and talks "
            f"JSON-RPC to it on stdin/stdout ({PROTOCOL_ENV}=1). Run 'hearth' instead, or "
            f"'hearth-adaptersdk conformance {sys.argv[0]}' to test it.\n"
        )
        sys.exit(2)
    sys.stdout.flush()
    protocol_fd = os.dup(1)  # not inherited by children the driver starts
    os.dup2(2, 1)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    grace = rollback_grace if rollback_grace is not None else rollback_grace_from_env(os.environ)
    instance = driver() if isinstance(driver, type) else driver
    sys.exit(_serve_until_done(instance, protocol_fd, parent, grace))


def rollback_grace_from_env(environ: Mapping[str, str]) -> float:
    """``$HEARTH_ROLLBACK_GRACE`` in seconds; the default when unset or invalid (with a warning)."""
    raw = environ.get(ROLLBACK_GRACE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_ROLLBACK_GRACE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        log.warning(
            "ignoring %s=%r: not a number of seconds >= 0; the rollback grace stays %g s",
            ROLLBACK_GRACE_ENV,
            raw,
            DEFAULT_ROLLBACK_GRACE,
        )
        return DEFAULT_ROLLBACK_GRACE
    return value


def _serve_until_done(
    driver: Driver, protocol_fd: int, parent: int, rollback_grace: float = DEFAULT_ROLLBACK_GRACE
) -> int:
    """Run the server; driver work still running after the grace cannot keep the process alive."""
    threading.Thread(
        target=_watchdog,
        args=(parent, rollback_grace + _EXIT_GRACE + 2.0),
        name="hearth-parent-watchdog",
        daemon=True,
    ).start()
    loop = asyncio.new_event_loop()
    code = loop.run_until_complete(_serve_stdio(driver, protocol_fd, parent, rollback_grace))
    stuck = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if stuck:
        log.error(
            "%d driver task(s) (requests or their cleanups) still running after the %g s "
            "rollback grace; exiting anyway",
            len(stuck),
            rollback_grace,
        )
        sys.stderr.flush()
        os._exit(code)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    return code


class _Input(asyncio.Protocol):
    def __init__(self, session: ServerSession, done: asyncio.Future[int]) -> None:
        self._decoder = LineDecoder()
        self._session = session
        self._done = done

    def data_received(self, data: bytes) -> None:
        try:
            items = self._decoder.feed(data)
        except FrameTooLarge as exc:
            log.error("closing: %s", exc)
            _finish(self._done, 1)
            return
        for item in items:
            self._session.handle(item)

    def eof_received(self) -> bool | None:
        _finish(self._done, 0)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        _finish(self._done, 0)


class _Output(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self._done = done
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        _finish(self._done, 0)  # the host closed our stdout: nobody is listening any more


def _finish(done: asyncio.Future[int], code: int) -> None:
    if not done.done():
        done.set_result(code)


def _watchdog(parent: int, bound: float) -> None:
    """A thread that ends the process once the host is gone and the event loop has not done
    so within ``bound`` seconds: a driver that blocks the loop cannot outlive its host."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    time.sleep(bound)
    with contextlib.suppress(Exception):
        log.error("the host is gone and the adapter did not stop within %g s; exiting", bound)
        sys.stderr.flush()
    os._exit(1)


async def _watch_parent(done: asyncio.Future[int], parent: int) -> None:
    while not done.done():
        await asyncio.sleep(_PARENT_POLL)
        if os.getppid() != parent:
            log.error("the host process is gone; exiting")
            _finish(done, 1)


async def _serve_stdio(
    driver: Driver, protocol_fd: int, parent: int, rollback_grace: float = DEFAULT_ROLLBACK_GRACE
) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    out_transport, output = await loop.connect_write_pipe(
        lambda: _Output(done), os.fdopen(protocol_fd, "wb", buffering=0)
    )
    writer = WriteCoalescer(out_transport.write)
    session = ServerSession(driver, writer, rollback_grace=rollback_grace)
    in_transport, _ = await loop.connect_read_pipe(
        lambda: _Input(session, done), os.fdopen(0, "rb", buffering=0, closefd=False)
    )
    watcher = asyncio.create_task(_watch_parent(done, parent))
    code = await done
    watcher.cancel()
    in_transport.close()
    await session.close()
    writer.flush()
    out_transport.close()  # flushes what is buffered, then closes
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(output.lost.wait(), _EXIT_GRACE)
    return code
