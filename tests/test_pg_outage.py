"""A PostgreSQL outage: while the database is down every call fails with ``store_error`` within
``[timeouts] store``; once it is back the host uses it again within seconds, its pool handing
out no connection the outage broke, and the listener that wakes watchers reconnects.

Each test stops and starts a cluster of its own (``private_pg``), never the suite's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from hearth import Host, StoreError
from hearth._store._postgres import RECONNECT_GIVE_UP, PostgresStore
from tests.conftest import PrivateCluster
from tests.helpers import make_host

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(60)]

#: ``[timeouts] store`` in these tests; the pool's own default was 30 s.
WAIT = 1.0
#: Far below the old 30 s: a call that waits for the pool's default fails the test here.
FAILS_WITHIN = 10.0
#: How long the host may take to use the database again once it is back (the pool once backed off
#: to 8 s, 16 s, ... between attempts: 7 s after this outage ended).
RECOVERS_WITHIN = 5.0


def host_on(tmp_path: Path, url: str) -> Host:
    settings = tmp_path / "project" / ".hearth"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "hearth.toml").write_text(f"[timeouts]\nstore = {WAIT}\n")
    return make_host(tmp_path, store_url=url, idle_timeout=None)


async def until_it_answers(host: Host) -> None:
    """Ask until a read succeeds, within ``RECOVERS_WITHIN``; each failure is a ``store_error``."""
    async with asyncio.timeout(RECOVERS_WITHIN):
        while True:
            try:
                await host.deployments()
                return
            except StoreError:
                await asyncio.sleep(0.1)


async def test_calls_fail_fast_while_the_database_is_down_and_work_again_once_it_is_back(
    tmp_path: Path, private_pg: PrivateCluster
) -> None:
    async with host_on(tmp_path, private_pg.url) as host:
        await host.provision("before", tier="solo", driver="fake")
        await host.ready()
        private_pg.stop()
        for call in (host.deployments, lambda: host.deployment("before"), host.ready):
            async with asyncio.timeout(FAILS_WITHIN):
                with pytest.raises(StoreError) as failed:
                    await call()
            assert failed.value.kind == "store_error"
            assert "cannot be used" in str(failed.value) or "did not answer" in str(failed.value)
        private_pg.start()
        await until_it_answers(host)
        await host.provision("after", tier="solo", driver="fake")
        await host.ready()
        assert [d.slug for d in await host.deployments()] == ["after", "before"]


async def test_a_long_outage_is_survived_as_a_short_one(tmp_path: Path, private_pg: PrivateCluster) -> None:
    """The pool does not give up for good after its reconnection attempts fail: an outage
    longer than them ends as a short one does."""
    async with host_on(tmp_path, private_pg.url) as host:
        await host.provision("before", tier="solo", driver="fake")
        private_pg.stop()
        with pytest.raises(StoreError):
            async with asyncio.timeout(FAILS_WITHIN):
                await host.deployments()
        await asyncio.sleep(RECONNECT_GIVE_UP + 1)  # the outage outlasts the pool's attempts
        with pytest.raises(StoreError):
            async with asyncio.timeout(FAILS_WITHIN):
                await host.deployments()
        private_pg.start()
        await until_it_answers(host)
        await host.provision("after", tier="solo", driver="fake")


async def test_the_listener_that_wakes_watchers_reconnects_after_an_outage(
    tmp_path: Path, private_pg: PrivateCluster
) -> None:
    store = PostgresStore(private_pg.url, connect_timeout=WAIT)
    await store.open()
    try:
        await store.wait_change(0.01)  # listening
        private_pg.stop()
        private_pg.start()
        waking = asyncio.create_task(store.wait_change(60.0))
        async with (
            asyncio.timeout(FAILS_WITHIN),
            await psycopg.AsyncConnection.connect(private_pg.url, autocommit=True) as other,
        ):
            while not waking.done():  # a write elsewhere notifies; the first may come before LISTEN
                await other.execute("NOTIFY hearth_events")
                await asyncio.wait([waking], timeout=0.2)
        await waking
    finally:
        await store.close()
