"""Shared fixtures: run ``async def`` tests, build adapter executables, and catch leaked processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import docker

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


# --- the two tiers ---------------------------------------------------------------------------------
# ``pytest -m "not slow"`` is the fast tier: unit and in-memory tests, under a minute. Everything
# else is marked ``slow`` here, at collection, so that no test has to remember it:
#   * ``subprocess``: the test starts processes (adapters, the hearth CLI, hearth serve, replicas).
#     It is marked by hand, by its module's ``pytestmark``, or here when it uses a fixture of
#     PROCESS_FIXTURES (directly or through another fixture). Every such test is also ``slow``.
#   * a test using a fixture of SERVICE_FIXTURES (Docker, PostgreSQL, Kubernetes) is ``slow``;
#   * a test that waits real seconds is marked ``slow`` by hand, with the reason.
# ``stays_in_its_tier`` checks the first two at run time: a test that starts a process without the
# ``subprocess`` mark, or asks for a service with ``request.getfixturevalue`` without the ``slow``
# mark, fails and says which mark it lacks.

#: Fixtures that start processes, or hand a test what it needs to start them.
PROCESS_FIXTURES = frozenset({"venv_bin", "fake_exe", "make_adapter", "private_pg"})
#: Fixtures that need a service scripts/test starts (they skip without it, outside CI).
SERVICE_FIXTURES = frozenset({"docker_url", "engine", "pg_cluster", "pg_url", "private_pg", "kubeconfig"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & PROCESS_FIXTURES and item.get_closest_marker("subprocess") is None:
            item.add_marker(pytest.mark.subprocess)
        slow = item.get_closest_marker("subprocess") is not None or bool(used & SERVICE_FIXTURES)
        if slow and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


#: What starts a process, as the interpreter's audit hooks name it (PEP 578).
_SPAWNING = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.system", "os.exec"})
#: The processes started since the current test began (its fixtures' included).
_spawned: list[str] = []


def _note_spawns(event: str, args: tuple[object, ...]) -> None:
    if event in _SPAWNING:
        _spawned.append(f"{event} {args[0]!r}" if args else event)


sys.addaudithook(_note_spawns)


@pytest.fixture(autouse=True)
def stays_in_its_tier(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that belongs in the slow tier but is not marked so (see the tiers above)."""
    _spawned.clear()
    yield
    node = request.node
    if _spawned and node.get_closest_marker("subprocess") is None:
        started = "; ".join(_spawned[:3])
        pytest.fail(
            f"this test started a process ({started}) but is not marked subprocess: mark it "
            "@pytest.mark.subprocess, which takes it out of the fast tier (tests/conftest.py)",
            pytrace=False,
        )
    services = SERVICE_FIXTURES.intersection(request.fixturenames)
    if services and node.get_closest_marker("slow") is None:
        pytest.fail(
            f"this test uses {', '.join(sorted(services))} but is not marked slow: mark it "
            "@pytest.mark.slow (tests/conftest.py)",
            pytrace=False,
        )


#: What the command line of a process this suite starts contains (adapters and their children).
SPAWNED_MARKERS = ("hearth-adapter-", "hearth-grandchild")

#: Every process this run starts carries ``LC_HEARTH_TEST_RUN=<RUN_ID>`` in its environment:
#: children inherit it through fork and exec, and it survives setsid and the death of the parent.
#: The host's allow-list (``hearth_adaptersdk._subprocess.child_environment``) passes
#: ``LC_*`` variables to adapters, which is why the marker has that prefix.
#: The leak check only looks at processes carrying this run's marker. Another user's processes are
#: never candidates: their /proc/<pid>/environ is unreadable, or else has no marker or another run's.
RUN_ENV = "LC_HEARTH_TEST_RUN"


def _this_runs_id() -> str:
    """A new id for each pytest process. If this module is imported twice, both imports get the same id."""
    mine = f"{os.getpid()}-"
    current = os.environ.get(RUN_ENV, "")
    return current if current.startswith(mine) else mine + uuid.uuid4().hex


RUN_ID = _this_runs_id()
os.environ[RUN_ENV] = RUN_ID

#: A process by pid and start time (clock ticks after boot): a reused pid has a different key.
ProcessKey = tuple[int, int]


def _read_process(pid: int) -> tuple[int, str, str, bytes] | None:
    """``(start time, state, command line, environment)`` of a process, or None if unreadable."""
    proc = Path("/proc") / str(pid)
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        environ = (proc / "environ").read_bytes()  # another user's: PermissionError
    except (OSError, IndexError):
        return None
    return int(fields[19]), fields[0], cmdline.strip(), environ


def _carries_marker(environ: bytes, run_id: str) -> bool:
    return f"{RUN_ENV}={run_id}".encode() in environ.split(b"\0")


def _run_processes(run_id: str = RUN_ID) -> dict[ProcessKey, str]:
    """This run's live (non-zombie) adapters and their children, with their command lines.

    A process qualifies if its command line looks like one and it carries the marker.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        info = _read_process(int(entry.name))
        if info is None:
            continue
        start, state, cmdline, environ = info
        if (
            state != "Z"
            and any(marker in cmdline for marker in SPAWNED_MARKERS)
            and _carries_marker(environ, run_id)
        ):
            found[int(entry.name), start] = cmdline
    return found


def _is_ours(key: ProcessKey, run_id: str) -> bool:
    """Whether ``key`` is still the same process (pid and start time) and carries ``run_id``."""
    info = _read_process(key[0])
    return info is not None and info[0] == key[1] and _carries_marker(info[3], run_id)


def _kill_run_processes(keys: Iterable[ProcessKey], run_id: str = RUN_ID) -> list[int]:
    """SIGKILL each given process, but only after checking again that it belongs to this run.

    Processes are signalled one by one, never by process group. A pidfd is opened first and the
    process checked after that. The signal then goes through the pidfd, so a pid that was reused in
    the meantime is never hit. Returns the pids that were signalled.
    """
    killed = []
    for key in keys:
        pid = key[0]
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        except OSError:  # no pidfd support: check, then signal (a tiny pid reuse window)
            if _is_ours(key, run_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            continue
        try:
            if _is_ours(key, run_id):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    killed.append(pid)
        finally:
            os.close(pidfd)
    return killed


def _leftovers(before: set[ProcessKey], run_id: str = RUN_ID, bound: float = 5.0) -> dict[ProcessKey, str]:
    """This run's processes that are not in ``before``. Waits up to ``bound`` for them to go."""
    deadline = time.monotonic() + bound
    while True:  # killed processes may take a moment to be reaped by init
        leftover = {key: cmd for key, cmd in _run_processes(run_id).items() if key not in before}
        if not leftover or time.monotonic() > deadline:
            return leftover
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail any test that leaves one of its adapters (or a grandchild of one) running.

    Only processes marked as this run's are looked at or signalled.
    """
    before = set(_run_processes())
    yield
    leftover = _leftovers(before)
    if leftover:
        _kill_run_processes(leftover)  # one at a time, each checked again; then reap stragglers
        _kill_run_processes(_leftovers(before, bound=1.0))
    assert not leftover, f"the test left processes running: {sorted(leftover.values())}"


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


def trust_project_adapters(project: Path, home: Path, *drivers: str) -> None:
    """Trust the project's adapters (all, or those of ``drivers``) in ``home``, as
    ``hearth adapters trust`` does: project adapters run only once trusted."""
    from hearth._adapters._discovery import trust_adapters

    trust_adapters(project, home, drivers or None)


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


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A project, a home and a PATH folder (mode 0755, as discovery wants)."""
    folders = {"project": tmp_path / "proj", "home": tmp_path / "home", "path": tmp_path / "bin"}
    for folder in folders.values():
        folder.mkdir(mode=0o755)
    return folders


def _started_by_scripts(name: str, what: str, tests: str) -> str:
    """What scripts/test started and exported as ``HEARTH_TEST_<name>_URL``: under CI its
    absence fails the test, elsewhere it skips it with the reason the script gave."""
    url = os.environ.get(f"HEARTH_TEST_{name}_URL")
    if url:
        return url
    reason = os.environ.get(
        f"HEARTH_TEST_{name}_SKIP", f"no {what}: run scripts/test, which installs and starts one when it can"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the {tests} tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_url() -> str:
    """The Docker engine scripts/test started."""
    return _started_by_scripts("DOCKER", "Docker engine", "docker")


@pytest.fixture(scope="session")
def pg_cluster() -> str:
    """The PostgreSQL cluster scripts/test started."""
    return _started_by_scripts("PG", "PostgreSQL cluster", "PostgreSQL")


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """The kubeconfig of the Kubernetes cluster scripts/test started (scripts/lib/kubernetes.sh:
    a real API server, controller-manager and scheduler, and a fake kubelet with one node).
    Under CI its absence fails the test, elsewhere it skips it with the reason the script gave."""
    path = os.environ.get("HEARTH_TEST_KUBECONFIG")
    if path:
        return path
    reason = os.environ.get("HEARTH_TEST_KUBE_SKIP", "no cluster: run under scripts/test")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Kubernetes tests: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_url(pg_cluster: str) -> Iterator[str]:
    """A URL whose tables live in a schema of this test's own (dropped after it)."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    joiner = "&" if "?" in pg_cluster else "?"
    yield f"{pg_cluster}{joiner}options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_cluster, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


class PrivateCluster:
    """A PostgreSQL cluster of one test's own, made as scripts/lib/postgres.sh makes the suite's
    (``initdb``, trust, a Unix socket in a private folder, nothing on TCP; as the ``postgres``
    user when run as root), so that the test may stop and start it: an outage."""

    BOUND = 60.0

    def __init__(self, folder: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        if not found:
            _without("no PostgreSQL server under /usr/lib/postgresql to make a cluster of its own")
        if os.geteuid() == 0 and not _has_user("postgres"):
            _without("running as root and there is no postgres user for initdb")
        self.bin = found[-1].parent
        self.folder = folder
        self.data = folder / "data"
        self.url = f"postgresql://hearth@/postgres?host={folder}"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "hearth", "-A", "trust", "-E", "UTF8", "--no-sync")

    def _run(self, *args: str) -> None:
        import subprocess

        done = subprocess.run(
            [*self._as, str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=self.BOUND,
            check=False,
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr or done.stdout}"

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every session is ended, as an outage ends them."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def _without(reason: str) -> NoReturn:
    """No private cluster can be made: under CI the test fails, elsewhere it is skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the PostgreSQL outage tests: {reason}")
    pytest.skip(reason)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def private_pg(pg_cluster: str) -> Iterator[PrivateCluster]:
    """A throwaway cluster of this test's own, started (the suite's shared cluster, which
    ``pg_cluster`` stands for, is never stopped: it only decides skip or fail, as for every
    PostgreSQL test). Stopped and removed after the test."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="hpg-"))  # short: a socket's path has at most 107 bytes
    try:
        folder.chmod(0o700)
        cluster = PrivateCluster(folder)
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def engine(docker_url: str) -> Iterator[docker.DockerClient]:
    import docker  # only the docker tests pay for it

    client = docker.DockerClient(base_url=docker_url)
    yield client
    client.close()
