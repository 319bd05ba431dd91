"""Mutual exclusion per slug, across processes: an advisory ``flock`` on a file per slug.

The kernel drops a lock when its holder dies, however it dies, so a crashed host never
leaves a slug locked. Inside one process an asyncio lock per slug queues tasks first, so
only one task per process polls the file lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ._errors import SlugLocked, StoreError

_POLL = 0.02


class SlugLocks:
    """Hands out the lock of each slug; files live in ``folder`` (mode 0700)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._local: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, slug: str, timeout: float | None) -> AsyncIterator[None]:
        """Hold ``slug``'s lock; waits at most ``timeout`` seconds (None: without bound)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        local = self._local.setdefault(slug, asyncio.Lock())
        try:
            async with asyncio.timeout_at(deadline):
                await local.acquire()
        except TimeoutError:
            raise SlugLocked(f"workspace {slug!r} is busy in this process; waited {timeout:g} s") from None
        try:
            fd = await self._acquire_file(slug, deadline, timeout)
            try:
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock
        finally:
            local.release()

    async def _acquire_file(self, slug: str, deadline: float | None, timeout: float | None) -> int:
        path = self._folder / f"{slug}.lock"
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"the lock file {path} cannot be used: {exc.strerror or exc}; "
                f"{self._folder} must be a folder you can write"
            ) from None
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and loop.time() >= deadline:
                        holder = _read_holder(path)
                        raise SlugLocked(
                            f"workspace {slug!r} is being changed by another hearth process"
                            f"{f' (pid {holder})' if holder else ''}; waited {timeout:g} s"
                        ) from None
                    await asyncio.sleep(_POLL)  # flock has no async wake-up to wait on
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            os.close(fd)
            raise
        return fd


def _read_holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""
