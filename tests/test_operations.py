"""Operations (issue 11): started in one process, seen, watched, joined and cancelled from
another; ``busy`` at once; a caller's cancellation does not cancel the work; a host killed with
``kill -9`` is settled by the next access; ``check``, ``tiers``, ``drivers`` and the JSON forms.

Cross-process cases run real processes: each "agent" is ``sys.executable agent.py`` holding a
``Host`` on the test's home, driven by JSON lines on its stdin and answering on its stdout; its
adapter is the real ``hearth-adapter-fake`` found on PATH. The store is the real SQLite one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

from hearth import (
    Busy,
    CheckResult,
    Conflict,
    Deployment,
    Event,
    Host,
    Interrupted,
    InvalidInput,
    InvalidTransition,
    NotFound,
    Operation,
    ReconcileReport,
    Tier,
)
from hearth._states import Ask, joins
from hearth_adapter_fake._store import read_journal
from tests.helpers import left_by_a_dead_host, make_host

#: Tiers every process of a cross-process test reads from the project's hearth.toml.
SETTINGS = """
[tiers.brisk.driver_flags.fake]
delay = 0.8
[tiers.slow.driver_flags.fake]
delay = 5
[tiers.glacial.driver_flags.fake]
delay = 60
[timeouts]
cancel_grace = 5
drain_grace = 2
"""

#: A host in its own process, driven by JSON lines: {"do": "start", "verb": ..., **arguments},
#: {"do": "result", "id": ...}, {"do": "exit"}. It answers each with one JSON line; a hearth
#: error is {"error": kind, "message": ..., "operation": ...}. EOF on stdin closes it.
AGENT = r"""
import asyncio
import json
import sys

from hearth import HearthError, Host


def say(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def handle(host, command):
    what = command.pop("do")
    if what == "start":
        verb = command.pop("verb")
        operation = await getattr(host, "start_" + verb)(**command)
        return {"id": operation.id, "state": operation.state}
    if what == "result":
        operation = await host.operation(command["id"])
        ref = await operation.result(timeout=command.get("timeout", 45))
        return {"ref": None if ref is None else ref.model_dump(mode="json")}
    if what == "exit":
        return {"bye": True}
    raise ValueError(f"unknown command {what!r}")


async def main():
    async with Host(project_dir=sys.argv[1], home=sys.argv[2]) as host:
        say({"ready": True, "owner": host.owner})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            leaving = command["do"] == "exit"
            try:
                reply = await handle(host, command)
            except HearthError as exc:
                reply = {
                    "error": exc.kind,
                    "message": exc.message,
                    "operation": getattr(exc, "operation", None),
                }
            say(reply)
            if leaving:
                return


asyncio.run(main())
"""


# --- helpers ------------------------------------------------------------------------------------
def journal(home: Path) -> list[dict[str, Any]]:
    return read_journal(home / "data" / "fake")


def calls(home: Path, method: str, slug: str | None = None) -> list[dict[str, Any]]:
    return [e for e in journal(home) if e["method"] == method and (slug is None or e["slug"] == slug)]


async def until(condition: Callable[[], bool], bound: float = 30.0) -> None:
    """Wait for ``condition`` (polled), failing after ``bound`` seconds."""
    async with asyncio.timeout(bound):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def collect(
    events: AsyncIterator[Event], stop: Callable[[Event], bool] = lambda _: False, bound: float = 30.0
) -> list[Event]:
    """The events of ``events`` up to the first one ``stop`` accepts (or the end), within ``bound``."""
    stream = cast(AsyncGenerator[Event, None], events)
    seen: list[Event] = []
    try:
        async with asyncio.timeout(bound):
            async for event in stream:
                seen.append(event)
                if stop(event):
                    break
    finally:
        await stream.aclose()
    return seen


async def first_progress(op: Operation, bound: float = 30.0) -> None:
    """Wait until the operation's adapter reported progress (it is running in the adapter)."""
    seen = await collect(op.events(), lambda e: e.kind == "progress" or e.final, bound)
    assert seen[-1].kind == "progress", f"operation #{op.id} ended before any progress: {seen[-1]}"


@dataclass
class Site:
    """A project and a home shared by the test process and its agents."""

    project: Path
    home: Path
    agent: Path
    env: dict[str, str]

    def host(self, **options: Any) -> Host:
        return Host(project_dir=self.project, home=self.home, **options)


@pytest.fixture
def site(tmp_path: Path, venv_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(SETTINGS)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("HEARTH_HOME", raising=False)
    return Site(project, tmp_path / "home", agent, dict(os.environ))


class Agent:
    """One agent process: its pid is recorded, and it is always stopped and reaped."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.owner = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def reply(self, bound: float = 30.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(bound):
            line = await self.process.stdout.readline()
        assert line, f"agent {self.pid} ended without answering"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, bound: float = 30.0, **command: Any) -> dict[str, Any]:
        await self.send(**command)
        return await self.reply(bound)

    async def kill(self) -> None:
        """SIGKILL this agent (by its pid) and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self, bound: float = 20.0) -> None:
        """EOF on its stdin (it closes its host and exits); SIGKILL after ``bound``; reaped."""
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            async with asyncio.timeout(bound):
                await self.process.wait()
        except TimeoutError:
            await self.kill()


@contextlib.asynccontextmanager
async def agents(site: Site, count: int = 1) -> AsyncIterator[list[Agent]]:
    """``count`` agents, each with its host open, stopped and reaped at the end."""
    made: list[Agent] = []
    try:
        for _ in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(site.agent),
                str(site.project),
                str(site.home),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=site.env,
            )
            made.append(Agent(process))
        for one in made:
            ready = await one.reply(bound=40.0)
            assert ready["ready"] is True
            one.owner = ready["owner"]
        yield made
    finally:
        await asyncio.gather(*(one.stop() for one in made))


async def exited(pidfd: int, bound: float) -> None:
    """Wait until the process behind ``pidfd`` has exited (its pidfd becomes readable)."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(bound):
            await gone
    finally:
        loop.remove_reader(pidfd)


# --- 1: one operation, seen from every process ----------------------------------------------------
@pytest.mark.subprocess
async def test_an_operation_started_in_one_process_is_seen_and_watched_from_another(site: Site) -> None:
    async with site.host() as host, agents(site) as [owner]:
        # the watch starts before the work exists: events come as they are written elsewhere
        watcher = asyncio.create_task(
            collect(host.watch(after=0, slug="alpha"), lambda e: e.final, bound=40.0)
        )
        started = await owner.ask(do="start", verb="provision", slug="alpha", tier="brisk", driver="fake")
        ident = started["id"]
        assert isinstance(ident, int) and started["state"] in ("queued", "running")

        op = await host.operation(ident)
        assert (op.slug, op.verb, op.tier, op.driver, op.key) == ("alpha", "provision", "brisk", "fake", None)
        assert op.owner == owner.owner and f":{owner.pid}:" in owner.owner
        assert [o.id for o in await host.operations(slug="alpha")] == [ident]
        assert [o.id for o in await host.operations(slug="beta")] == []

        events = await collect(op.events(), bound=40.0)  # ends by itself with the final event
        watched = await watcher
        assert watched == events  # every event of alpha is this operation's

        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)), "sequence numbers increase strictly"
        for event in events:
            assert (event.operation, event.slug, event.verb) == (ident, "alpha", "provision")
            assert isinstance(event.at, datetime) and event.at.tzinfo is not None
        assert [e.state for e in events if e.kind == "state"] == ["queued", "running", "succeeded"]
        progress = [e for e in events if e.kind == "progress"]
        assert len(progress) >= 4 and any("step 4 of 4" in (e.message or "") for e in progress)
        assert events[-1].final and events[-1].record_state == "ready"
        assert not any(e.final for e in events[:-1])

        # resume from a sequence number: exactly what came after it
        middle = events[2].seq
        resumed = await collect(host.watch(after=middle), lambda e: e.final)
        assert resumed == events[3:]

        ref = await op.result(timeout=30)
        assert ref is not None and ref.endpoint == "fake://alpha"
        theirs = await owner.ask(do="result", id=ident)
        assert theirs["ref"] == ref.model_dump(mode="json")  # the same ref in both processes
        final = await host.operation(ident)
        assert final.state == "succeeded" and final.ref == ref and final.finished_at is not None
        assert (await host.deployment("alpha")).state == "ready"
    assert len(calls(site.home, "provision")) == 1


@pytest.mark.subprocess
async def test_an_operation_is_cancelled_from_a_process_that_does_not_run_it(site: Site) -> None:
    reason = "stopped from another process"
    async with site.host() as host, agents(site) as [owner]:
        started = await owner.ask(do="start", verb="provision", slug="alpha", tier="glacial", driver="fake")
        op = await host.operation(started["id"])
        await first_progress(op)
        assert (await host.operation(op.id)).state == "running"

        # busy at once from this process too: another tier, another verb
        with pytest.raises(Busy, match=rf"operation #{op.id} \(provision\) is running") as caught:
            async with asyncio.timeout(10):
                await host.start_provision("alpha", tier="solo", driver="fake")
        assert caught.value.operation == op.id
        with pytest.raises(Busy) as caught:
            async with asyncio.timeout(10):
                await host.start_teardown("alpha")
        assert caught.value.operation == op.id
        # the same arguments join it
        joined = await host.start_provision("alpha", tier="glacial", driver="fake")
        assert joined.id == op.id

        requested = await op.cancel(reason=reason)
        assert requested.cancel_requested == reason
        async with asyncio.timeout(25):  # the work itself would take 60 s: the owner acted on it
            final = await op.wait()
        assert final.state == "cancelled" and final.cancel_requested == reason
        assert final.error is not None and final.error["rolled_back"] is True
        assert reason in final.error["message"]

        theirs = await owner.ask(do="result", id=op.id)
        assert theirs["error"] == "cancelled"

        events = await collect(op.events())
        assert [(e.kind, e.state) for e in events[-3:]] == [
            ("cancel", None),
            ("workspace", None),  # the record the rollback left: none
            ("state", "cancelled"),
        ]
        assert events[-3].message == reason and events[-2].record is None
        assert events[-1].final and events[-1].record_state is None  # no live record
        assert await host.deployments() == []  # a first provision rolled back leaves no record
        with pytest.raises(NotFound, match="ended cancelled"):
            await host.deployment("alpha")
    assert not (site.home / "data" / "fake" / "deployments" / "alpha.json").exists()
    assert len(calls(site.home, "provision")) == 1


# --- 2: joining, and idempotency keys -----------------------------------------------------------
@pytest.mark.subprocess
async def test_six_processes_provisioning_one_slug_share_one_operation_and_one_adapter_call(
    site: Site,
) -> None:
    async with agents(site, 6) as six:
        command = {"do": "start", "verb": "provision", "slug": "alpha", "tier": "slow", "driver": "fake"}
        for one in six:  # all at once: every host is open and waiting for its line
            await one.send(**command)
        started = await asyncio.gather(*(one.reply() for one in six))
        assert all("id" in reply for reply in started), started
        ids = {reply["id"] for reply in started}
        assert len(ids) == 1, f"six starts made {len(ids)} operations: {started}"
        [ident] = ids
        results = await asyncio.gather(*(one.ask(do="result", id=ident, bound=45.0) for one in six))
        refs = [reply.get("ref") for reply in results]
        assert refs[0] is not None and refs[0]["workspace_slug"] == "alpha"
        assert all(ref == refs[0] for ref in refs), results
    assert len(calls(site.home, "provision")) == 1
    async with site.host() as host:
        [op] = await host.operations(slug="alpha")
        assert (op.id, op.state) == (ident, "succeeded")
        assert len(await host.deployments()) == 1


@pytest.mark.subprocess
async def test_a_used_key_returns_its_operation_even_finished_and_from_another_process(site: Site) -> None:
    async with site.host() as host, agents(site) as [other]:
        first = await host.start_provision("beta", tier="brisk", driver="fake", key="req-1")
        again = await host.start_provision("beta", tier="brisk", driver="fake", key="req-1")
        assert again.id == first.id  # while it runs
        ref = await first.result(timeout=30)
        assert ref is not None
        done = await host.start_provision("beta", tier="brisk", driver="fake", key="req-1")
        assert (done.id, done.state, done.key) == (first.id, "succeeded", "req-1")
        assert await host.provision("beta", tier="brisk", driver="fake", key="req-1") == ref

        theirs = await other.ask(
            do="start", verb="provision", slug="beta", tier="brisk", driver="fake", key="req-1"
        )
        assert theirs == {"id": first.id, "state": "succeeded"}
        assert (await other.ask(do="result", id=first.id))["ref"] == ref.model_dump(mode="json")

        # the key with other arguments: a conflict, in either process
        refused = await other.ask(
            do="start", verb="provision", slug="beta", tier="team", driver="fake", key="req-1"
        )
        assert refused["error"] == "conflict" and "idempotency key" in refused["message"]
        with pytest.raises(Conflict, match="idempotency key") as caught:
            await host.start_provision("beta", tier="team", driver="fake", key="req-1")
        assert caught.value.kind == "conflict" and caught.value.data["operation"] == first.id
        with pytest.raises(Conflict, match="idempotency key"):
            await host.start_provision("gamma", tier="brisk", driver="fake", key="req-1")
        with pytest.raises(Conflict, match="idempotency key"):
            await host.start_upgrade("beta", tier="brisk", key="req-1")
        assert [o.id for o in await host.operations(slug="beta")] == [first.id]
        assert await host.operations(slug="gamma") == []
    assert len(calls(site.home, "provision")) == 1


async def test_a_key_that_joined_an_operation_answers_it_for_good_and_never_starts_work(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host, make_host(tmp_path) as other:
        first = await host.start_provision("alpha", tier="slow", driver="fake", key="idemA")
        joined = await host.start_provision("alpha", tier="slow", driver="fake", key="idemB")
        assert joined.id == first.id
        await first_progress(first)  # running in the adapter: the cancel rolls it back
        await first.cancel(reason="changed my mind")
        assert (await first.wait(timeout=20)).state == "cancelled"
        # the replay of the key that joined answers the cancelled operation, in either host
        for who in (host, other):
            again = await who.start_provision("alpha", tier="slow", driver="fake", key="idemB")
            assert (again.id, again.state) == (first.id, "cancelled")
        assert [op.id for op in await host.operations(slug="alpha")] == [first.id]
        assert await host.deployments() == []  # the cancelled workspace did not come back
        with pytest.raises(Conflict, match="idempotency key"):  # the key asked for this only
            await host.start_provision("alpha", tier="brisk", driver="fake", key="idemB")


async def test_a_provision_with_nothing_to_do_records_nothing_and_answers_what_made_the_workspace(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        made = await host.start_provision("alpha", tier="solo", driver="fake")
        assert (await made.wait(timeout=30)).state == "succeeded"
        for key in (None, "again-1"):
            again = await host.start_provision("alpha", tier="solo", driver="fake", key=key)
            assert (again.id, again.state, again.finished) == (made.id, "succeeded", True)
        upgraded = await host.start_upgrade("alpha", tier="team")
        assert (await upgraded.wait(timeout=30)).state == "succeeded"
        again = await host.start_provision("alpha", tier="team", driver="fake")
        assert (again.id, again.state) == (upgraded.id, "succeeded")  # the upgrade made it so
        assert [op.id for op in await host.operations(slug="alpha")] == [made.id, upgraded.id]
        # a key whose answer was the operation that made the workspace is bound to it: its
        # replay answers it, even once the workspace is gone, and never starts work
        await host.teardown("alpha")
        ops = await host.operations(slug="alpha")
        again = await host.start_provision("alpha", tier="solo", driver="fake", key="again-1")
        assert again.id == made.id and await host.operations(slug="alpha") == ops
        # a teardown of a torn-down workspace answers the teardown, as a provision does
        gone = await host.start_teardown("alpha", key="gone-1")
        assert (gone.id, gone.verb, gone.state) == (ops[-1].id, "teardown", "succeeded")
        assert await host.operations(slug="alpha") == ops
        # a provision whose key cannot be bound to an upgrade (it asked for a provision) keeps
        # the old record: a finished no-op of its own
        await host.provision("beta", tier="solo", driver="fake")
        await host.upgrade("beta", tier="team")
        keyed = await host.start_provision("beta", tier="team", driver="fake", key="beta-1")
        assert (keyed.verb, keyed.state, keyed.key) == ("provision", "succeeded", "beta-1")
        assert len(await host.operations(slug="beta")) == 3


async def test_a_finished_operation_cannot_be_cancelled(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("alpha", tier="solo", driver="fake")
        assert (await op.wait(timeout=30)).state == "succeeded"
        seq = await host.store.last_seq()
        with pytest.raises(InvalidTransition, match=rf"operation #{op.id} is succeeded") as caught:
            await op.cancel(reason="too late")
        assert caught.value.kind == "invalid_transition" and caught.value.state == "succeeded"
        with pytest.raises(InvalidTransition):
            await (await host.operation(op.id)).cancel(reason="too late")
        after = await host.operation(op.id)
        assert after.cancel_requested is None and await host.store.last_seq() == seq  # nothing recorded


async def test_an_operation_read_by_id_carries_its_log_and_a_list_leaves_it_out(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("alpha", tier="solo", driver="fake")
        waited = await op.wait(timeout=30)
        assert waited.state == "succeeded" and waited.log
        read = await host.operation(op.id)
        [logged] = await host.logs("alpha")
        assert read.log == logged.log and read.log[-1].message
        [listed] = await host.operations(slug="alpha")
        assert listed.log == ()


# --- labels (issue 21) ----------------------------------------------------------------------------
async def test_labels_go_on_provision_change_by_label_and_filter_the_records(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        labels = {"team": "a", "env": "dev"}
        op = await host.start_provision("alpha", tier="solo", driver="fake", labels=labels)
        assert (await op.wait(timeout=30)).state == "succeeded"
        await host.provision("beta", tier="solo", driver="fake", labels={"team": "b"})
        await host.provision("gamma", tier="solo", driver="fake")
        assert (await host.deployment("alpha")).labels == {"env": "dev", "team": "a"}
        assert (await host.deployment("gamma")).labels == {}
        assert [d.slug for d in await host.deployments(labels={"team": "a"})] == ["alpha"]
        assert [d.slug for d in await host.deployments(labels={"team": "a", "env": "prod"})] == []
        # labels never reach the adapter
        assert "team" not in json.dumps(calls(tmp_path / "home", "provision"))

        seq = await host.store.last_seq()
        changed = await host.label("alpha", {"env": "prod", "example.com/owner": "ann", "team": None})
        assert changed.labels == {"env": "prod", "example.com/owner": "ann"}
        assert await host.deployment("alpha") == changed
        assert changed.state == "ready" and changed.generation == 1
        [event] = [e async for e in _events_after(host, seq)]
        assert (event.kind, event.slug, event.operation, event.verb) == ("workspace", "alpha", None, None)
        assert event.record is not None and event.record.labels == changed.labels
        # a change that changes nothing writes nothing; removing an absent label is no change
        seq = await host.store.last_seq()
        assert await host.label("alpha", {"env": "prod", "gone": None}) == changed
        assert await host.store.last_seq() == seq
        assert [d.slug for d in await host.deployments(labels={"example.com/owner": "ann"})] == ["alpha"]

        # a provision of an existing workspace with nothing to do changes no label
        again = await host.start_provision("beta", tier="solo", driver="fake", labels={"team": "z"})
        assert again.finished and (await host.deployment("beta")).labels == {"team": "b"}
        # an upgrade keeps them, a reuse starts the new generation with the provision's own
        await host.upgrade("beta", tier="team")
        assert (await host.deployment("beta")).labels == {"team": "b"}
        await host.teardown("beta")
        assert (await host.deployment("beta")).labels == {"team": "b"}
        await host.provision("beta", tier="solo", driver="fake", reuse=True, labels={"team": "c"})
        assert (await host.deployment("beta")).labels == {"team": "c"}


async def test_a_label_change_settles_what_a_dead_host_left_first(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("beta", tier="solo", driver="fake", labels={"team": "b"})
        beta = await host.deployment("beta")
        await left_by_a_dead_host(host, beta.model_copy(update={"state": "upgrading"}), "upgrade")
        changed = await host.label("beta", {"team": "c"})
        assert (changed.state, changed.labels) == ("ready", {"team": "c"})
        [interrupted] = [op for op in await host.operations(slug="beta") if op.verb == "upgrade"]
        assert interrupted.state == "interrupted"
        # its final event came with the settle, before the label change's workspace event
        events = await host.store.events(slug="beta", after=0)
        final = next(e for e in events if e.operation == interrupted.id and e.final)
        assert final.record_state == "ready" and events[-1].record == changed


async def _events_after(host: Host, seq: int) -> AsyncIterator[Event]:
    for event in await host.store.events(after=seq):
        yield event


async def test_bad_labels_are_refused_naming_the_label(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        bad: list[tuple[dict[str, Any], str]] = [
            ({"Bad Key": "x"}, "label key 'Bad Key'"),
            ({"-team": "x"}, "label key '-team'"),
            ({"a" * 64: "x"}, "label key"),
            ({"Example.com/team": "x"}, "label key 'Example.com/team'"),
            ({"/team": "x"}, "label key '/team'"),
            ({"team": "not ok"}, "label 'team' has an invalid value 'not ok'"),
            ({"team": "x" * 64}, "label 'team' has an invalid value"),
            ({"team": "-x"}, "label 'team' has an invalid value"),
            ({"team": 5}, "label 'team' has an invalid value 5"),
        ]
        for labels, message in bad:
            with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
                await host.start_provision("alpha", tier="solo", driver="fake", labels=labels)
            assert caught.value.kind == "invalid_input"
        assert await host.operations() == []
        ok = {"a" * 63: "", "x." * 100 + "io/" + "n" * 63: "v" * 63, "k_8.s-io": "A_b.C-1"}
        await host.provision("alpha", tier="solo", driver="fake", labels=ok)
        assert (await host.deployment("alpha")).labels == ok
        with pytest.raises(InvalidInput, match=re.escape("label key 'Nope!'")):
            await host.label("alpha", {"Nope!": "x"})
        with pytest.raises(NotFound):
            await host.label("nobody", {"team": "a"})
        with pytest.raises(InvalidInput, match="at most 64 labels, not 65"):
            await host.start_provision(
                "beta", tier="solo", driver="fake", labels={f"k{i}": "v" for i in range(65)}
            )
        # at most 64 on a record: the 64th goes on, the 65th is refused and nothing changes
        sixty = {f"k{i}": "v" for i in range(61)}
        await host.label("alpha", sixty)
        assert len((await host.deployment("alpha")).labels) == 64
        with pytest.raises(InvalidInput, match="at most 64 labels, not 65"):
            await host.label("alpha", {"one-more": "v"})
        await host.label("alpha", {"one-more": "v", "k0": None})  # one out, one in
        assert len((await host.deployment("alpha")).labels) == 64
        with pytest.raises(InvalidInput, match="is not a workspace slug"):
            await host.label("Not A Slug", {"team": "a"})


async def test_labels_cannot_change_while_an_operation_runs_on_the_slug(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake", labels={"team": "a"})
        running = await host.start_upgrade("alpha", tier="slow")
        await first_progress(running)
        with pytest.raises(Busy, match=rf"operation #{running.id}"):
            async with asyncio.timeout(10):  # at once, not after the lock wait
                await host.label("alpha", {"team": "b"})
        await running.cancel(reason="enough")
        await running.wait(timeout=30)
        assert (await host.deployment("alpha")).labels == {"team": "a"}
        assert (await host.label("alpha", {"team": "b"})).labels == {"team": "b"}


# --- 3: busy ------------------------------------------------------------------------------------
async def test_a_conflicting_start_is_busy_at_once_naming_the_running_operation(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, make_host(tmp_path) as other:
        running = await host.start_provision("alpha", tier="slow", driver="fake")
        await first_progress(running)
        conflicting: list[Callable[[Host], Any]] = [
            lambda h: h.start_provision("alpha", tier="solo", driver="fake"),
            lambda h: h.start_provision("alpha", tier="slow", driver="fake", reuse=True),
            lambda h: h.start_upgrade("alpha", tier="team"),
            lambda h: h.start_teardown("alpha"),
            lambda h: h.provision("alpha", tier="team", driver="fake"),
        ]
        for start in conflicting:
            for who in (host, other):  # the owner, and another host on the same store
                with pytest.raises(Busy, match=rf"is busy: operation #{running.id} \(") as caught:
                    async with asyncio.timeout(10):  # at once, not after the lock wait (600 s)
                        await start(who)
                assert caught.value.kind == "busy" and caught.value.operation == running.id
                assert caught.value.to_json()["operation"] == running.id
        current = await other.operation(running.id)
        assert current.state == "running"  # the refusals did not wait for the work
        assert len(await host.operations(slug="alpha")) == 1  # and recorded nothing
        await running.cancel(reason="the test is over")
        assert (await running.wait(timeout=20)).state == "cancelled"
    assert len(calls(tmp_path / "home", "provision")) == 1


# --- 4: the caller's cancellation is not the work's -------------------------------------------------
async def test_cancelling_a_task_awaiting_an_operation_does_not_cancel_the_work(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        progressed = asyncio.Event()
        op = await host.start_provision(
            "alpha", tier="brisk", driver="fake", on_progress=lambda _: progressed.set()
        )
        waiters = [
            asyncio.create_task(op.result()),
            asyncio.create_task(op.wait()),
            asyncio.create_task(collect(op.events())),
        ]
        async with asyncio.timeout(10):
            await progressed.wait()
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert (await host.operation(op.id)).state == "running"
        ref = await op.result(timeout=30)
        assert ref is not None and ref.last_status == "ready"
        assert (await host.operation(op.id)).state == "succeeded"
        assert (await host.deployment("alpha")).state == "ready"
        assert host.interruptions == []


async def test_a_joiner_cancelled_leaves_the_work_but_a_plain_verb_cancels_what_it_started(
    tmp_path: Path,
) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("alpha", tier="brisk", driver="fake")
        joiner = asyncio.create_task(host.provision("alpha", tier="brisk", driver="fake"))
        await first_progress(op)
        joiner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joiner
        assert (await op.wait(timeout=30)).state == "succeeded"

        # the old semantics of the plain verb: cancelling its caller cancels the work it started
        started = asyncio.Event()
        plain = asyncio.create_task(
            host.provision("beta", tier="slow", driver="fake", on_progress=lambda _: started.set())
        )
        async with asyncio.timeout(10):
            await started.wait()
        plain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await plain
        [cancelled] = await host.operations(slug="beta")
        assert cancelled.state == "cancelled" and cancelled.error is not None
        assert "cancelled by the caller" in cancelled.error["message"]
        assert [d.slug for d in await host.deployments()] == ["alpha"]


# --- 5: kill -9 of the owner ------------------------------------------------------------------------
@pytest.mark.subprocess
async def test_an_operation_whose_host_was_killed_is_settled_by_the_next_access(site: Site) -> None:
    async with agents(site) as [owner]:
        started = await owner.ask(do="start", verb="provision", slug="alpha", tier="glacial", driver="fake")
        ident = started["id"]
        await until(lambda: bool(calls(site.home, "provision", "alpha")))
        [call] = calls(site.home, "provision", "alpha")
        adapter = os.pidfd_open(call["pid"])  # the adapter this agent started, held before the kill
        try:
            await owner.kill()
            # the adapter notices that its host is gone and exits (rolling its work back)
            await exited(adapter, bound=30.0)
        finally:
            os.close(adapter)

    async with site.host() as host:
        # nothing settled it yet: the dead host's marks are all there is
        assert (await host.operation(ident)).state == "running"
        assert [d.state for d in await host.deployments()] == ["provisioning"]

        status = await host.status("alpha")  # no reconcile: this access settles it
        assert status.details["recorded_state"] == "failed"
        op = await host.operation(ident)
        assert op.state == "interrupted" and op.error is not None and op.error["kind"] == "interrupted"
        record = await host.deployment("alpha")
        assert record.state == "failed" and not record.unconfirmed
        assert "provision interrupted" in (record.reason or "")
        with pytest.raises(Interrupted):
            await op.result(timeout=5)
        assert await host.operations(slug="alpha", state="running") == []
        # and the slug is usable: the next verb runs
        await host.teardown("alpha")
        assert (await host.deployment("alpha")).state == "tier_torn_down"


# --- 6: check, tiers, drivers, JSON forms, not found ------------------------------------------------
async def test_check_accepts_refuses_and_joins_without_starting_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with make_host(tmp_path) as host:
        ok = await host.check("alpha", "provision", tier="solo", driver="fake")
        assert ok == CheckResult(slug="alpha", verb="provision", accepted=True)
        assert ok.model_dump(mode="json") == {
            "slug": "alpha",
            "verb": "provision",
            "accepted": True,
            "error": None,
            "joins": None,
        }
        assert await host.operations() == [] and calls(home, "provision") == []

        absent = await host.check("alpha", "upgrade", tier="team")
        assert not absent.accepted and absent.error is not None and absent.error["kind"] == "not_found"

        await host.provision("alpha", tier="solo", driver="fake")
        assert (await host.check("alpha", "upgrade", tier="team")).accepted
        other_tier = await host.check("alpha", "provision", tier="team", driver="fake")
        assert other_tier.error is not None and other_tier.error["kind"] == "conflict"
        await host.teardown("alpha")
        refused = await host.check("alpha", "upgrade", tier="team")
        assert not refused.accepted and refused.error is not None
        assert refused.error["kind"] == "invalid_transition" and refused.error["state"] == "tier_torn_down"
        assert "cannot upgrade workspace 'alpha': it is tier_torn_down" in refused.error["message"]
        final = await host.check("alpha", "provision", tier="solo", driver="fake")
        assert final.error is not None and final.error["kind"] == "invalid_transition"
        assert (await host.check("alpha", "teardown")).accepted  # a second teardown does nothing

        running = await host.start_provision("beta", tier="slow", driver="fake")
        await first_progress(running)
        joined = await host.check("beta", "provision", tier="slow", driver="fake")
        assert (joined.accepted, joined.joins, joined.error) == (True, running.id, None)
        busy = await host.check("beta", "upgrade", tier="team")
        assert not busy.accepted and busy.joins is None and busy.error is not None
        assert (busy.error["kind"], busy.error["operation"]) == ("busy", running.id)

        bad_checks: list[Callable[[], Awaitable[CheckResult]]] = [
            lambda: host.check("beta", "explode"),
            lambda: host.check("beta", "provision", tier="solo"),
            lambda: host.check("beta", "upgrade"),
        ]
        for bad in bad_checks:  # a question that cannot be asked
            with pytest.raises(InvalidInput):
                await bad()
        bad_slug = await host.check("Not A Slug", "teardown")  # a verb that would be refused
        assert not bad_slug.accepted and bad_slug.error is not None
        assert bad_slug.error["kind"] == "invalid_input"
        await running.cancel(reason="the test is over")
        assert (await running.wait(timeout=20)).state == "cancelled"
        assert [o.verb for o in await host.operations()] == ["provision", "teardown", "provision"]
    assert [e["slug"] for e in calls(home, "provision")] == ["alpha", "beta"]


async def test_check_refuses_a_profile_the_adapter_finds_invalid(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        invalid = await host.check("alpha", "provision", tier="typo", driver="fake")
        assert not invalid.accepted and invalid.error is not None
        assert invalid.error["kind"] == "invalid_profile" and "delya" in invalid.error["message"]
        assert await host.operations() == []
    assert calls(tmp_path / "home", "provision") == []


async def test_tiers_and_drivers_are_listed_json_ready(
    tmp_path: Path, venv_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import TypeAdapter

    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    async with make_host(tmp_path) as host:
        tiers = await host.tiers()
        names = [tier.name for tier in tiers]
        assert names == sorted(names)
        assert {"solo", "team", "studio", "slow", "brisk"} <= set(names)
        dumped = TypeAdapter(list[Tier]).dump_python(tiers, mode="json")
        slow = next(t for t in dumped if t["name"] == "slow")
        assert slow == {
            "name": "slow",
            "resource_caps": slow["resource_caps"],
            "driver_flags": {"fake": {"delay": 60}},
            "autostop": None,
        }
        assert slow["resource_caps"]["cpu"] == 1
        json.dumps(dumped)

        drivers = await host.drivers()
        fake = [d for d in drivers if d.driver == "fake"]
        assert fake[0].in_process and fake[0].chosen and fake[0].acceptable and fake[0].path is None
        on_path = [d for d in fake if d.path is not None and Path(d.path).name == "hearth-adapter-fake"]
        assert on_path, f"the installed fake adapter is not listed: {fake}"
        assert on_path[0].source == "path" and not on_path[0].chosen  # the in-process one wins
        assert on_path[0].acceptable and (on_path[0].version or "").startswith("hearth-adapter-fake")
        assert sum(d.chosen for d in fake) == 1
        rows = [d.model_dump(mode="json") for d in drivers]
        assert {
            "driver",
            "path",
            "source",
            "version",
            "acceptable",
            "refusal",
            "in_process",
            "chosen",
        } <= set(rows[0])
        json.dumps(rows)


async def test_deployments_operations_events_and_reports_dump_to_json(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        op = await host.start_provision("alpha", tier="solo", driver="fake", key="k-1")
        ref = await op.result(timeout=30)
        assert ref is not None
        record = await host.deployment("alpha")
        assert isinstance(record, Deployment)
        as_json = record.model_dump(mode="json")
        assert (as_json["slug"], as_json["state"], as_json["ref"]["endpoint"]) == (
            "alpha",
            "ready",
            "fake://alpha",
        )
        assert Deployment.model_validate(as_json) == record

        finished = await host.operation(op.id)
        document = finished.model_dump(mode="json")
        assert document["id"] == op.id and document["state"] == "succeeded"
        assert document["result"] == ref.model_dump(mode="json")  # the ref is "result" in JSON
        assert (document["outcome"], document["key"]) == ("succeeded", "k-1")
        assert document["finished_at"] is not None
        assert document["ended_at"] == document["finished_at"]
        assert "_host" not in document and "ref" not in document
        json.dumps(document)

        events = await collect(finished.events())
        dumped = [e.model_dump(mode="json") for e in events]
        assert dumped[-1]["kind"] == "state" and dumped[-1]["state"] == "succeeded"
        assert all(isinstance(e["seq"], int) and isinstance(e["at"], str) for e in dumped)
        assert [Event.model_validate(e) for e in dumped] == events
        json.dumps(dumped)

        [logged] = await host.logs("alpha")
        assert logged.log and json.dumps(logged.model_dump(mode="json"))

        # a report with every field filled: a record left transient, and an orphan
        await host.provision("beta", tier="solo", driver="fake")
        beta = await host.deployment("beta")
        await left_by_a_dead_host(
            host, beta.model_copy(update={"state": "provisioning", "ref": None}), "provision"
        )
        await host.forget("alpha")
        report = await host.reconcile(dry_run=True)
        assert isinstance(report, ReconcileReport)
        dumped_report = report.model_dump(mode="json")
        assert dumped_report["resolved"] == [{"slug": "beta", "from": "provisioning", "to": "ready"}]
        assert [o["workspace_slug"] for o in dumped_report["orphans"]] == ["alpha"]
        assert dumped_report["dry_run"] is True
        json.dumps(dumped_report)


async def test_an_unknown_operation_or_workspace_is_not_found(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host:
        with pytest.raises(NotFound, match="no operation #999") as caught:
            await host.operation(999)
        assert caught.value.kind == "not_found" and isinstance(caught.value, InvalidInput)
        assert caught.value.to_json() == {
            "kind": "not_found",
            "message": "no operation #999",
            "retryable": False,
        }
        with pytest.raises(NotFound, match="no workspace 'nope'") as missing:
            await host.deployment("nope")
        assert missing.value.kind == "not_found"
        with pytest.raises(InvalidInput, match="not an operation id"):
            await host.operation("1")  # type: ignore[arg-type]
        plain = Operation.model_validate(
            (await host.start_provision("a1", tier="solo", driver="fake")).model_dump()
        )
        with pytest.raises(RuntimeError, match="plain record"):
            await plain.result()


# --- the table of joins -------------------------------------------------------------------------------
PROVISION: Ask = ("provision", "solo", "fake", False)
UPGRADE: Ask = ("upgrade", "team", "fake", False)
TEARDOWN: Ask = ("teardown", None, "fake", False)


@pytest.mark.parametrize(
    ("running", "asked", "joined"),
    [
        (PROVISION, PROVISION, True),
        (PROVISION, ("provision", "team", "fake", False), False),  # another tier
        (PROVISION, ("provision", "solo", "docker", False), False),  # another driver
        (PROVISION, ("provision", "solo", "fake", True), False),  # reuse differs
        (("provision", "solo", "fake", True), ("provision", "solo", "fake", True), True),
        (PROVISION, ("upgrade", "solo", "fake", False), False),  # another verb
        (PROVISION, TEARDOWN, False),
        (UPGRADE, UPGRADE, True),
        (UPGRADE, ("upgrade", "team", None, False), True),  # an upgrade compares the tier only
        (UPGRADE, ("upgrade", "studio", "fake", False), False),
        (UPGRADE, PROVISION, False),
        (UPGRADE, TEARDOWN, False),
        (TEARDOWN, TEARDOWN, True),
        (TEARDOWN, ("teardown", None, None, False), True),  # any teardown joins a teardown
        (TEARDOWN, ("teardown", "solo", "other", True), True),
        (TEARDOWN, PROVISION, False),
        (TEARDOWN, UPGRADE, False),
    ],
)
def test_joins_is_the_same_verb_with_the_same_arguments(running: Ask, asked: Ask, joined: bool) -> None:
    assert joins(running, asked) is joined
