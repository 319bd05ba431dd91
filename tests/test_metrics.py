"""The daemon's ``GET /metrics`` (issue 24): what a scrape says after the work it watched, read
with prometheus-client's own parsers, never by matching text.

Most tests drive the app in memory (httpx's ASGI transport, the ``fake`` driver in process);
one runs the real ``hearth serve`` with the real ``hearth-adapter-fake`` (a crash, a restart,
the Unix socket and the TCP listener's token); one puts two hosts on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from hearth import Host
from hearth._server._app import create_app
from tests import helpers
from tests.helpers import left_by_a_dead_host
from tests.test_serve import BOUND, a_site, daemon, over, served, socket_port

#: ``broken``: a provision that fails and keeps its partial work, so a ``failed`` record stays.
TIERS = {**helpers.FAKE_TIERS, "broken": {"fail_at": "provision", "keep_partial": True}}
make_host = functools.partial(helpers.make_host, idle_timeout=None, tiers=TIERS)
#: OpenMetrics' parser (prometheus-client leaves it untyped).
openmetrics_families = cast(Callable[[str], Iterable[Metric]], openmetrics.text_string_to_metric_families)
#: A sample: its name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[Key, float], name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


async def scrape(client: httpx.AsyncClient) -> dict[Key, float]:
    answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(answer.text)


@contextlib.asynccontextmanager
async def api(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(host))
    async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
        yield client


async def test_a_scrape_after_a_lifecycle_counts_what_happened(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        before = await scrape(client)
        assert value(before, "hearth_operations_running") == 0
        assert value(before, "hearth_reconcile_rounds_total", outcome="completed") == 0
        assert not [key for key in before if key[0] == "hearth_workspaces"]  # no record yet
        wait = {"wait": 20}
        made = await client.post(
            "/v1/workspaces", json={"slug": "alpha", "tier": "solo", "driver": "fake"}, params=wait
        )
        assert made.json()["state"] == "succeeded", made.text
        upgraded = await client.post("/v1/workspaces/alpha/upgrade", json={"tier": "team"}, params=wait)
        assert upgraded.json()["state"] == "succeeded", upgraded.text
        gone = await client.delete("/v1/workspaces/alpha", params=wait)
        assert gone.json()["state"] == "succeeded", gone.text
        broken = await client.post(
            "/v1/workspaces", json={"slug": "beta", "tier": "broken", "driver": "fake"}, params=wait
        )
        assert broken.json()["state"] == "failed", broken.text
        again = await client.post(
            "/v1/workspaces", json={"slug": "gamma", "tier": "solo", "driver": "fake"}, params=wait
        )
        assert again.json()["state"] == "succeeded", again.text
        nothing = await client.post(
            "/v1/workspaces", json={"slug": "gamma", "tier": "solo", "driver": "fake"}
        )
        assert nothing.status_code == 200  # nothing to do: no operation runs, none is counted
        scraped = await scrape(client)

    def counted(name: str, **labels: str) -> float | None:
        return value(scraped, name, driver="fake", **labels)

    assert counted("hearth_operations_started_total", verb="provision") == 3
    assert counted("hearth_operations_started_total", verb="upgrade") == 1
    assert counted("hearth_operations_started_total", verb="teardown") == 1
    assert counted("hearth_operations_finished_total", verb="provision", outcome="succeeded") == 2
    assert counted("hearth_operations_finished_total", verb="provision", outcome="failed") == 1
    assert counted("hearth_operations_finished_total", verb="upgrade", outcome="succeeded") == 1
    assert counted("hearth_operations_finished_total", verb="teardown", outcome="succeeded") == 1
    assert counted("hearth_operations_finished_total", verb="upgrade", outcome="failed") is None
    assert counted("hearth_operation_duration_seconds_count", verb="provision") == 3
    assert counted("hearth_operation_duration_seconds_bucket", verb="provision", le="+Inf") == 3
    assert 0 < counted("hearth_operation_duration_seconds_sum", verb="provision") < BOUND  # type: ignore[operator]
    assert value(scraped, "hearth_operations_running") == 0
    # the workspaces, from the store: a zero for every state no record is in
    assert counted("hearth_workspaces", state="ready") == 1
    assert counted("hearth_workspaces", state="failed") == 1
    assert counted("hearth_workspaces", state="tier_torn_down") == 1
    assert counted("hearth_workspaces", state="provisioning") == 0
    # one adapter process served it all (the in-process fake: kept up, never crashed)
    assert counted("hearth_adapter_starts_total") == 1
    assert counted("hearth_adapter_crashes_total") is None
    # the store was timed, reads and writes apart
    reads = value(scraped, "hearth_store_transaction_duration_seconds_count", access="read")
    writes = value(scraped, "hearth_store_transaction_duration_seconds_count", access="write")
    assert reads is not None and writes is not None and reads > 0 and writes >= 5 * 2
    # no label names a slug or an operation
    assert not [key for key in scraped if any(v in ("alpha", "beta", "gamma") for _, v in key[1])]


async def test_a_reconcile_round_counts_what_it_found(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        made = await client.post(
            "/v1/workspaces", json={"slug": "delta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        record = await host.deployment("delta")
        assert made.json()["state"] == "succeeded" and record.state == "ready"
        # a dead host's upgrade left the record transient: the next round settles it
        await left_by_a_dead_host(host, record.model_copy(update={"state": "upgrading"}), "upgrade")
        dry = await client.post("/v1/reconcile", json={"dry_run": True})
        assert dry.status_code == 200, dry.text
        assert value(await scrape(client), "hearth_reconcile_rounds_total", outcome="completed") == 0
        report = (await client.post("/v1/reconcile", json={})).json()
        assert [entry["slug"] for entry in report["resolved"]] == ["delta"], report
        first = await scrape(client)
        assert (await client.post("/v1/reconcile", json={})).json()["resolved"] == []
        second = await scrape(client)
    assert value(first, "hearth_reconcile_rounds_total", outcome="completed") == 1
    assert value(first, "hearth_reconcile_found_total", kind="settled") == 1
    assert value(first, "hearth_reconcile_last_found", kind="settled") == 1
    assert value(first, "hearth_reconcile_found_total", kind="ghost") == 0
    assert value(second, "hearth_reconcile_rounds_total", outcome="completed") == 2
    assert value(second, "hearth_reconcile_found_total", kind="settled") == 1  # summed over the rounds
    assert value(second, "hearth_reconcile_last_found", kind="settled") == 0  # the last round's
    assert value(second, "hearth_reconcile_rounds_total", outcome="failed") == 0


async def test_the_running_gauge_counts_a_slow_provision_until_it_ends(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        started = await client.post("/v1/workspaces", json={"slug": "eps", "tier": "slow", "driver": "fake"})
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        during = await scrape(client)
        assert value(during, "hearth_operations_running") == 1
        assert value(during, "hearth_operations_started_total", verb="provision", driver="fake") == 1
        assert not [key for key in during if key[0] == "hearth_operations_finished_total"]
        for _ in range(200):  # once begun, its record is provisioning
            if (await client.get(location)).json()["state"] == "running":
                break
            await asyncio.sleep(0.05)
        begun = await scrape(client)
        assert value(begun, "hearth_workspaces", state="provisioning", driver="fake") == 1
        assert value(begun, "hearth_operations_running") == 1
        await client.delete(location, params={"reason": "enough"})
        done = await client.get(f"{location}/wait", params={"timeout": 20})
        assert done.json()["state"] == "cancelled", done.text
        after = await scrape(client)
    assert value(after, "hearth_operations_running") == 0
    finished = value(
        after, "hearth_operations_finished_total", verb="provision", driver="fake", outcome="cancelled"
    )
    assert finished == 1


async def test_the_streams_gauge_counts_the_event_streams_served(tmp_path: Path) -> None:
    """A stream's count goes up while it is served and down once its client leaves; the ASGI
    transport buffers whole answers, so the stream is read from a uvicorn on a Unix socket."""
    async with served(tmp_path) as client:
        assert value(await scrape(client), "hearth_event_streams") == 0
        async with client.stream("GET", "/v1/events") as stream:
            assert stream.status_code == 200
            assert value(await scrape(client), "hearth_event_streams") == 1
        for _ in range(100):  # the server sees the client leave a moment later
            if value(await scrape(client), "hearth_event_streams") == 0:
                break
            await asyncio.sleep(0.05)
        assert value(await scrape(client), "hearth_event_streams") == 0


async def test_two_hosts_in_one_process_count_apart(tmp_path: Path) -> None:
    """Each app has a registry of its own: a second one in the process neither clashes with the
    first nor counts its work."""
    async with (
        make_host(tmp_path / "one") as one,
        make_host(tmp_path / "two") as two,
        api(one) as first,
        api(two) as second,
    ):
        made = await first.post(
            "/v1/workspaces", json={"slug": "zeta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        assert made.json()["state"] == "succeeded"
        assert (
            value(await scrape(first), "hearth_operations_started_total", verb="provision", driver="fake")
            == 1
        )
        other = await scrape(second)
        assert value(other, "hearth_operations_started_total", verb="provision", driver="fake") is None
        assert not [key for key in other if key[0] == "hearth_workspaces"]  # another home's store


async def test_openmetrics_is_answered_when_asked_for(tmp_path: Path) -> None:
    async with make_host(tmp_path) as host, api(host) as client:
        answer = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        assert "hearth-seq" not in answer.headers  # not part of the API v1's reads
        names = {family.name for family in openmetrics_families(answer.text)}
    assert {
        "hearth_operations_started",
        "hearth_operations_running",
        "hearth_store_transaction_duration_seconds",
    } <= names


async def test_a_store_that_cannot_be_read_leaves_the_workspaces_out_not_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth._errors import StoreError

    async with make_host(tmp_path) as host, api(host) as client:
        await client.post(
            "/v1/workspaces", json={"slug": "eta", "tier": "solo", "driver": "fake"}, params={"wait": 20}
        )
        assert value(await scrape(client), "hearth_workspaces", state="ready", driver="fake") == 1

        async def broken() -> list[tuple[str, str, int]]:
            raise StoreError("the store is out to lunch")

        monkeypatch.setattr(host, "workspace_counts", broken)
        scraped = await scrape(client)
    assert not [key for key in scraped if key[0] == "hearth_workspaces"]
    assert value(scraped, "hearth_operations_started_total", verb="provision", driver="fake") == 1


# --- the real daemon --------------------------------------------------------------------------------
SETTINGS = """
[tiers.crashy.driver_flags.fake]
crash_at = "provision"
[timeouts]
cancel_grace = 5
drain_grace = 1
"""
TOKEN = "metrics-token-of-enough-length"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with a_site(tmp_path, SETTINGS) as found:
        yield found


@pytest.mark.subprocess
async def test_the_daemon_counts_an_adapter_crash_and_its_restart(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--token-file", str(token)) as served,
    ):
        served.wait_for("serving")
        async with over(site[0] / "hearth.sock") as client:  # the socket needs no token
            wait = {"wait": BOUND}
            for slug, tier, outcome in (
                ("ok1", "solo", "succeeded"),
                ("boom", "crashy", "failed"),
                ("ok2", "solo", "succeeded"),
            ):
                done = await client.post(
                    "/v1/workspaces", json={"slug": slug, "tier": tier, "driver": "fake"}, params=wait
                )
                assert done.json()["state"] == outcome, done.text
            scraped = await scrape(client)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=BOUND) as tcp:
            refused = await tcp.get("/metrics")
            assert refused.status_code == 401 and refused.json()["error"]["kind"] == "unauthorized"
            allowed = await tcp.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code == 200
            assert allowed.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert value(samples(allowed.text), "hearth_adapter_crashes_total", driver="fake") == 1
        assert served.stop() == 0
    assert value(scraped, "hearth_adapter_starts_total", driver="fake") == 2
    assert value(scraped, "hearth_adapter_crashes_total", driver="fake") == 1
    assert value(scraped, "hearth_adapter_restarts_total", driver="fake") == 1
    assert (
        value(scraped, "hearth_operations_finished_total", verb="provision", driver="fake", outcome="failed")
        == 1
    )
    assert (
        value(
            scraped, "hearth_operations_finished_total", verb="provision", driver="fake", outcome="succeeded"
        )
        == 2
    )
    assert value(scraped, "hearth_workspaces", state="ready", driver="fake") == 2
    assert value(scraped, "hearth_workspaces", state="failed", driver="fake") == 1
    # the round the daemon runs at start
    assert (value(scraped, "hearth_reconcile_rounds_total", outcome="completed") or 0) >= 1


# --- replicas ---------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_replicas_on_postgresql_count_their_own_work_and_agree_on_the_workspaces(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        make_host(tmp_path / "one", store_url=pg_url) as one,
        make_host(tmp_path / "two", store_url=pg_url) as two,
        api(one) as first,
        api(two) as second,
    ):
        for slug in ("r1", "r2"):
            made = await first.post(
                "/v1/workspaces", json={"slug": slug, "tier": "solo", "driver": "fake"}, params={"wait": 20}
            )
            assert made.json()["state"] == "succeeded", made.text
        failed = await second.post(
            "/v1/workspaces", json={"slug": "r3", "tier": "broken", "driver": "fake"}, params={"wait": 20}
        )
        assert failed.json()["state"] == "failed", failed.text
        mine, theirs = await scrape(first), await scrape(second)
    for scraped in (mine, theirs):
        assert value(scraped, "hearth_workspaces", state="ready", driver="fake") == 2
        assert value(scraped, "hearth_workspaces", state="failed", driver="fake") == 1
    workspaces = {key: v for key, v in mine.items() if key[0] == "hearth_workspaces"}
    assert workspaces == {key: v for key, v in theirs.items() if key[0] == "hearth_workspaces"}
    assert value(mine, "hearth_operations_started_total", verb="provision", driver="fake") == 2
    assert value(theirs, "hearth_operations_started_total", verb="provision", driver="fake") == 1
    assert (
        value(theirs, "hearth_operations_finished_total", verb="provision", driver="fake", outcome="failed")
        == 1
    )
    assert (
        value(mine, "hearth_operations_finished_total", verb="provision", driver="fake", outcome="failed")
        is None
    )
