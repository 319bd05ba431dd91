"""``serve(driver)``: run a driver as an adapter on stdin/stdout.

Before any driver code runs, the real stdout is moved to a private descriptor and fd 1
is pointed at stderr, so a stray ``print`` (or a library's) cannot corrupt the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from .codec import FrameTooLarge, LineDecoder
from .codes import PROTOCOL_ENV
from .connection import WriteCoalescer
from .driver import Driver
from .session import ServerSession

log = logging.getLogger("hearth_adaptersdk")
_PARENT_POLL = 0.5
_EXIT_GRACE = 3.0


def serve(driver: Driver | type[Driver], argv: Sequence[str] | None = None) -> None:
    """Serve ``driver`` (an instance, or a class to instantiate) until stdin closes; exits."""
    parent = os.getppid()  # as early as possible: the host must not be gone already
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
    instance = driver() if isinstance(driver, type) else driver
    sys.exit(_run(instance, protocol_fd, parent))


def _run(driver: Driver, protocol_fd: int, parent: int) -> int:
    """Run the server; a driver task that ignores cancellation cannot keep the process alive."""
    loop = asyncio.new_event_loop()
    code = loop.run_until_complete(_serve_stdio(driver, protocol_fd, parent))
    stuck = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if stuck:
        log.error("%d driver task(s) ignored cancellation; exiting anyway", len(stuck))
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


async def _watch_parent(done: asyncio.Future[int], parent: int) -> None:
    while not done.done():
        await asyncio.sleep(_PARENT_POLL)
        if os.getppid() != parent:
            log.error("the host process is gone; exiting")
            _finish(done, 1)


async def _serve_stdio(driver: Driver, protocol_fd: int, parent: int) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    out_transport, output = await loop.connect_write_pipe(
        lambda: _Output(done), os.fdopen(protocol_fd, "wb", buffering=0)
    )
    writer = WriteCoalescer(out_transport.write)
    session = ServerSession(driver, writer)
    in_transport, _ = await loop.connect_read_pipe(
        lambda: _Input(session, done), os.fdopen(0, "rb", buffering=0, closefd=False)
    )
    watcher = asyncio.create_task(_watch_parent(done, parent))
    code = await done
    watcher.cancel()
    in_transport.close()
    await session.close(_EXIT_GRACE)
    writer.flush()
    out_transport.close()  # flushes what is buffered, then closes
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(output.lost.wait(), _EXIT_GRACE)
    return code
