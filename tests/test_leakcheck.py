"""The leak check signals only this run's processes, never a look-alike started by someone else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hearth import AdapterClient
from hearth_adaptersdk import child_environment
from tests.conftest import (
    RUN_ENV,
    RUN_ID,
    ProcessKey,
    _kill_run_processes,
    _leftovers,
    _read_process,
    _run_processes,
)
from tests.helpers import profile

SLEEP = "import time; time.sleep(30)"
Spawn = Callable[..., tuple[subprocess.Popen[bytes], ProcessKey]]


def _started(process: subprocess.Popen[bytes], name: str) -> ProcessKey:
    """Wait until ``process`` has exec'd (its command line shows ``name``) and return its key."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        info = _read_process(process.pid)
        if info is not None and name in info[2]:
            return process.pid, info[0]
        time.sleep(0.01)
    raise AssertionError(f"{name} did not start")


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -c <sleep> <name>``. Each process started is stopped by its own pid afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], ProcessKey]:
        process = subprocess.Popen(
            [sys.executable, "-c", SLEEP, name], env=env, start_new_session=True, stdin=subprocess.DEVNULL
        )
        started.append(process)
        return process, _started(process, name)

    yield start
    for process in started:  # our own unreaped children, so these pids cannot have been reused
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_the_marker_is_set_and_passes_the_hosts_allow_list() -> None:
    assert os.environ[RUN_ENV] == RUN_ID
    assert child_environment()[RUN_ENV] == RUN_ID


@pytest.mark.subprocess
def test_lookalikes_without_this_runs_marker_are_left_alone(spawn: Spawn) -> None:
    before = set(_run_processes())
    unmarked, unmarked_key = spawn("hearth-adapter-lookalike", env={})
    other_run, other_key = spawn("hearth-adapter-lookalike", env={RUN_ENV: "12345-another-run"})

    assert unmarked_key not in _run_processes() and other_key not in _run_processes()
    assert _leftovers(before, bound=0.0) == {}
    # Even if told to kill them, the kill checks the marker first and refuses.
    assert _kill_run_processes([unmarked_key, other_key]) == []
    time.sleep(0.2)
    assert unmarked.poll() is None and other_run.poll() is None
    # For a check run under the other run's id, that look-alike is its own and the unmarked one is not.
    assert set(_run_processes("12345-another-run")) == {other_key}


@pytest.mark.subprocess
def test_a_marked_leftover_is_found_and_only_it_is_killed(spawn: Spawn) -> None:
    before = set(_run_processes())
    lookalike, _ = spawn("hearth-adapter-lookalike", env={})
    leaked, leaked_key = spawn("hearth-adapter-leaked")  # inherits this run's environment

    leftover = _leftovers(before, bound=0.0)
    assert list(leftover) == [leaked_key]
    assert "hearth-adapter-leaked" in leftover[leaked_key]
    assert _kill_run_processes(leftover) == [leaked_key[0]]
    assert leaked.wait(timeout=10) == -9
    assert lookalike.poll() is None
    assert _leftovers(before, bound=5.0) == {}


@pytest.mark.subprocess
def test_a_pid_that_is_no_longer_the_recorded_process_is_not_signalled(spawn: Spawn) -> None:
    marked, (pid, start) = spawn("hearth-adapter-leaked")
    assert _kill_run_processes([(pid, start + 1)]) == []  # same pid, other start time: a reused pid
    time.sleep(0.2)
    assert marked.poll() is None


async def test_adapters_and_their_grandchildren_carry_the_marker(make_adapter: Callable[..., Path]) -> None:
    path = make_adapter("echo")
    async with await AdapterClient.launch(path) as client:
        ref = await client.provision("kids", profile(driver="echo", spawn_grandchild=True))
        grandchild = int(ref.endpoint or 0)
        ours = _run_processes()
        assert grandchild in {pid for pid, _ in ours}
        assert any(str(path) in cmd for cmd in ours.values())
