"""A connection to an adapter running as a child process.

The child gets its own session (so its whole process group can be signalled), an
allow-listed environment, and pipes for stdin, stdout and stderr. Stderr is always
read into a ring buffer and forwarded to ``logging`` under the adapter's name, so a
chatty adapter can never block on a full pipe. Closing is bounded: close stdin, wait,
SIGTERM the group, wait, SIGKILL the group, reap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ._codec import FrameTooLarge, LineDecoder
from ._connection import Closed, Connection, OnClosed, OnMessage, WriteCoalescer
from .codes import PROTOCOL_ENV

#: Variables a child may inherit; the adapter's config may name more.
ALLOWED_ENV = ("PATH", "HOME", "USER", "LANG", "TZ", "TMPDIR")
ALLOWED_ENV_PREFIXES = ("LC_", "XDG_")
STDERR_LINES = 200
_READ_CHUNK = 256 * 1024
_WRITE_HIGH_WATER = 4 * 1024 * 1024
_GROUP_GONE_BOUND = 2.0


def child_environment(
    passthrough: Iterable[str] = (), source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment an adapter gets: the allow-list, the named extras, HEARTH_PROTOCOL=1."""
    source = os.environ if source is None else source
    extra = set(passthrough)
    env = {
        key: value
        for key, value in source.items()
        if key in ALLOWED_ENV or key.startswith(ALLOWED_ENV_PREFIXES) or key in extra
    }
    env[PROTOCOL_ENV] = "1"
    return env


class SubprocessConnection(Connection):
    """Talks to one child process; create it with ``await SubprocessConnection.spawn(...)``."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.name = name
        self._process = process
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._log = logging.getLogger(f"hearth.adapter.{name}")
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._writer = WriteCoalescer(self._write_stdin)

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> SubprocessConnection:
        """Start ``argv`` in a new session; OSError (missing, not executable) propagates."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else child_environment(),
            cwd=cwd,
            start_new_session=True,
            limit=_READ_CHUNK,
        )
        return cls(process, name or os.path.basename(argv[0]))

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def start(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        stderr_done = asyncio.create_task(self._read_stderr())
        self._tasks = [
            stderr_done,
            asyncio.create_task(self._read_stdout(on_message, on_closed, stderr_done)),
        ]

    async def _read_stdout(
        self, on_message: OnMessage, on_closed: OnClosed, stderr_done: asyncio.Task[None]
    ) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        decoder = LineDecoder()
        error: Exception | None = None
        try:
            try:
                while data := await stdout.read(_READ_CHUNK):
                    for item in decoder.feed(data):
                        on_message(item)
            except (FrameTooLarge, OSError) as exc:
                error = exc
            if error is None and not self._closing:
                # Stdout ended: the child is exiting. Give it a moment so that the exit code
                # and the last stderr lines can go into the report.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), 2.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stderr_done), 0.5)
        finally:
            on_closed(Closed(self._process.returncode, self.stderr_tail(), error))

    async def _read_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        pending = b""
        while data := await stderr.read(_READ_CHUNK):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                self._record(line)
            if len(pending) > 64 * 1024:  # a runaway line: keep its start, drop the rest
                self._record(pending)
                pending = b""
        if pending:
            self._record(pending)

    def _record(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")[:2000]
        self._stderr.append(text)
        self._log.info("%s", text)

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    async def send(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.is_closing():
            raise ConnectionError(f"{self.name}: the connection is closed")
        self._writer(data)
        if stdin.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            await stdin.drain()

    def _write_stdin(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    def close_stdin(self) -> None:
        """Signal end of input; a well-behaved adapter exits on it."""
        self._writer.flush()
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def close(self, stdin_grace: float = 2.0, term_grace: float = 2.0) -> None:
        """Bounded stop: EOF, then SIGTERM, then SIGKILL to the group; always reaps."""
        self._closing = True
        self.close_stdin()
        if not await self._wait(stdin_grace):
            self._signal_group(signal.SIGTERM)
            if not await self._wait(term_grace):
                self._signal_group(signal.SIGKILL)
                await self._process.wait()
        # Grandchildren left in the adapter's group go with it.
        self._signal_group(signal.SIGKILL)
        await _wait_group_gone(self._process.pid, _GROUP_GONE_BOUND)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # asyncio.subprocess.Process has no close(); without this its transport warns when collected.
        self._process._transport.close()  # type: ignore[attr-defined]

    async def _wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group ``pgid``, read from /proc (empty elsewhere)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


async def _wait_group_gone(pgid: int, bound: float) -> None:
    """SIGKILL is delivered asynchronously: wait (bounded) until no member of the group runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while _group_members(pgid) and loop.time() < deadline:  # noqa: ASYNC110 - no event for this
        await asyncio.sleep(0.01)
