"""``hearth.HostAPI`` (issue 19): ``Host`` and ``RemoteHost`` offer one surface.

mypy checks both classes against the Protocol (``_both_are_host_apis``); the signatures are
compared member by member; and the calls that differed answer alike on one store: ``list()``,
``on_progress`` on ``start_*``, and ``tiers()``, awaited on both.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import hearth._remote
from hearth import Host, HostAPI, InvalidInput, Progress, RemoteHost
from hearth._lifecycle._host import Tiers
from tests.test_remote import BOUND, daemon

CONSOLE = Path(__file__).resolve().parent.parent / "examples" / "console" / "app.py"


def _both_are_host_apis(tmp_path: Path) -> builtins.list[HostAPI]:
    """What mypy checks: each host is a ``HostAPI`` as it is (no cast, no ignore)."""
    host: HostAPI = Host(project_dir=tmp_path / "project", home=tmp_path / "home")
    remote: HostAPI = RemoteHost(socket=tmp_path / "nowhere.sock")
    return [host, remote]


def _members() -> builtins.list[str]:
    found = vars(HostAPI).items()
    return sorted(name for name, value in found if not name.startswith("_") and callable(value))


def test_each_host_is_a_host_api(tmp_path: Path) -> None:
    host, remote = _both_are_host_apis(tmp_path)
    assert isinstance(host, Host) and isinstance(remote, RemoteHost)
    assert host.interruptions == [] and remote.interruptions == []


@pytest.mark.parametrize("name", _members())
def test_host_and_remote_host_have_the_protocols_signature(name: str) -> None:
    """Names, kinds, defaults and annotations of the parameters, coroutine function or not, and
    the return annotation: the same on the Protocol and both hosts (``Host.tiers()`` returns its
    ``Tiers``, a list that can be awaited)."""
    wanted = getattr(HostAPI, name)
    expected = inspect.signature(wanted)
    for cls in (Host, RemoteHost):
        member = getattr(cls, name)
        found = inspect.signature(member)
        assert [(p.name, p.kind, p.default, p.annotation) for p in found.parameters.values()] == [
            (p.name, p.kind, p.default, p.annotation) for p in expected.parameters.values()
        ], f"{cls.__name__}.{name}{found} is not HostAPI.{name}{expected}"
        assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(wanted), (cls, name)
        if (cls, name) == (Host, "tiers"):
            assert found.return_annotation == "Tiers" and issubclass(Tiers, builtins.list)
            assert hasattr(Tiers, "__await__")
        else:
            assert found.return_annotation == expected.return_annotation, (cls, name)


def test_every_method_both_hosts_share_is_in_the_protocol() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(Host) & public(RemoteHost) == set(_members())
    assert "interruptions" in HostAPI.__annotations__


async def test_remote_list_is_host_list_on_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hearth._remote, "PAGE", 2)  # three pages for five workspaces
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        assert await remote.list() == [] == await host.list()
        for slug in ("a1", "a2", "a3", "a4", "a5"):
            await remote.provision(slug, tier="solo", driver="fake")
        await remote.teardown("a3")
        listed = await remote.list()
        assert listed == await host.list()
        assert [(r.workspace_slug, r.last_status) for r in listed] == [
            ("a1", "ready"),
            ("a2", "ready"),
            ("a3", "tier_torn_down"),
            ("a4", "ready"),
            ("a5", "ready"),
        ]


async def _progress_of_a_provision(api: HostAPI, slug: str) -> builtins.list[Progress]:
    """The progress ``on_progress`` (a coroutine function) is given for a provision started
    with ``start_provision``, up to the last step."""
    seen: builtins.list[Progress] = []
    last = asyncio.Event()

    async def listener(progress: Progress) -> None:
        seen.append(progress)
        if progress.message == "provision: step 4 of 4":
            last.set()

    op = await api.start_provision(slug, tier="brisk", driver="fake", on_progress=listener)
    assert not op.finished  # brisk takes a second: the progress comes while it runs
    ref = await op.result(timeout=BOUND)
    assert ref is not None and ref.workspace_slug == slug
    await asyncio.wait_for(last.wait(), BOUND)
    return seen


async def test_on_progress_of_start_provision_on_either_host(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        local = await _progress_of_a_provision(host, "near")
        relayed = await _progress_of_a_provision(remote, "far")
    steps = [f"provision: step {n} of 4" for n in range(1, 5)]
    assert [p.message for p in local if "step" in p.message] == steps
    assert [p.message for p in relayed if "step" in p.message] == steps
    assert [p.fraction for p in relayed] == [p.fraction for p in local]


async def test_on_progress_of_a_slow_provision_comes_while_it_runs_and_ends_with_the_client(
    tmp_path: Path,
) -> None:
    seen: builtins.list[Progress] = []
    first = asyncio.Event()

    def listener(progress: Progress) -> None:  # a plain function this time
        seen.append(progress)
        first.set()

    async with daemon(tmp_path) as (sock, host):
        async with RemoteHost(sock) as remote:
            op = await remote.start_provision("slow-one", tier="slow", driver="fake", on_progress=listener)
            await asyncio.wait_for(first.wait(), BOUND)
            assert seen[0].message == "creating workspace slow-one"
            assert not (await remote.operation(op.id)).finished  # 60 s of work: still running
            (relaying,) = remote._relays
        assert relaying.done() and not remote._relays  # closing the client ended the relay
        running = await host.operation(op.id)
        await running.cancel(reason="the test is over")
        assert (await running.wait(timeout=BOUND)).state == "cancelled"


async def test_a_listener_that_raises_is_logged_and_still_called(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: builtins.list[str] = []
    last = asyncio.Event()

    def listener(progress: Progress) -> None:
        calls.append(progress.message)
        if progress.message == "provision: step 4 of 4":
            last.set()
        raise RuntimeError("the listener's own bug")

    async with daemon(tmp_path) as (sock, _), RemoteHost(sock) as remote:
        with caplog.at_level(logging.ERROR, logger="hearth"):
            op = await remote.start_provision("noisy", tier="brisk", driver="fake", on_progress=listener)
            await op.result(timeout=BOUND)
            await asyncio.wait_for(last.wait(), BOUND)
    assert calls[0] == "creating workspace noisy" and len(calls) >= 5
    assert [r.getMessage() for r in caplog.records].count("an on_progress callback raised") == len(calls)


async def test_tiers_are_awaited_on_both_and_the_old_use_warns_once(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        awaited = await host.tiers()
        assert type(awaited) is builtins.list
        assert {"solo", "team", "slow", "brisk"} <= {tier.name for tier in awaited}
        assert await remote.tiers() == awaited
        old = host.tiers()
        with pytest.warns(DeprecationWarning, match=r"await host\.tiers\(\)") as caught:
            names = [tier.name for tier in old]
        assert len(caught) == 1 and names == [tier.name for tier in awaited]
        # once: more of the old use warns no more (a warning would fail the test here)
        assert len(old) == len(names) and old[0].name == names[0] and old[0] in old


def _console() -> ModuleType:
    """examples/console/app.py, loaded as a module of its own."""
    spec = importlib.util.spec_from_file_location("hearth_console_example", CONSOLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_console_example_runs_on_a_remote_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console is written against ``HostAPI``: with ``HEARTH_URL`` each worker is a
    ``RemoteHost`` on the daemon, and the same routes answer (tests/test_console_example.py
    runs it on ``Host``)."""
    console = _console()
    async with daemon(tmp_path) as (sock, host):
        monkeypatch.setenv("HEARTH_URL", f"unix://{sock}")
        async with console.lifespan(console.app):
            assert isinstance(console.app.state.host, RemoteHost)
            transport = httpx.ASGITransport(app=console.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
                about = (await client.get("/")).json()
                assert about["worker"] == host.owner
                assert "brisk" in {tier["name"] for tier in about["tiers"]}
                started = await client.post(
                    "/workspaces", json={"slug": "via", "tier": "solo", "driver": "fake"}
                )
                assert started.status_code == 202 and started.headers["x-hearth-worker"] == host.owner
                done = (
                    await client.get(f"/operations/{started.json()['id']}", params={"wait": BOUND})
                ).json()
                assert done["state"] == "succeeded"
                listed = (await client.get("/workspaces")).json()
                assert [(d["slug"], d["state"]) for d in listed] == [("via", "ready")]


def _calls_with_a_timeout(api: HostAPI, bad: object) -> builtins.list[Callable[[], Awaitable[object]]]:
    """Every call of the API that takes a ``timeout``, given ``bad`` (each made only when called)."""
    t: Any = bad
    return [
        lambda: api.provision("t1", tier="solo", driver="fake", timeout=t),
        lambda: api.start_provision("t1", tier="solo", driver="fake", timeout=t),
        lambda: api.status("t1", timeout=t),
        lambda: api.plan("t1", tier="solo", driver="fake", timeout=t),
        lambda: api.reconcile(timeout=t),
        lambda: api.adopt("t1", driver="fake", tier="solo", timeout=t),
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0, -1, True, "5"])
async def test_a_bad_timeout_is_invalid_input_on_either_host_before_any_work(
    tmp_path: Path, bad: object
) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        for api in (host, remote):
            for call in _calls_with_a_timeout(api, bad):
                with pytest.raises(InvalidInput, match="timeout must be a positive number of seconds"):
                    await call()
        assert await host.operations() == []  # nothing was started


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.5, 2**63])
async def test_a_bad_operation_id_is_invalid_input_on_either_host(tmp_path: Path, bad: object) -> None:
    async with daemon(tmp_path) as (sock, host), RemoteHost(sock) as remote:
        for api in (host, remote):
            with pytest.raises(InvalidInput, match="is not an operation id"):
                await api.operation(bad)  # type: ignore[arg-type]
