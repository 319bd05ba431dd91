"""Advisory ``flock`` files: mutual exclusion per slug, and marks that prove a host is alive.

The kernel drops a lock when its holder dies, however it dies, so a crashed host never
leaves a slug locked nor its mark held.

A long-lived host must not accumulate a file per slug it ever touched, so a lock file is
unlinked when released. Unlinking a lock file is only safe with one discipline, followed by
every user of the folder: unlink only while holding the lock, and after every successful
``flock`` check that the path still names the locked inode (else another process may have
unlinked it and a newcomer created a fresh file: both would "hold" the slug), and retry if not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._errors import SlugLocked, StoreError

_POLL = 0.02
_OWNER = re.compile(r"[A-Za-z0-9._:-]{1,200}")


@dataclass
class _Slot:
    """The in-process queue of one slug, and how many tasks hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Locks(Protocol):
    """Per-slug mutual exclusion: ``SlugLocks`` (files in the home) or, on a store several hosts
    share, the store's own (``PgSlugLocks``: advisory locks in PostgreSQL)."""

    def hold(self, slug: str, timeout: float | None) -> contextlib.AbstractAsyncContextManager[None]: ...


class SlugLocks:
    """Hands out the lock of each slug; files live in ``folder`` (mode 0700).

    Inside one process an asyncio lock per slug queues tasks first, so only one task per
    process polls the file lock; it is dropped once no task holds or waits for it.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._local: dict[str, _Slot] = {}

    @contextlib.asynccontextmanager
    async def hold(self, slug: str, timeout: float | None) -> AsyncIterator[None]:
        """Hold ``slug``'s lock; waits at most ``timeout`` seconds (None: without bound, 0: try once)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        slot = self._local.setdefault(slug, _Slot())
        slot.users += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await slot.lock.acquire()
            except TimeoutError:
                raise SlugLocked(
                    f"workspace {slug!r} is busy in this process; waited {timeout:g} s"
                ) from None
            try:
                fd, path = await self._acquire_file(slug, deadline, timeout)
                try:
                    yield
                finally:
                    _unlink_and_close(fd, path)
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._local[slug]

    async def _acquire_file(
        self, slug: str, deadline: float | None, timeout: float | None
    ) -> tuple[int, Path]:
        path = self._folder / f"{slug}.lock"
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StoreError(
                    f"the lock file {path} cannot be used: {exc.strerror or exc}; "
                    f"{self._folder} must be a folder you can write"
                ) from None
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
                if _still_named(fd, path):
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode())
                    return fd, path
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the previous holder unlinked it: lock the file that is there now


class OwnerMark:
    """Proves to other processes on this machine that the host owning ``owner`` is alive.

    This is how the SQLite store's hosts, which share one machine, tell that the owner of an
    operation died: its mark can be locked by someone else. (The PostgreSQL store, whose hosts
    span machines, uses leases instead.) Call ``acquire`` before ``owner`` is written anywhere
    others may read it, since until then ``alive`` rightly answers False. Keep each owner's
    marks in a folder of their own, apart from slug locks.
    """

    def __init__(self, folder: Path, owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise ValueError(f"an owner token is 1 to 200 of A-Z a-z 0-9 . _ : -, not {owner!r}")
        self.owner = owner
        self.path = folder / f"{owner}.lock"
        self._folder = folder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create and lock the mark (folder 0700, file 0600) until ``release`` or this process ends."""
        if self._fd is not None:
            return
        while True:
            try:
                self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StoreError(
                    f"the owner mark {self.path} cannot be used: {exc.strerror or exc}; "
                    f"{self._folder} must be a folder you can write"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(f"the owner mark {self.path} is held by another process") from None
            except BaseException:
                os.close(fd)
                raise
            if _still_named(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._fd = fd
                return
            os.close(fd)  # ``alive`` removed it between our open and flock: make it again

    def release(self) -> None:
        """Remove the mark; its owner is then dead to ``alive``."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _unlink_and_close(fd, self.path)

    @staticmethod
    def alive(folder: Path, owner: str) -> bool:
        """Whether a live process holds ``owner``'s mark; a dead owner's mark is removed.

        An invalid token is never held, so it is False too.
        """
        if not _OWNER.fullmatch(owner):
            return False
        path = folder / f"{owner}.lock"
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError as exc:
                raise StoreError(f"the owner mark {path} cannot be read: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return True
            except BaseException:
                os.close(fd)
                raise
            if _still_named(fd, path):
                _unlink_and_close(fd, path)
                return False
            os.close(fd)  # replaced meanwhile: look at the file that is there now


def new_owner() -> str:
    """A token naming this host process: ``hostname:pid:random`` (unique even if a pid is reused)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (not unlinked, not replaced)."""
    try:
        named = os.stat(path)
    except OSError:  # gone, or unreachable: the caller opens it again and sees which
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _unlink_and_close(fd: int, path: Path) -> None:
    """Unlink while still locked, so no one can lock this inode and believe it is current.

    Emptied first: ext4 writes out on close a file that was truncated to 0 and written (the
    holder's pid), ~0.2 ms on the event loop per verb, which an empty file does not cost."""
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # a file left behind is harmless: it is only reused
            os.unlink(path)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""
