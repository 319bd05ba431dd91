"""Shared fixtures: run ``async def`` tests, build adapter executables, and catch leaked processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ADAPTERS = Path(__file__).parent / "adapters"
VENV_BIN = Path(sys.executable).parent


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine tests on a fresh event loop (no plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True
    return None


#: What the command line of a process this suite starts contains (adapters and their children).
SPAWNED_MARKERS = ("hearth-adapter-", "hearth-grandchild")


def _hearth_processes() -> dict[int, str]:
    """Live (non-zombie) processes this suite could have started, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(marker in cmdline for marker in SPAWNED_MARKERS) and state != "Z":
            found[int(entry.name)] = cmdline.strip()
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail any test that leaves an adapter (or a grandchild of one) running."""
    before = set(_hearth_processes())
    yield
    deadline = time.monotonic() + 5.0
    while True:  # killed processes may take a moment to be reaped by init
        leftover = {pid: cmd for pid, cmd in _hearth_processes().items() if pid not in before}
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.killpg(pid, 9)
    assert not leftover, f"the test left processes running: {leftover}"


@pytest.fixture
def fake_exe() -> Path:
    path = VENV_BIN / "hearth-adapter-fake"
    assert path.exists(), "hearth-adapter-fake is not installed next to this Python"
    return path


def install_script(folder: Path, name: str, source: str) -> Path:
    """Write an executable Python script run by this interpreter, mode 0755."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """``make_adapter("raw", MODE="garbage")``: copy tests/adapters/<kind>.py as an executable."""

    def make(kind: str, name: str | None = None, **substitutions: str) -> Path:
        source = (ADAPTERS / f"{kind}.py").read_text()
        for key, value in substitutions.items():
            source = source.replace(f"@{key}@", value)
        return install_script(tmp_path / "bin", name or f"hearth-adapter-{kind}", source)

    return make


@pytest.fixture
def venv_bin() -> Path:
    return VENV_BIN


def which(name: str) -> str:
    found = shutil.which(name, path=str(VENV_BIN))
    assert found is not None
    return found
