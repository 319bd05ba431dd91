"""A record never lies: an adversarial matrix through the ``hearth`` CLI, end to end.

Every case runs real ``hearth`` processes against real adapter processes (the fake adapter, and
the tfgrid adapter on the ComputeService simulator, which runs in this process on an event loop
of its own thread), strikes, refuses, times out or corrupts something, and then checks:

(a) each record agrees with the adapter's ``status`` or says why not: ``ready`` is ``ready``;
    ``failed`` is ``absent``/``failed``, or its status message says it is "not confirmed";
    ``tier_torn_down`` and a slug with no live record hold nothing in the backend;
(b) no operation is left ``running``;
(c) no process is left: the autouse leak check covers the adapters, the harness below stops its
    own ``hearth`` processes and the simulator;
(d) exit codes (0, 1, 2, 130) and the one-line ``hearth: <kind>: ...`` on stderr, never a traceback.

Then ``hearth reconcile`` must settle every transient or unconfirmed record so that (a) holds
without the "not confirmed" escape, and a second reconcile must find nothing to do. Last:

(e) once the backend has settled and reconcile has run, no record still says that it waits for
    reconcile (a record must not promise a resolution that reconcile never makes).

The strike points are drawn from ``random.Random(seed)`` with a fixed seed per case; they choose
where to strike, never what to assert. Every other wait is on a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hearth import Host
from hearth_adapter_fake import FakeDriver
from hearth_adapter_fake._store import read_journal
from hearth_adapter_tfgrid import Simulator
from hearth_adaptersdk import MemoryConnection

pytestmark = pytest.mark.subprocess

T = TypeVar("T")

#: Seconds a ``slow`` fake provision, upgrade or teardown takes: longer than the latest strike.
FAKE_DELAY = 1.8
#: The simulator's deploy time (delete and gateways: half of it).
GRID_DELAY = 1.6
CANCEL_GRACE = 5
SETTINGS = """
[tiers.slow.driver_flags.fake]
delay = {fake_delay}
[tiers.typo.driver_flags.fake]
delya = 1
[tiers.rejected.driver_flags.fake]
reject = true
[tiers.bigger]
resource_caps = {{ cpu = 1, memory_mb = 8192 }}
[tiers.resize]
resource_caps = {{ cpu = 1, memory_mb = 8192 }}
[tiers.resize.driver_flags.tfgrid]
allow_destructive_upgrade = true
[adapters.tfgrid]
socket = "{socket}"
poll_interval = 0.1
[timeouts]
cancel_grace = {cancel_grace}
status = 10
"""
TRANSIENT = frozenset({"provisioning", "upgrading", "tearing_down"})
EXIT_CODES = {"invalid_input": 2, "not_found": 2, "cancelled": 130}
#: What the host writes into a record's reason when the record waits for reconcile (an
#: unconfirmed outcome, a backend that had not settled; older and newer wordings).
WAITS_FOR_RECONCILE = ("reconcile checks it", "reconcile looks again", "run reconcile again")
QUIET_RECONCILE: dict[str, Any] = {
    "resolved": [],
    "unconfirmed": [],
    "ghosts": [],
    "busy": [],
    "unreachable": {},
    "orphans": [],
    "dry_run": False,
}
BOUND = 60.0  # the longest any one hearth command may take here


def wait_for(condition: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {bound:g} s: {what}"
        time.sleep(0.02)


def evidence(**items: Any) -> str:
    return json.dumps(items, indent=1, default=str)


def summary(operations: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Operations as evidence: each one's verb, outcome and error, without its progress lines."""
    if operations is None:
        return None
    return [{key: op[key] for key in ("id", "verb", "generation", "outcome", "error")} for op in operations]


def all_of(*checks: Callable[[], object]) -> None:
    """Run every check, then fail with all of their failures (one does not hide another)."""
    failures = []
    for check in checks:
        try:
            check()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


# --- processes --------------------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the adapters a ``hearth`` process started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class Watch:
    """Processes held by pidfd from the moment they are added (so a reused pid is never taken
    for one of them), to wait for their end."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def add(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid not in self.fds:
                with contextlib.suppress(ProcessLookupError):
                    self.fds[pid] = os.pidfd_open(pid)

    def wait(self, bound: float) -> list[int]:
        """Wait up to ``bound`` seconds for all of them to end; the pids still alive."""
        deadline = time.monotonic() + bound
        alive = dict(self.fds)
        while alive:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(alive.values()), [], [], left)
            alive = {pid: fd for pid, fd in alive.items() if fd not in ready}
        return sorted(alive)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


# --- the simulator ----------------------------------------------------------------------------
class Grid:
    """The ComputeService simulator on its own event loop in a thread of this process."""

    def __init__(self, socket: Path, deploy_delay: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tfgrid-sim", daemon=True)
        self.thread.start()
        self.simulator = Simulator(deploy_delay=deploy_delay)
        try:
            self._call(self.simulator.start(socket))
        except BaseException:
            self._end_loop()
            raise

    def _call(self, work: Coroutine[Any, Any, T], bound: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(bound)

    def read(self, look: Callable[[Simulator], T]) -> T:
        """``look(simulator)``, run on the simulator's loop (never concurrently with it)."""

        async def on_loop() -> T:
            return look(self.simulator)

        return self._call(on_loop())

    def vms(self) -> dict[str, dict[str, Any]]:
        return self.read(
            lambda sim: {vm.name: {"state": vm.state, "slices": vm.slices} for vm in sim.vms.values()}
        )

    def settled(self) -> bool:
        """No VM deploying or being deleted, no gateway still coming up."""
        return self.read(
            lambda sim: (
                all(vm.state not in ("provisioning", "deleting") for vm in sim.vms.values())
                and all(gw.state != "provisioning" for gw in sim.gateways.values())
            )
        )

    def stop(self) -> None:
        try:
            self._call(self.simulator.stop())
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the simulator's thread did not stop"
        self.loop.close()


# --- the harness ------------------------------------------------------------------------------
@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str

    def document(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"{' '.join(self.argv[1:3])}: exit {self.code}\nstdout: {self.out}\nstderr: {self.err}"


class Hearth:
    """``hearth`` as a person or a script runs it: each command a new process, with --json."""

    def __init__(self, root: Path, venv_bin: Path) -> None:
        self.project = root / "project"
        self.home = root / "home"
        self.socket = root / "rpc.sock"
        assert len(str(self.socket)) < 100, "the socket path is too long for AF_UNIX"
        (self.project / ".hearth").mkdir(parents=True)
        (self.project / ".hearth" / "hearth.toml").write_text(
            SETTINGS.format(fake_delay=FAKE_DELAY, socket=self.socket, cancel_grace=CANCEL_GRACE)
        )
        self.env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("HEARTH_HOME", None)
        self.exe = str(venv_bin / "hearth")
        self.grid: Grid | None = None
        self.processes: list[subprocess.Popen[str]] = []

    # running commands
    def argv(self, *args: str) -> list[str]:
        return [self.exe, *args, "--json", "--project", str(self.project), "--home", str(self.home)]

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            self.argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def finish(self, process: subprocess.Popen[str], bound: float = BOUND) -> Result:
        out, err = process.communicate(timeout=bound)
        assert isinstance(process.args, list)
        return Result([str(a) for a in process.args], process.returncode, out, err)

    def run(self, *args: str) -> Result:
        return self.finish(self.start(*args))

    def run_all(self, commands: Sequence[Sequence[str]]) -> list[Result]:
        """Several commands at once (they touch different slugs, or only read)."""
        started = [self.start(*command) for command in commands]
        return [self.finish(process) for process in started]

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()  # by its pid, through Popen: only processes this test started
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=10)

    # outcomes, invariant (d)
    @staticmethod
    def succeeded(result: Result) -> Any:
        assert result.code == 0, str(result)
        assert "Traceback" not in result.err and "hearth:" not in result.err, str(result)
        return result.document()

    def ok(self, *args: str) -> Any:
        return self.succeeded(self.run(*args))

    @classmethod
    def logged(cls, result: Result) -> list[Any]:
        """What ``hearth logs SLUG --json`` says: the operations, or none for a slug nothing
        was ever done with (that is ``not_found``, exit 2, as for ``status``)."""
        if result.code == EXIT_CODES["not_found"]:
            error = cls.failed(result, "not_found")
            assert "no operation was ever run on it" in error["message"], str(result)
            return []
        found: list[Any] = cls.succeeded(result)
        return found

    def logs(self, slug: str) -> list[Any]:
        return self.logged(self.run("logs", slug))

    @staticmethod
    def failed(result: Result, kind: str) -> dict[str, Any]:
        """A failure of ``kind``: its exit code, one line on stderr, the JSON error."""
        assert result.code == EXIT_CODES.get(kind, 1), str(result)
        assert "Traceback" not in result.err and "Traceback" not in result.out, str(result)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, f"a failure says why in exactly one line on stderr: {result}"
        assert lines[0].startswith(f"hearth: {kind}: "), str(result)
        error: dict[str, Any] = result.document()["error"]
        assert error["kind"] == kind, str(result)
        return error

    def fails(self, *args: str, kind: str) -> dict[str, Any]:
        return self.failed(self.run(*args), kind)

    # the backends
    def start_grid(self, deploy_delay: float = GRID_DELAY) -> Grid:
        assert self.grid is None
        self.grid = Grid(self.socket, deploy_delay)
        return self.grid

    def journal(self) -> list[dict[str, Any]]:
        return read_journal(self.home / "data" / "fake")

    def backend_holds(self, driver: str, slug: str) -> dict[str, Any] | None:
        """What the backend holds for ``slug`` (None: nothing)."""
        if driver == "fake":
            path = self.home / "data" / "fake" / "deployments" / f"{slug}.json"
            try:
                record: dict[str, Any] = json.loads(path.read_text())
            except FileNotFoundError:
                return None
            return None if record["ref"]["last_status"] == "tier_torn_down" else record
        assert driver == "tfgrid" and self.grid is not None
        return self.grid.vms().get(f"hearth-{slug}")

    def verb_started(self, driver: str, verb: str, slug: str) -> Callable[[], bool]:
        """A condition that becomes true once the backend shows ``verb`` of ``slug`` begun (from
        now on): the fake's journal names the call; on the simulator a provision has made its
        VM, and an upgrade or a teardown has deleted the workspace's gateway (its first step)."""
        if driver == "fake":

            def calls() -> int:
                return sum(1 for e in self.journal() if (e["method"], e["slug"]) == (verb, slug))

            before = calls()
            return lambda: calls() > before
        grid = self.grid
        assert grid is not None
        seen: list[bool] = []
        if verb == "provision":

            def begun() -> bool:
                if not seen and f"hearth-{slug}" in grid.vms():
                    seen.append(True)  # latched: a rollback may delete the VM again
                return bool(seen)

            return begun
        [gateway] = grid.read(lambda sim: [g.id for g in sim.gateways.values() if g.name == slug])
        return lambda: grid.read(lambda sim: gateway not in sim.gateways)

    def settle(self) -> None:
        """Wait until the backend's own asynchronous work has ended (the simulator deletes and
        deploys in the background), so that what status observes is final."""
        grid = self.grid
        if grid is not None:
            wait_for(grid.settled, "the simulator's deploys and deletions end")

    # invariants (a), (b), then reconcile
    def check(self, slugs: dict[str, str], *, transient: bool = False) -> Seen:
        """The invariants over ``slugs`` (slug -> driver); ``transient``: a host was killed, so
        records may be left transient (and their operation running) until reconcile.

        Before reconcile: (a), with "not confirmed" as a reason for disagreeing, and no record
        transient unless a host was killed. Then reconcile, and after it: (a) without that
        escape, (b), and a second reconcile that finds nothing. (b) is checked only after
        reconcile, which is enough: reconcile ends the running operations of transient records
        only, so an operation left running by any other record would still be running then."""
        self.settle()
        before = self.observe(slugs, strict=False, transient=transient)
        first = self.ok("reconcile")
        assert (first["busy"], first["unreachable"], first["orphans"]) == ([], {}, []), evidence(
            reconcile=first
        )
        left = {slug for slug, record in before.records.items() if record["last_status"] in TRANSIENT}
        resolved = {entry["slug"] for entry in first["resolved"]}
        assert left <= resolved, evidence(transient=sorted(left), reconcile=first)
        self.settle()
        after = self.observe(slugs, strict=True, transient=False, also=("reconcile",))
        [second] = after.also
        assert self.succeeded(second) == QUIET_RECONCILE, evidence(first=first, second=str(second))
        asking = {
            slug: status
            for slug, status in after.statuses.items()
            if any(phrase in (status.get("message") or "") for phrase in WAITS_FOR_RECONCILE)
        }
        assert not asking, (
            "(e) with the backend settled and reconcile run, a record still waits for reconcile:\n"
            + evidence(
                records={slug: after.records[slug] for slug in asking},
                statuses=asking,
                logs={slug: summary(after.operations[slug]) for slug in asking},
                reconcile=first,
            )
        )
        return Seen(before, after, first)

    def observe(
        self, slugs: dict[str, str], *, strict: bool, transient: bool, also: tuple[str, ...] = ()
    ) -> Observed:
        """Check (a) once (and (b) when ``strict``): ``ls`` (and each slug's ``logs``), then
        ``status`` of each record that is ready or failed. ``also``: a command to run at the same
        time as ``ls`` (one that must change nothing), whose result is returned."""
        names = list(slugs) if strict else []
        listed, *rest = self.run_all(
            [("ls",), *(("logs", slug) for slug in names), *([also] if also else [])]
        )
        records = {r["workspace_slug"]: r for r in self.succeeded(listed)}
        operations = {slug: self.logged(result) for slug, result in zip(names, rest, strict=False)}
        assert set(records) <= set(slugs), evidence(unexpected=records)
        states = {slug: record["last_status"] for slug, record in records.items()}
        asked = [slug for slug, state in states.items() if state in ("ready", "failed")]
        statuses = {
            slug: self.succeeded(result)
            for slug, result in zip(asked, self.run_all([("status", slug) for slug in asked]), strict=True)
        }
        stage = "after reconcile" if strict else "before reconcile"
        for slug, state in states.items():
            seen = evidence(
                stage=stage,
                record=records[slug],
                status=statuses.get(slug),
                logs=summary(operations.get(slug) or self.logs(slug)),
            )
            if state in TRANSIENT:
                assert transient, f"a record is left {state}:\n{seen}"
            elif state == "ready":
                assert statuses[slug]["state"] == "ready", f"a ready record that is not:\n{seen}"
            elif state == "failed":
                status = statuses[slug]
                unconfirmed = "not confirmed" in (status.get("message") or "")
                assert status["state"] in ("absent", "failed") or (unconfirmed and not strict), (
                    f"a failed record whose backend shows otherwise:\n{seen}"
                )
            else:
                assert state == "tier_torn_down", seen
        for slug, driver in slugs.items():
            if states.get(slug) in (None, "tier_torn_down"):
                held = self.backend_holds(driver, slug)
                assert held is None, "no live record, yet the backend holds it:\n" + evidence(
                    stage=stage,
                    record=records.get(slug),
                    backend=held,
                    logs=summary(operations.get(slug) or self.logs(slug)),
                )
        for slug, logged in operations.items():
            running = [op for op in logged if op["outcome"] == "running"]
            assert not running, "an operation is left running:\n" + evidence(
                stage=stage, record=records.get(slug), logs=summary(logged)
            )
        return Observed(records, statuses, operations, rest[len(names) :])


@dataclass
class Observed:
    """What one round of ``ls``, ``logs`` and ``status`` showed, by slug."""

    records: dict[str, dict[str, Any]]
    statuses: dict[str, dict[str, Any]]
    operations: dict[str, list[dict[str, Any]]]
    also: list[Result]


@dataclass
class Seen:
    """What ``check`` observed before reconcile, after it, and what the first reconcile did."""

    before: Observed
    after: Observed
    reconcile: dict[str, Any]


@pytest.fixture
def hearth(tmp_path: Path, venv_bin: Path) -> Iterator[Hearth]:
    made = Hearth(tmp_path, venv_bin)
    try:
        yield made
    finally:
        made.stop_all()
        if made.grid is not None:
            made.grid.stop()


# --- signals at seeded points -------------------------------------------------------------------
#: (driver, verb) -> (the tier the setup provisions, the command, the strike window in seconds
#: after the backend shows the verb begun). The fake's slow tier takes FAKE_DELAY for each verb;
#: on the grid a provision takes ~1.5 GRID_DELAY, a teardown's deletion GRID_DELAY / 2 and a
#: destructive upgrade (delete, deploy, gateway) 2 GRID_DELAY.
PLANS: dict[tuple[str, str], tuple[str | None, tuple[str, ...], tuple[float, float]]] = {
    ("fake", "provision"): (None, ("provision", "prov", "--tier", "slow", "--driver", "fake"), (0.05, 1.5)),
    ("fake", "upgrade"): ("solo", ("upgrade", "upg", "--tier", "slow"), (0.05, 1.5)),
    ("fake", "teardown"): ("slow", ("teardown", "tear"), (0.05, 1.5)),
    ("tfgrid", "provision"): (
        None,
        ("provision", "prov", "--tier", "solo", "--driver", "tfgrid"),
        (0.05, 1.6),
    ),
    ("tfgrid", "upgrade"): ("solo", ("upgrade", "upg", "--tier", "resize"), (0.05, 2.0)),
    ("tfgrid", "teardown"): ("solo", ("teardown", "tear"), (0.05, 0.5)),
}
#: The longest gap between two signals sent "quickly" (a person pressing Ctrl-C twice).
QUICK = 0.02
VERBS = ("provision", "upgrade", "teardown")
SLUG_OF = {"provision": "prov", "upgrade": "upg", "teardown": "tear"}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)


def seeded(*case: object) -> random.Random:
    """The case's own generator, with a fixed seed derived from its name."""
    return random.Random(zlib.crc32("-".join(map(str, case)).encode()))


def set_up(hearth: Hearth, driver: str, verbs: Sequence[str]) -> None:
    """Provision (at once) the workspaces that the upgrades and teardowns of ``verbs`` act on."""
    if driver == "tfgrid":
        hearth.start_grid()
    setups = [(SLUG_OF[verb], PLANS[driver, verb][0]) for verb in verbs]
    for result in hearth.run_all(
        [("provision", slug, "--tier", tier, "--driver", driver) for slug, tier in setups if tier is not None]
    ):
        Hearth.succeeded(result)


def check_interrupted(result: Result, signum: signal.Signals) -> None:
    """(d) for a command that got ``signum`` while it worked."""
    if signum == signal.SIGKILL:
        assert result.code == -signal.SIGKILL, str(result)
        return
    if result.code == 0:  # the signal came after the work was done: nothing to cancel
        Hearth.succeeded(result)
        return
    Hearth.failed(result, "cancelled")
    assert result.err.startswith(f"hearth: cancelled: interrupted by {signum.name}; "), str(result)


def strike(
    hearth: Hearth,
    driver: str,
    verbs: Sequence[str],
    signals: Sequence[signal.Signals],
    rng: Callable[[str], random.Random],
) -> dict[str, Result]:
    """Run each verb's command at once (slugs ``prov``, ``upg``, ``tear``) and send each
    ``signals`` at a point drawn from ``rng(verb)`` after the backend shows that verb begun (the
    gap between two signals is drawn too). Returns each verb's result once its adapters are gone."""
    plans = {verb: PLANS[driver, verb] for verb in verbs}
    begun = {verb: hearth.verb_started(driver, verb, SLUG_OF[verb]) for verb in verbs}
    processes = {verb: hearth.start(*plans[verb][1]) for verb in verbs}
    points: dict[str, list[float]] = {}
    for verb in verbs:
        draw = rng(verb)
        first = draw.uniform(*plans[verb][2])
        points[verb] = [first + sum(draw.uniform(0.0, QUICK) for _ in range(n)) for n in range(len(signals))]
    began: dict[str, float] = {}
    adapters = Watch()
    sent = dict.fromkeys(verbs, 0)
    deadline = time.monotonic() + 30
    try:
        while any(sent[verb] < len(signals) for verb in verbs):
            assert time.monotonic() < deadline, f"the verbs did not begin: {sorted(began)}"
            now = time.monotonic()
            for verb, process in processes.items():
                if verb not in began:
                    if begun[verb]():
                        began[verb] = now
                    else:
                        assert process.poll() is None, str(hearth.finish(process))
                elif sent[verb] < len(signals) and now >= began[verb] + points[verb][sent[verb]]:
                    adapters.add(children_of(process.pid))
                    process.send_signal(signals[sent[verb]])  # the seeded strike point
                    sent[verb] += 1
            time.sleep(0.01)
        results = {verb: hearth.finish(process) for verb, process in processes.items()}
        # a killed host's adapter rolls back on its own, then exits: wait for that
        left = adapters.wait(40.0)
        assert left == [], f"adapters outlived their hosts ({[s.name for s in signals]}): {left}"
    finally:
        adapters.close()
    return results


@pytest.mark.parametrize(
    ("driver", "signum"),
    [
        pytest.param(driver, signum, id=f"{driver}-{signum.name}")
        for driver in ("fake", "tfgrid")
        for signum in SIGNALS
    ],
)
def test_a_signal_at_a_seeded_point_of_each_verb_leaves_truthful_records(
    hearth: Hearth, driver: str, signum: signal.Signals
) -> None:
    """Provision ``prov``, upgrade ``upg`` and tear down ``tear`` at once, each struck by
    ``signum`` at its own seeded point."""
    set_up(hearth, driver, VERBS)
    results = strike(hearth, driver, VERBS, [signum], lambda verb: seeded(driver, verb, signum.name))
    all_of(
        *(lambda result=result: check_interrupted(result, signum) for result in results.values()),
        lambda: hearth.check({slug: driver for slug in SLUG_OF.values()}, transient=signum == signal.SIGKILL),
    )


@pytest.mark.parametrize("driver", ["fake", "tfgrid"])
def test_two_quick_sigints_mid_provision_leave_a_truthful_record(hearth: Hearth, driver: str) -> None:
    set_up(hearth, driver, ["provision"])
    [result] = strike(
        hearth,
        driver,
        ["provision"],
        [signal.SIGINT, signal.SIGINT],
        lambda verb: seeded("double", driver, verb),
    ).values()
    all_of(lambda: check_interrupted(result, signal.SIGINT), lambda: hearth.check({"prov": driver}))


@pytest.mark.parametrize(
    "second", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda signum: signum.name
)
def test_a_second_signal_while_the_line_is_printed_still_exits_130(
    hearth: Hearth, second: signal.Signals
) -> None:
    """The first SIGINT is handled (cancel, rollback, the one line); a second signal sent as soon
    as that line appears (a person pressing Ctrl-C twice, ``timeout`` sending SIGTERM) must not
    change the documented exit status 130."""
    begun = hearth.verb_started("fake", "provision", "prov")
    process = hearth.start("provision", "prov", "--tier", "slow", "--driver", "fake")
    wait_for(lambda: begun() or process.poll() is not None, "provision begins")
    time.sleep(seeded("line", second.name).uniform(0.05, 1.5))  # the seeded strike point
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    line = process.stderr.readline()
    process.send_signal(second)
    result = hearth.finish(process)
    result.err = line + result.err
    all_of(lambda: check_interrupted(result, signal.SIGINT), lambda: hearth.check({"prov": "fake"}))


# --- refusals leave the previous state ----------------------------------------------------------
def test_an_upgrade_to_a_misspelt_flag_is_refused_and_changes_nothing(hearth: Hearth) -> None:
    hearth.ok("provision", "alpha", "--tier", "solo", "--driver", "fake")
    [before] = hearth.ok("ls")
    error = hearth.fails("upgrade", "alpha", "--tier", "typo", kind="invalid_profile")
    assert error["code"] == -32023 and any("delya" in problem for problem in error["errors"]), error
    seen = hearth.check({"alpha": "fake"})
    assert seen.before.records == {"alpha": before}
    status = seen.before.statuses["alpha"]
    assert status["state"] == "ready" and "changed nothing" in status["message"], status
    operation = seen.after.operations["alpha"][-1]
    assert (operation["verb"], operation["outcome"]) == ("upgrade", "failed"), operation
    assert operation["error"]["changed_nothing"] is True, operation


def test_a_rejected_first_provision_leaves_no_record(hearth: Hearth) -> None:
    error = hearth.fails(
        "provision", "alpha", "--tier", "rejected", "--driver", "fake", kind="invalid_profile"
    )
    assert error["code"] == -32023, error
    seen = hearth.check({"alpha": "fake"})
    assert seen.before.records == {}  # the slug is free
    [operation] = seen.after.operations["alpha"]
    assert operation["outcome"] == "failed" and operation["error"]["kind"] == "invalid_profile"


def test_a_destructive_tfgrid_upgrade_is_refused_and_the_vm_keeps_running(hearth: Hearth) -> None:
    grid = hearth.start_grid(deploy_delay=0.2)
    hearth.ok("provision", "alpha", "--tier", "solo", "--driver", "tfgrid")
    [before] = hearth.ok("ls")
    vms = grid.vms()
    error = hearth.fails("upgrade", "alpha", "--tier", "bigger", kind="unsupported")
    assert error["code"] == -32022 and "destroys its disk" in error["message"], error
    assert grid.vms() == vms == {"hearth-alpha": {"state": "running", "slices": 1}}
    seen = hearth.check({"alpha": "tfgrid"})
    assert seen.before.records == {"alpha": before}
    assert seen.before.statuses["alpha"]["state"] == "ready"
    assert seen.after.operations["alpha"][-1]["error"]["changed_nothing"] is True


@pytest.mark.parametrize(
    "other",
    [("--tier", "team", "--driver", "fake"), ("--tier", "solo", "--driver", "tfgrid")],
    ids=["other-tier", "other-driver"],
)
def test_a_conflict_leaves_the_workspace_as_it_was(hearth: Hearth, other: tuple[str, ...]) -> None:
    hearth.ok("provision", "alpha", "--tier", "solo", "--driver", "fake")
    [before] = hearth.ok("ls")
    calls = len(hearth.journal())
    error = hearth.fails("provision", "alpha", *other, kind="conflict")
    assert error["existing"]["tier"] == "solo" and error["existing"]["driver"] == "fake", error
    assert len(hearth.journal()) == calls  # refused by the host: no adapter was asked
    seen = hearth.check({"alpha": "fake"})
    assert seen.before.records == {"alpha": before}


# --- deadlines --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("driver", "verb"),
    [("fake", "provision"), ("fake", "upgrade"), ("fake", "teardown"), ("tfgrid", "provision")],
)
def test_a_deadline_on_a_slow_verb_leaves_a_truthful_record(hearth: Hearth, driver: str, verb: str) -> None:
    set_up(hearth, driver, [verb])
    slug = SLUG_OF[verb]
    before = hearth.ok("ls")
    hearth.fails(*PLANS[driver, verb][1], "--timeout", "1", kind="timeout")
    seen = hearth.check({slug: driver})
    after = list(seen.before.records.values())
    if verb == "provision":
        assert after == [], after  # rolled back: the slug is free
    else:  # an upgrade rolls back; a teardown cut short keeps serving
        assert [(r["last_status"], r["tier"]) for r in after] == [
            (r["last_status"], r["tier"]) for r in before
        ], evidence(before=before, after=after)
    # the operation is recorded cancelled; none at all if the deadline passed before the verb
    # could be sent (a slow adapter start): then nothing was written either
    operations = seen.after.operations[slug][1 if PLANS[driver, verb][0] else 0 :]  # after the setup
    assert [(op["verb"], op["outcome"]) for op in operations] in ([(verb, "cancelled")], []), evidence(
        operations=summary(operations)
    )


def test_an_invalid_timeout_is_refused_before_anything_changes(hearth: Hearth) -> None:
    hearth.ok("provision", "alpha", "--tier", "solo", "--driver", "fake")
    before, calls = hearth.ok("ls"), len(hearth.journal())
    commands = [
        command
        for value in ("0", "nan", "-1")
        for command in (
            ("provision", "beta", "--tier", "solo", "--driver", "fake", "--timeout", value),
            ("upgrade", "alpha", "--tier", "team", "--timeout", value),
            ("teardown", "alpha", "--timeout", value),
        )
    ]
    for result in hearth.run_all(commands):
        error = Hearth.failed(result, "invalid_input")
        assert "timeout" in error["message"], str(result)
    assert len(hearth.journal()) == calls  # no adapter was asked anything
    seen = hearth.check({"alpha": "fake", "beta": "fake"})
    assert list(seen.before.records.values()) == before
    assert [op["verb"] for op in seen.after.operations["alpha"]] == ["provision"]
    assert seen.after.operations["beta"] == []


# --- corrupt stores -----------------------------------------------------------------------------
def _store(hearth: Hearth) -> Path:
    return hearth.home / "hearth.db"


def test_a_store_that_is_garbage_is_a_one_line_store_error(hearth: Hearth) -> None:
    hearth.home.mkdir(mode=0o700)
    _store(hearth).write_bytes(seeded("garbage").randbytes(16384))
    for command in (("ls",), ("status", "w1"), ("reconcile",), ("logs", "w1")):
        error = hearth.fails(*command, kind="store_error")
        assert "hearth.db" in error["message"], error


async def _populate(hearth: Hearth, count: int) -> None:
    """Many records, quickly: a Host in this process with the fake driver in memory (the store
    is the same file the CLI opens)."""
    driver = FakeDriver()
    async with Host(
        project_dir=hearth.project, home=hearth.home, in_process={"fake": lambda: MemoryConnection(driver)}
    ) as host:
        for index in range(count):
            await host.provision(f"w{index}", tier="solo", driver="fake")


def test_a_store_whose_middle_page_is_overwritten_is_a_one_line_store_error(hearth: Hearth) -> None:
    slugs = [f"w{index}" for index in range(60)]
    asyncio.run(_populate(hearth, len(slugs)))
    database = _store(hearth)
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            row[0]
            for row in db.execute("SELECT pageno FROM dbstat WHERE name = 'deployments' ORDER BY pageno")
        ]
        total = db.execute("PRAGMA page_count").fetchone()[0]
    assert len(pages) >= 3, f"the deployments table should span several pages: {pages}"
    middle = pages[len(pages) // 2]
    assert 1 < middle < total
    data = bytearray(database.read_bytes())
    data[size * (middle - 1) : size * middle] = b"\xff" * size
    database.write_bytes(bytes(data))
    broken = []
    with contextlib.closing(sqlite3.connect(database)) as db:
        for slug in slugs:
            try:
                db.execute("SELECT * FROM deployments WHERE slug = ?", (slug,)).fetchall()
            except sqlite3.DatabaseError:
                broken.append(slug)
    assert broken, "the overwritten page holds no record"
    for command in (("ls",), ("status", broken[0]), ("reconcile",)):
        error = hearth.fails(*command, kind="store_error")
        assert "hearth.db" in error["message"], error
