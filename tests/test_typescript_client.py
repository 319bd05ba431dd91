"""The TypeScript client (``clients/typescript``, issue 21): its types are what openapi-typescript
generates from ``docs/openapi.json`` as committed (as ``tests/test_serve.py`` compares the document
with the app), and its own tests (node's test runner) pass against a real ``hearth serve``.

Under ``CI=true`` they run (no node or npm there is a failure); elsewhere they skip, saying why.
npm's cache is outside the clone (``${XDG_CACHE_HOME:-~/.cache}/hearth/npm-cache``); the
``node_modules`` it installs into ``clients/typescript`` is ignored by git."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
OPENAPI = ROOT / "docs" / "openapi.json"
SCHEMA = CLIENT / "src" / "schema.ts"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must build and test the TypeScript client: {reason}")
    pytest.skip(reason)


def _node_tools() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _skip_or_fail(f"{' and '.join(missing)} not installed")


def _env(venv_bin: Path) -> dict[str, str]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hearth" / "npm-cache"
    env = {
        **os.environ,
        "npm_config_cache": str(cache),
        "npm_config_update_notifier": "false",
        "HEARTH_BIN": str(venv_bin / "hearth"),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("HEARTH_HOME", "HEARTH_URL", "HEARTH_TOKEN"):
        env.pop(name, None)
    return env


def _run(argv: list[str], env: dict[str, str], bound: float) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``clients/typescript``, in its own process group (the daemons its tests start
    too): the whole group is stopped if it outlives ``bound``."""
    process = subprocess.Popen(
        argv,
        cwd=CLIENT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"{' '.join(argv)} did not finish within {bound} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, output, "")


def _installed(env: dict[str, str]) -> None:
    """The client's dependencies, as its package-lock.json pins them."""
    done = _run(["npm", "ci", "--no-audit", "--no-fund"], env, 300)
    if done.returncode != 0:
        _skip_or_fail(f"npm could not install the client's dependencies:\n{done.stdout[-2000:]}")


@pytest.mark.timeout(600)
def test_the_committed_types_are_what_openapi_typescript_generates(tmp_path: Path, venv_bin: Path) -> None:
    _node_tools()
    env = _env(venv_bin)
    _installed(env)
    output = tmp_path / "schema.ts"
    tool = CLIENT / "node_modules" / ".bin" / "openapi-typescript"
    done = _run([str(tool), str(OPENAPI), "--output", str(output)], env, 120)
    assert done.returncode == 0, done.stdout
    assert output.read_text() == SCHEMA.read_text(), (
        "clients/typescript/src/schema.ts is not what docs/openapi.json generates: run "
        "`npm run generate` in clients/typescript and commit it"
    )


@pytest.mark.timeout(600)
def test_the_typescript_client_passes_its_tests_against_a_real_daemon(venv_bin: Path) -> None:
    _node_tools()
    env = _env(venv_bin)
    _installed(env)
    checked = _run(["npm", "run", "--silent", "check"], env, 180)  # tsc --noEmit, strict
    assert checked.returncode == 0, checked.stdout
    tested = _run(["npm", "test", "--silent"], env, 420)
    assert tested.returncode == 0, tested.stdout[-8000:]
    assert "# fail 0" in tested.stdout, tested.stdout[-8000:]
