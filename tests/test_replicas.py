"""Several hosts on one PostgreSQL registry (issue 13): replicas in processes of their own,
the real ``hearth-adapter-fake`` (its backend in the shared home's data folder, so every
replica sees the same backend), a lease of one second. Only processes the test started are
signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearth import Host

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
BOUND = 60.0
SETTINGS = """
[tiers.glacial.driver_flags.fake]
delay = 6
[timeouts]
lease = 1
cancel_grace = 5
drain_grace = 1
"""


class Replica:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def say(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(BOUND):
            line = await self.process.stdout.readline()
        assert line, "the replica ended without a word"
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signum)

    async def finish(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            try:
                async with asyncio.timeout(BOUND):
                    await self.process.wait()
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await self.process.wait()


@contextlib.asynccontextmanager
async def replicas(home: Path, project: Path, url: str, *argvs: list[str]) -> AsyncIterator[list[Replica]]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("HEARTH_HOME", "HEARTH_STORE", "HEARTH_URL"):
        env.pop(name, None)
    made = []
    try:
        for argv in argvs:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.replica_worker", argv[0], url, str(home), str(project),
                *argv[1:],
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
            )  # fmt: skip
            made.append(Replica(process))
        yield made
    finally:
        await asyncio.gather(*(replica.finish() for replica in made))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The shared home and project; this process finds the fake adapter as the replicas do."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("HEARTH_HOME", "HEARTH_STORE", "HEARTH_URL"):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(SETTINGS)
    return tmp_path / "home", project


def journal(home: Path, method: str, slug: str) -> list[dict[str, Any]]:
    path = home / "data" / "fake" / "journal.jsonl"
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [call for call in calls if call["method"] == method and call["slug"] == slug]


async def test_twelve_clients_on_three_replicas_racing_one_slug_make_one_of_everything(
    site: tuple[Path, Path], pg_url: str
) -> None:
    home, project = site
    async with replicas(home, project, pg_url, *[["race", "zeta", "4"]] * 3) as three:
        owners = {(await replica.say())["ready"] for replica in three}
        assert len(owners) == 3
        await asyncio.gather(*(replica.tell("go") for replica in three))
        outcomes = [(await replica.say())["done"] for replica in three]
    assert [kind for each in outcomes for kind in each] == ["DeploymentRef"] * 12, outcomes
    async with Host(project_dir=project, home=home, store_url=pg_url) as host:
        operations = await host.operations(slug="zeta")
        assert [op.state for op in operations] == ["succeeded"], operations
        assert [(d.slug, d.state) for d in await host.deployments()] == [("zeta", "ready")]
    assert len(journal(home, "provision", "zeta")) == 1  # one backend create


async def ended(pid: int, bound: float) -> None:
    """Wait until process ``pid`` (not ours: an adapter) has exited, on its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(bound):
            await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def settled(host: Host, slug: str, ident: int) -> str:
    """The note a host adds to an operation's log once it settled the record that operation
    left (after ending it ``interrupted``), as ``watch`` delivers it."""
    async with asyncio.timeout(BOUND):
        async for event in host.watch(slug=slug):
            if event.operation == ident and event.kind == "log" and "settled by" in (event.message or ""):
                return event.message or ""
    raise AssertionError("the watch ended")


async def test_a_replica_killed_mid_provision_is_taken_over_and_the_record_tells_the_truth(
    site: tuple[Path, Path], pg_url: str
) -> None:
    home, project = site
    async with replicas(home, project, pg_url, ["slow", "kappa"]) as [doomed]:
        ident = int((await doomed.say())["running"])
        doomed.signal(signal.SIGKILL)
        await doomed.process.wait()
    async with Host(project_dir=project, home=home, store_url=pg_url) as survivor:
        # a waiter learns within the lease plus a second that its host is gone, and settles it
        final = await (await survivor.operation(ident)).wait(timeout=BOUND)
        assert final.state == "interrupted", final
        await settled(survivor, "kappa", ident)
        # the killed replica's adapter rolls back when its parent dies; once it has exited,
        # status says what the backend holds, and the record says the same
        [create] = journal(home, "provision", "kappa")  # never a second backend create
        await ended(int(create["pid"]), BOUND)
        observed = await survivor.status("kappa") if await survivor.store.get("kappa") else None
        record = await survivor.store.get("kappa")
        assert observed is None or observed.state == "absent", observed
        assert record is None or (record.state == "failed" and record.ref is None), record
    assert len(journal(home, "provision", "kappa")) == 1


async def test_a_paused_holder_past_its_lease_is_fenced(site: tuple[Path, Path], pg_url: str) -> None:
    home, project = site
    async with replicas(home, project, pg_url, ["slow", "lambda"]) as [paused]:
        ident = int((await paused.say())["running"])
        paused.signal(signal.SIGSTOP)  # its adapter runs on; its lease is no longer renewed
        async with Host(project_dir=project, home=home, store_url=pg_url) as taker:
            final = await (await taker.operation(ident)).wait(timeout=BOUND)
            assert final.state == "interrupted", final
            settled = await taker.store.get("lambda")
        paused.signal(signal.SIGCONT)
        late = await paused.say()  # its adapter finished: its late outcome is refused
        assert late.get("error") == "interrupted", late
        assert "was settled by another host" in late["message"]
    async with Host(project_dir=project, home=home, store_url=pg_url) as host:
        assert await host.store.get("lambda") == settled  # what the taker left stands
        assert (await host.operation(ident)).state == "interrupted"
        report = await host.status("lambda")  # and the next access settles it from the backend
        record = await host.store.get("lambda")
        assert record is not None and record.state == report.state == "ready", (record, report)


async def test_a_replica_takes_over_a_dead_ones_operation_unasked(
    site: tuple[Path, Path], pg_url: str
) -> None:
    """No one waits for it or looks at the slug: the survivor's lease round finds it."""
    home, project = site
    async with replicas(home, project, pg_url, ["slow", "mu"]) as [doomed]:
        ident = int((await doomed.say())["running"])
        doomed.signal(signal.SIGKILL)
        await doomed.process.wait()
    async with Host(project_dir=project, home=home, store_url=pg_url) as survivor:
        note = await settled(survivor, "mu", ident)  # reading events settles nothing
        assert f"settled by {survivor.owner} from the adapter's status" in note
        op = await survivor.operation(ident)
        assert op.state == "interrupted" and op.error is not None, op
        message = op.error["message"]
        assert f"taken over by {survivor.owner}" in message and "held no lease" in message
        # once the dead replica's adapter has rolled back and exited, the record says so
        [create] = journal(home, "provision", "mu")
        await ended(int(create["pid"]), BOUND)
        if await survivor.store.get("mu") is not None:
            await survivor.status("mu")
        record = await survivor.store.get("mu")
        assert record is None or (record.state == "failed" and record.ref is None), record
