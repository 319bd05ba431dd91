"""Slug locks and owner marks: what they leave behind, and exclusion across real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hearth import SlugLocked, StoreError
from hearth._store import _locks
from hearth._store._locks import OwnerMark, SlugLocks, new_owner

#: Appends ``enter <pid>`` and ``exit <pid>`` to a log around each of N holds of one slug.
HAMMER = """
import asyncio, os, sys
from pathlib import Path
from hearth._store import _locks

_locks._POLL = 0.001

def note(log, word):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"{word} {os.getpid()}\\n".encode())
    os.close(fd)

async def main(folder, log, n):
    locks = _locks.SlugLocks(folder)
    for _ in range(n):
        async with locks.hold("s", None):
            note(log, "enter")
            await asyncio.sleep(0)
            note(log, "exit")

print("ready", flush=True)
sys.stdin.readline()
asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""

#: Holds one slug until a line arrives on stdin.
HOLD_SLUG = """
import asyncio, sys
from pathlib import Path
from hearth._store._locks import SlugLocks

async def main():
    async with SlugLocks(Path(sys.argv[1])).hold(sys.argv[2], None):
        print("held", flush=True)
        sys.stdin.readline()

asyncio.run(main())
"""

#: Holds an owner mark until a line arrives on stdin (or the process is killed).
HOLD_MARK = """
import sys
from pathlib import Path
from hearth._store._locks import OwnerMark

mark = OwnerMark(Path(sys.argv[1]), sys.argv[2])
mark.acquire()
print("held", flush=True)
sys.stdin.readline()
"""


def note(log: Path, word: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"{word} {os.getpid()}\n".encode())
    os.close(fd)


def open_on(path: Path) -> list[str]:
    """What this process's descriptors open on ``path`` name: the path, or ``<path> (deleted)``."""
    targets = []
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the descriptor listing the folder is gone
            targets.append(os.readlink(entry))
    return sorted(t for t in targets if t in (str(path), f"{path} (deleted)"))


async def until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    """Wait, yielding to other tasks, until ``condition`` holds (fails after ``bound`` seconds)."""
    async with asyncio.timeout(bound):
        while not condition():  # noqa: ASYNC110 (the condition is no event we can wait on)
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def child(source: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A Python child running ``source``, killed (by its pid) and reaped if still running at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", source, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        return (await proc.stdout.readline()).decode().strip()


async def send(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    await proc.stdin.drain()


# -- SlugLocks: nothing left behind -----------------------------------------------------------


async def test_a_held_lock_file_names_its_holder_and_is_gone_after_release(tmp_path: Path) -> None:
    locks = SlugLocks(tmp_path / "locks")
    async with locks.hold("alpha", 0.0):
        assert (tmp_path / "locks" / "alpha.lock").read_text() == str(os.getpid())
        assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "locks" / "alpha.lock").stat().st_mode) == 0o600
        assert set(locks._local) == {"alpha"}
    assert list((tmp_path / "locks").iterdir()) == []
    assert locks._local == {}


async def test_an_error_inside_the_hold_still_releases_everything(tmp_path: Path) -> None:
    locks = SlugLocks(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        async with locks.hold("alpha", None):
            raise RuntimeError("boom")
    assert locks._local == {}
    assert list(tmp_path.iterdir()) == []
    async with locks.hold("alpha", 0.0):  # and it can be taken again at once
        pass


async def test_queued_tasks_all_get_the_lock_and_leave_nothing(tmp_path: Path) -> None:
    locks = SlugLocks(tmp_path)
    inside: list[int] = []
    order: list[int] = []

    async def take(n: int) -> None:
        async with locks.hold("alpha", 5.0):
            inside.append(n)
            assert len(inside) == 1
            await asyncio.sleep(0)
            order.append(n)
            inside.remove(n)

    await asyncio.gather(*(take(n) for n in range(5)))
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert locks._local == {}
    assert list(tmp_path.iterdir()) == []


async def test_a_timed_out_and_a_cancelled_waiter_leave_nothing(tmp_path: Path) -> None:
    locks = SlugLocks(tmp_path)
    held, done = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with locks.hold("alpha", 0.0):
            held.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    with pytest.raises(SlugLocked, match=r"'alpha' is busy in this process; waited 0.01 s"):
        async with locks.hold("alpha", 0.01):
            pytest.fail("entered a held lock")
    assert locks._local["alpha"].users == 1  # only the holder

    async def wait_forever() -> None:
        async with locks.hold("alpha", None):
            pytest.fail("entered a held lock")

    waiter = asyncio.create_task(wait_forever())
    await until(lambda: locks._local["alpha"].users == 2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert locks._local["alpha"].users == 1

    done.set()
    await task
    assert locks._local == {}
    assert list(tmp_path.iterdir()) == []


async def test_an_unusable_folder_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "locks").write_text("not a folder")
    locks = SlugLocks(tmp_path / "locks")
    with pytest.raises(StoreError, match=r"lock file .* cannot be used"):
        async with locks.hold("alpha", 0.0):
            pass
    assert locks._local == {}


# -- SlugLocks: exclusion across the unlink race ----------------------------------------------


async def test_a_waiter_that_locks_an_unlinked_file_retries_on_the_new_one(tmp_path: Path) -> None:
    """A holds the file; B opened it and waits; A unlinks and releases; C makes a new file and
    holds it. B then locks the old inode: it must notice, and wait for C's file instead."""
    a, b, c = SlugLocks(tmp_path), SlugLocks(tmp_path), SlugLocks(tmp_path)  # as three processes
    path = tmp_path / "s.lock"
    entered = asyncio.Event()

    async def take_b() -> None:
        async with b.hold("s", 5.0):
            entered.set()
            assert path.read_text() == str(os.getpid())

    async with a.hold("s", 0.0):
        task = asyncio.create_task(take_b())
        await until(lambda: len(open_on(path)) == 2)  # B has A's file open and polls it
    # no await since A let go: B has not run, and holds a descriptor on the unlinked file
    assert open_on(path) == [f"{path} (deleted)"]
    async with c.hold("s", 0.0):  # C creates a fresh file and locks it at once
        await until(lambda: entered.is_set() or open_on(path) == [str(path)] * 2)
        assert not entered.is_set(), "B entered while C held the slug"
    await asyncio.wait_for(task, 5)
    assert entered.is_set()
    assert not path.exists()
    assert a._local == b._local == c._local == {}


@pytest.mark.subprocess
async def test_holds_from_three_processes_never_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_locks, "_POLL", 0.001)  # more contention, so more unlink races
    folder, log, n = tmp_path / "locks", tmp_path / "log", 150
    log.write_text("")
    async with (
        child(HAMMER, str(folder), str(log), str(n)) as first,
        child(HAMMER, str(folder), str(log), str(n)) as second,
    ):
        assert [await line(first), await line(second)] == ["ready", "ready"]
        await send(first)
        await send(second)
        locks = SlugLocks(folder)
        for _ in range(n):
            async with locks.hold("s", None):
                note(log, "enter")
                await asyncio.sleep(0)
                note(log, "exit")
        async with asyncio.timeout(20):
            assert [await first.wait(), await second.wait()] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 3 * n
    for i in range(0, len(lines), 2):
        word, pid = lines[i].split()
        assert (word, lines[i + 1]) == ("enter", f"exit {pid}"), (
            f"holds overlap at line {i}: {lines[i : i + 2]}"
        )
    pids = {entry.split()[1] for entry in lines}
    assert pids == {str(os.getpid()), str(first.pid), str(second.pid)}
    assert list(folder.iterdir()) == []
    assert locks._local == {}


@pytest.mark.subprocess
async def test_a_slug_held_by_another_process_is_slug_locked_naming_its_pid(tmp_path: Path) -> None:
    locks = SlugLocks(tmp_path)
    async with child(HOLD_SLUG, str(tmp_path), "alpha") as proc:
        assert await line(proc) == "held"
        with pytest.raises(SlugLocked, match=rf"another hearth process \(pid {proc.pid}\); waited 0.05 s"):
            async with locks.hold("alpha", 0.05):
                pytest.fail("entered a lock another process holds")
        assert locks._local == {}
        await send(proc)
        async with locks.hold("alpha", 10.0):  # waits for the child to let go
            assert (tmp_path / "alpha.lock").read_text() == str(os.getpid())
        assert await proc.wait() == 0
    assert list(tmp_path.iterdir()) == []


# -- OwnerMark ---------------------------------------------------------------------------------


@pytest.mark.subprocess
async def test_a_mark_is_alive_while_its_process_lives_and_removed_once_it_is_killed(tmp_path: Path) -> None:
    folder, owner = tmp_path / "owners", new_owner()
    async with child(HOLD_MARK, str(folder), owner) as proc:
        assert await line(proc) == "held"
        assert OwnerMark.alive(folder, owner)
        assert OwnerMark.alive(folder, owner)  # asking does not disturb it
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / f"{owner}.lock").stat().st_mode) == 0o600
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        assert (folder / f"{owner}.lock").exists()  # a dead owner leaves its mark behind...
        assert not OwnerMark.alive(folder, owner)
        assert not (folder / f"{owner}.lock").exists()  # ...which the first to ask removes
        assert not OwnerMark.alive(folder, owner)


def test_a_mark_held_in_this_process_is_alive_until_released(tmp_path: Path) -> None:
    folder = tmp_path / "owners"
    mark = OwnerMark(folder, new_owner())
    assert not OwnerMark.alive(folder, mark.owner)
    mark.acquire()
    mark.acquire()  # once is enough
    assert OwnerMark.alive(folder, mark.owner)
    assert mark.path.read_text() == str(os.getpid())
    with pytest.raises(StoreError, match="held by another process"):
        OwnerMark(folder, mark.owner).acquire()
    mark.release()
    mark.release()
    assert not mark.path.exists()
    assert not OwnerMark.alive(folder, mark.owner)


def test_unknown_owners_and_missing_folders_are_not_alive(tmp_path: Path) -> None:
    assert not OwnerMark.alive(tmp_path / "missing", "nobody:1:00")
    assert not OwnerMark.alive(tmp_path, "nobody:1:00")
    (tmp_path / "file").write_text("")
    assert not OwnerMark.alive(tmp_path / "file", "nobody:1:00")
    assert not OwnerMark.alive(tmp_path, "../escape")


def test_owner_tokens_are_checked_and_new_ones_are_unique(tmp_path: Path) -> None:
    for bad in ("", "a/b", "..\x00", "white space", "x" * 201):
        with pytest.raises(ValueError, match="owner token"):
            OwnerMark(tmp_path, bad)
    first, second = new_owner(), new_owner()
    assert first != second
    assert re.fullmatch(rf"[A-Za-z0-9._-]+:{os.getpid()}:[0-9a-f]{{8}}", first)


def test_a_mark_in_an_unusable_folder_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "owners").write_text("not a folder")
    with pytest.raises(StoreError, match=r"owner mark .* cannot be used"):
        OwnerMark(tmp_path / "owners", "me:1:00").acquire()
