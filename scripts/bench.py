"""Benchmarks, each beside a baseline measured in the same run.

- warm ``status`` round trip (p50, p99) against the fake adapter, beside a raw pipe to a
  child that answers each line with plain ``json`` (target: at most 3x the baseline);
- pipelined throughput with 64 requests in flight (target: at least 20,000 calls/s);
- cold start, spawn to handshake done, beside a bare ``python -c pass`` (target: at most 5x);
- jsonrpcserver's JSON Schema request check beside the envelope checked with the public wire model;
- provision + status + teardown of N workspaces through ``Host`` (32 in flight), beside the same
  calls made directly on an in-process ``FakeDriver`` (target: host overhead <= 1 ms per verb at
  the median, and total time growing linearly from 100 to 1,000 workspaces);
- with a Docker engine (``--only docker`` runs just this section): provision to ready and teardown
  through the docker adapter, beside the docker CLI doing the same (network create, volume create,
  run, wait for the port); stop and start to ready through the adapter, beside ``docker stop`` and
  ``docker start`` (until the port answers) of the same container; and an idempotent re-provision
  (targets: no slower than the CLI; re-provision <= 5 % of a provision);
- with a Kubernetes API server (``--only kustomize``): provision to ready, plan of an upgrade,
  stop, start and teardown through the kustomize adapter, beside kubectl doing the same with the
  same objects (``apply --server-side`` + ``rollout status``, ``apply --server-side
  --dry-run=server``, ``scale --replicas=0`` + ``wait --for=delete``, ``scale --replicas=1`` +
  ``rollout status``, ``delete namespace --wait``), and an idempotent re-provision;
- the line codec (pydantic-core JSON) beside the stdlib ``json`` codec it replaced, kept below as
  the baseline: encode + decode of a status request and its response, of a progress notification
  and of a list result of 200 workspaces, and ``LineDecoder.feed`` of 64 lines in one chunk
  (``--only codec`` runs just this section: no adapter, no docker);
- ``hearth ls`` on a store of 100 records beside ``python -c "import pydantic, sqlite3,
  platformdirs"`` (target: <= 1.5x; ``--only cli``);
- event-loop lag while 50 provisions with progress (18 events each over 1.6 s, an in-process
  fake driver) run at once through ``Host`` on a SQLite file: a ticker in the host's loop
  sleeps 5 ms again and again and records how late it wakes (p50, p99), beside the same
  workload with the store's work run on the event loop (``InlineSQLiteStore``, what hearth did
  before issue 11) (target: p99 <= 20 ms);
- cross-process event latency: a child process provisions 20 workspaces with progress on the
  same home while this process's ``Host.watch`` reads the events; ``time.time() - event.at``
  for each (p50, p99), beside the watcher in the producer's own host (target: p50 <= 100 ms).
  ``--only operations`` runs these two sections (after the Host section in the full run).
- ``hearth serve`` (``--only serve``, last in the full run), on the real daemon and the real fake
  adapter: ``hearth status SLUG`` wall time per CLI process through the daemon (warm adapter) on
  the home's socket, and through ``HEARTH_URL=unix://`` (the same socket) and ``http://`` with a
  token (targets: as fast as the home's socket), beside ``--local`` (the host and its adapter
  started in the process), ``docker ps`` and ``python -c pass`` (target: <= 100 ms median
  through the daemon); ``GET /v1/workspaces/{slug}`` round trips over the Unix
  socket and over the TCP listener with its token (keep-alive httpx) beside
  ``Host.deployment`` in process on the same home (p50, p99), over a TLS listener (a second
  daemon, an openssl certificate) beside its socket, and over TCP and the socket while 1,000 idle
  unauthenticated TCP connections are held open (beside the same without them); 50
  provisions at once through the API, each with its own ``/v1/events?slug=`` NDJSON stream, beside
  ``start_provision`` + ``watch`` of the same 50 on an embedded ``Host`` (wall time, p50, p99,
  events received; every provision must succeed and every stream see its final event); and 100
  provisions through the API with 0, 200 and 1,000 ``/v1/events`` streams open and read (issue 20:
  the writers' time, until every stream saw the last event, the daemon's RSS open and after); 20
  provisions followed by the operation's own stream beside 20 followed by the slug's (time from
  the POST to the first and to the final event, p50, p99); and ``GET /metrics`` with 1,000
  workspaces in the daemon's store beside ``GET /v1/health`` on the same keep-alive connection
  (issue 24: a scrape reads the workspaces in one grouped query; target: p50 < 5 ms).
- replicas (``--only replicas``, last in the full run; needs ``HEARTH_TEST_PG_URL``, which
  scripts/bench sets with scripts/lib/postgres.sh; skipped without it, a failure under CI=true):
  1,000 provisions through ``Host`` (the fake driver in process) by three host processes on one
  PostgreSQL database (each its own home, about 11 in flight in each), beside one process (32 in
  flight) on the same store and one on its home's SQLite file (the round of median wall time of
  3 each): wall time, time per verb, the growth from 100 to 1,000 workspaces, the hosts' CPU,
  connections and pool waits; and the latency of events (``time.time() - event.at``) from a
  replica provisioning 100 workspaces to ``Host.watch`` in another process, beside the watcher
  in the producer's own host (target: p50 <= 100 ms across replicas). Each run has a fresh
  schema of its own, dropped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import queue
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx

from hearth import AdapterClient, Deployment, Event, Host, ProvisioningProfile, SQLiteStore, Tier, discover
from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import MemoryConnection, Progress, RequestContext
from hearth_adaptersdk.codes import MAX_MESSAGE_BYTES
from hearth_adaptersdk.transport import LineDecoder, Malformed, decode_line, encode

RAW_CHILD = r"""
import json, sys
read, write, flush = sys.stdin.buffer.readline, sys.stdout.buffer.write, sys.stdout.buffer.flush
while line := read():
    request = json.loads(line)
    write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {
        "state": "ready", "endpoint": "fake://bench", "message": None,
        "observed_at": "2026-01-01T00:00:00Z", "details": {"tier": "solo"}}}).encode() + b"\n")
    flush()
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def raw_baseline(calls: int, pipelined: int) -> tuple[list[float], float]:
    child = subprocess.Popen([sys.executable, "-c", RAW_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    request = {"jsonrpc": "2.0", "method": "status", "params": {"ref": {"workspace_slug": "bench"}}}
    samples = []
    for ident in range(calls):
        started = time.perf_counter()
        child.stdin.write(json.dumps({**request, "id": ident}).encode() + b"\n")
        child.stdin.flush()
        json.loads(child.stdout.readline())
        samples.append(time.perf_counter() - started)
    started = time.perf_counter()
    sent = received = 0
    while received < pipelined:
        while sent < pipelined and sent - received < 64:
            child.stdin.write(json.dumps({**request, "id": sent}).encode() + b"\n")
            sent += 1
        child.stdin.flush()
        json.loads(child.stdout.readline())
        received += 1
    rate = pipelined / (time.perf_counter() - started)
    child.stdin.close()
    child.wait()
    return samples, rate


async def hearth_status(path: Path, calls: int, pipelined: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as data_dir:
        async with await AdapterClient.launch(path, data_dir=data_dir) as client:
            ref = await client.provision("bench", ProvisioningProfile(tier="solo", driver="fake"))
            for _ in range(200):  # warm up
                await client.status(ref)
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                await client.status(ref)
                samples.append(time.perf_counter() - started)
            window = asyncio.Semaphore(64)

            async def one() -> None:
                async with window:
                    await client.status(ref)

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(pipelined)))
            rate = pipelined / (time.perf_counter() - started)
    return samples, rate


async def cold_start(path: Path, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        client = await AdapterClient.launch(path)
        samples.append(time.perf_counter() - started)
        await client.close()
    return samples


def bare_python(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - started)
    return samples


def validation_cost(runs: int) -> tuple[float, float]:
    from jsonrpcserver.main import default_validator

    from hearth_adaptersdk.wire import Request

    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "status",
        "params": {"ref": {"workspace_slug": "bench", "tier": "solo"}},
    }
    started = time.perf_counter()
    for _ in range(runs):
        default_validator(message)
    schema = (time.perf_counter() - started) / runs
    started = time.perf_counter()
    for _ in range(runs):
        Request.model_validate(message)
    envelope = (time.perf_counter() - started) / runs
    return schema, envelope


def import_breakdown(top: int) -> tuple[int, list[tuple[int, str]]]:
    """Import time of the fake adapter: the total, and self time summed by top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import hearth_adapter_fake.__main__"],
        capture_output=True,
        text=True,
        check=True,
    )
    by_package: dict[str, int] = {}
    total = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(own)
        total = max(total, int(cumulative))
    rows = sorted(((micros, package) for package, micros in by_package.items()), reverse=True)
    return total, rows[:top]


VERBS = ("provision", "status", "teardown")


async def _lifecycles(count: int, run_one: object) -> tuple[dict[str, list[float]], float]:
    """Run ``run_one(slug, timings)`` for ``count`` slugs, 32 at a time."""
    timings: dict[str, list[float]] = {verb: [] for verb in VERBS}
    window = asyncio.Semaphore(32)

    async def one(index: int) -> None:
        async with window:
            await run_one(f"w{index}", timings)  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return timings, time.perf_counter() - started


async def _timed(timings: dict[str, list[float]], verb: str, call: object) -> None:
    started = time.perf_counter()
    await call  # type: ignore[misc]
    timings[verb].append(time.perf_counter() - started)


async def through_host(count: int) -> tuple[dict[str, list[float]], float]:
    with tempfile.TemporaryDirectory() as folder:
        async with Host(project_dir=folder, home=Path(folder) / "home") as host:
            await host.provision("warmup", tier="solo", driver="fake")

            async def run_one(slug: str, timings: dict[str, list[float]]) -> None:
                await _timed(timings, "provision", host.provision(slug, tier="solo", driver="fake"))
                await _timed(timings, "status", host.status(slug))
                await _timed(timings, "teardown", host.teardown(slug))

            return await _lifecycles(count, run_one)


async def direct_driver(count: int) -> tuple[dict[str, list[float]], float]:
    with tempfile.TemporaryDirectory() as folder:
        driver = FakeDriver()
        await driver.setup({}, Path(folder))
        profile = ProvisioningProfile(tier="solo", driver="fake")

        def ctx(method: str) -> RequestContext:
            return RequestContext(0, method, lambda *_: None)

        async def run_timed(slug: str, timings: dict[str, list[float]]) -> None:
            started = time.perf_counter()
            ref = await driver.provision(slug, profile, ctx("provision"))
            timings["provision"].append(time.perf_counter() - started)
            await _timed(timings, "status", driver.status(ref, ctx("status")))
            await _timed(timings, "teardown", driver.teardown(ref, ctx("teardown")))

        result = await _lifecycles(count, run_timed)
        await driver.close()
        return result


DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


async def _port_answers(port: int) -> bool:
    """The readiness test the adapter uses: docker-proxy accepts at once, so wait for a server."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        return bool(await asyncio.wait_for(reader.read(1), 0.3))
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        writer.close()


async def docker_cli_lifecycle(url: str, image: str, slug: str) -> tuple[float, float]:
    """The docker CLI doing what the adapter does; returns (to ready, teardown) seconds."""

    def cli(*args: str) -> str:
        return subprocess.run(
            [DOCKER_CLI, "-H", url, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    started = time.perf_counter()
    cli("network", "create", f"bench-{slug}")
    cli("volume", "create", f"bench-{slug}-data")
    cli(
        "run",
        "-d",
        "--name",
        f"bench-{slug}",
        "--network",
        f"bench-{slug}",
        "-v",
        f"bench-{slug}-data:/www",
        "-p",
        "127.0.0.1::8080",
        "--cpus",
        "1",
        "--memory",
        "64m",
        image,
    )
    port = int(cli("port", f"bench-{slug}", "8080/tcp").rsplit(":", 1)[1])
    while not await _port_answers(port):  # noqa: ASYNC110 - polling is what the CLI user does
        await asyncio.sleep(0.2)
    ready = time.perf_counter() - started
    started = time.perf_counter()
    cli("rm", "-f", f"bench-{slug}")
    cli("network", "rm", f"bench-{slug}")
    cli("volume", "rm", f"bench-{slug}-data")
    return ready, time.perf_counter() - started


#: The test image's httpd behind a shell that ends it on SIGTERM: as PID 1 the httpd would ignore
#: SIGTERM, and every stop (the adapter's or ``docker stop``) would only measure the stop timeout.
STOPPABLE = ["sh", "-c", "trap 'kill $!; exit 0' TERM; httpd -f -p 8080 -h /www & wait"]


async def docker_cli_stop_start(url: str, name: str) -> tuple[float, float]:
    """``docker stop`` then ``docker start`` of the container ``name`` (the adapter's own), the
    start timed until its published port answers, as the adapter's readiness rule; seconds."""

    def cli(*args: str) -> str:
        return subprocess.run(
            [DOCKER_CLI, "-H", url, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    started = time.perf_counter()
    cli("stop", name)
    stopped = time.perf_counter() - started
    started = time.perf_counter()
    cli("start", name)
    port = int(cli("port", name, "8080/tcp").splitlines()[0].rsplit(":", 1)[1])
    while not await _port_answers(port):  # noqa: ASYNC110 - polling is what the CLI user does
        await asyncio.sleep(0.2)
    return stopped, time.perf_counter() - started


async def docker_adapter_lifecycles(url: str, image: str, rounds: int) -> dict[str, list[float]]:
    """Provision, re-provision, stop, start (and ``docker stop``/``docker start`` of the same
    container, the baseline) and teardown, through the adapter process."""
    keys = ("provision", "again", "stop", "start", "cli_stop", "cli_start", "teardown")
    times: dict[str, list[float]] = {key: [] for key in keys}
    profile = ProvisioningProfile(
        tier="solo",
        driver="docker",
        resource_caps={"cpu": 1, "memory_mb": 64},
        driver_flags={"image": image, "port": 8080, "data_path": "/www", "command": STOPPABLE},
    )
    async with await AdapterClient.launch(discover("docker").path, config={"url": url}) as client:
        for index in range(rounds):
            slug = f"bench-a{index}"
            started = time.perf_counter()
            ref = await client.provision(slug, profile)
            times["provision"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.provision(slug, profile)
            times["again"].append(time.perf_counter() - started)
            started = time.perf_counter()
            stopped = await client.stop(ref)
            times["stop"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ref = await client.start(stopped)
            times["start"].append(time.perf_counter() - started)
            cli_stop, cli_start = await docker_cli_stop_start(url, f"hearth-{slug}")
            times["cli_stop"].append(cli_stop)
            times["cli_start"].append(cli_start)
            started = time.perf_counter()
            await client.teardown(ref)
            times["teardown"].append(time.perf_counter() - started)
    return times


def docker_section(rounds: int) -> None:
    url, image = os.environ.get("HEARTH_TEST_DOCKER_URL"), os.environ.get("HEARTH_TEST_IMAGE")
    if not url or not image:
        print(f"docker: skipped ({os.environ.get('HEARTH_TEST_DOCKER_SKIP', 'no engine')})")
        return
    adapter = asyncio.run(docker_adapter_lifecycles(url, image, rounds))
    cli = [asyncio.run(docker_cli_lifecycle(url, image, f"c{i}")) for i in range(rounds)]
    cli_ready = statistics.median(r for r, _ in cli)
    cli_down = statistics.median(d for _, d in cli)
    provision = statistics.median(adapter["provision"])
    print(f"docker driver on the real engine ({rounds} rounds, medians), beside the docker CLI:")
    print(f"{'':34}{'adapter':>12}{'docker CLI':>14}{'ratio':>9}  target")
    print(f"{'provision to ready':34}{ms(provision)}{ms(cli_ready):>14}{provision / cli_ready:8.2f}x  <= 1x")
    print(
        f"{'teardown':34}{ms(statistics.median(adapter['teardown']))}{ms(cli_down):>14}"
        f"{statistics.median(adapter['teardown']) / cli_down:8.2f}x  <= 1x"
    )
    for verb in ("stop", "start"):
        mine, theirs = statistics.median(adapter[verb]), statistics.median(adapter[f"cli_{verb}"])
        what = f"{verb} (same container)" + (" to ready" if verb == "start" else "")
        print(f"{what:34}{ms(mine)}{ms(theirs):>14}{mine / theirs:8.2f}x  <= 1x")
    again = statistics.median(adapter["again"])
    print(
        f"{'idempotent re-provision':34}{ms(again)}{'':>14}{again / provision:8.1%}   <= 5 % of a provision"
    )
    print()


# --- the kustomize driver -------------------------------------------------------------------
KUBECTL = shutil.which("kubectl") or "kubectl"


def _kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", kubeconfig, *args],
        input=stdin,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout


def _kustomize_profile(tier: str, cpu: float) -> ProvisioningProfile:
    return ProvisioningProfile(
        tier=tier,
        driver="kustomize",
        resource_caps={"cpu": cpu, "memory_mb": 64},
        driver_flags={"image": "hearth-test/httpd:1", "port": 8080},
    )


async def kustomize_adapter_lifecycles(kubeconfig: str, rounds: int) -> tuple[dict[str, list[float]], str]:
    """Provision to ready, idempotent re-provision, plan of an upgrade, stop (pods gone) and start
    (ready again), teardown, through the adapter process; and the render it applied (its
    ``hearth-render`` Secret), for kubectl."""
    times: dict[str, list[float]] = {
        "provision": [],
        "again": [],
        "plan": [],
        "stop": [],
        "start": [],
        "teardown": [],
    }
    render = ""
    solo, team = _kustomize_profile("solo", 0.5), _kustomize_profile("team", 1)
    config = {"kubeconfig": kubeconfig}
    async with await AdapterClient.launch(discover("kustomize").path, config=config) as client:
        for index in range(rounds):
            slug = f"bench-k{index}"
            started = time.perf_counter()
            ref = await client.provision(slug, solo, timeout=300)
            times["provision"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.provision(slug, solo, timeout=300)
            times["again"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.plan(slug, ref, team, timeout=300)
            times["plan"].append(time.perf_counter() - started)
            if not render:
                render = _kubectl(
                    kubeconfig,
                    "get",
                    "secret",
                    "hearth-render",
                    "-n",
                    f"hearth-{slug}",
                    "-o",
                    "jsonpath={.data.render\\.json}",
                )
            started = time.perf_counter()
            ref = await client.stop(ref, timeout=300)
            times["stop"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ref = await client.start(ref, timeout=300)
            times["start"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.teardown(ref, timeout=300)
            times["teardown"].append(time.perf_counter() - started)
    return times, render


def kubectl_lifecycle(kubeconfig: str, render: str, index: int) -> tuple[float, float, float, float, float]:
    """kubectl doing what the adapter does with the same objects: ``apply --server-side`` and
    ``rollout status`` (to ready), ``apply --server-side --dry-run=server`` (plan), ``scale
    --replicas=0`` and ``wait --for=delete`` of the pods (stop), ``scale --replicas=1`` and
    ``rollout status`` (start), and ``delete namespace --wait`` (teardown); seconds each."""
    namespace = f"bench-kubectl{index}"
    objects = json.loads(base64.b64decode(render))  # the Secret's data
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    document = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, *objects],
        }
    )
    started = time.perf_counter()
    _kubectl(kubeconfig, "apply", "--server-side", "--field-manager", "bench", "-f", "-", stdin=document)
    _kubectl(kubeconfig, "rollout", "status", "-n", namespace, "deployment/workspace", "--timeout=300s")
    ready = time.perf_counter() - started
    started = time.perf_counter()
    _kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--field-manager",
        "bench",
        "--dry-run=server",
        "-f",
        "-",
        stdin=document,
    )
    plan = time.perf_counter() - started
    started = time.perf_counter()
    _kubectl(kubeconfig, "scale", "-n", namespace, "deployment/workspace", "--replicas=0")
    waited = subprocess.run(
        [KUBECTL, "--kubeconfig", kubeconfig, "wait", "-n", namespace, "--for=delete", "pod", "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # the pods may be gone before it looks: kubectl then finds nothing to wait for
    assert waited.returncode == 0 or "no matching resources" in waited.stderr, waited.stderr
    stop = time.perf_counter() - started
    started = time.perf_counter()
    _kubectl(kubeconfig, "scale", "-n", namespace, "deployment/workspace", "--replicas=1")
    _kubectl(kubeconfig, "rollout", "status", "-n", namespace, "deployment/workspace", "--timeout=300s")
    start = time.perf_counter() - started
    started = time.perf_counter()
    _kubectl(kubeconfig, "delete", "namespace", namespace, "--wait", "--cascade=foreground")
    return ready, plan, stop, start, time.perf_counter() - started


def kustomize_section(rounds: int) -> None:
    kubeconfig = os.environ.get("HEARTH_TEST_KUBECONFIG")
    if not kubeconfig:
        print(f"kustomize: skipped ({os.environ.get('HEARTH_TEST_KUBE_SKIP', 'no cluster')})")
        return
    adapter, render = asyncio.run(kustomize_adapter_lifecycles(kubeconfig, rounds))
    cli = [kubectl_lifecycle(kubeconfig, render, i) for i in range(rounds)]
    rows = [
        ("provision to ready", statistics.median(adapter["provision"]), statistics.median(c[0] for c in cli)),
        ("plan (dry-run apply)", statistics.median(adapter["plan"]), statistics.median(c[1] for c in cli)),
        (
            "stop (scaled to 0, pods gone)",
            statistics.median(adapter["stop"]),
            statistics.median(c[2] for c in cli),
        ),
        (
            "start (scaled back, ready)",
            statistics.median(adapter["start"]),
            statistics.median(c[3] for c in cli),
        ),
        (
            "teardown (namespace gone)",
            statistics.median(adapter["teardown"]),
            statistics.median(c[4] for c in cli),
        ),
    ]
    print(f"kustomize driver on a real API server ({rounds} rounds, medians), beside kubectl:")
    print(f"{'':34}{'adapter':>12}{'kubectl':>14}{'ratio':>9}  target")
    for name, ours, theirs in rows:
        print(f"{name:34}{ms(ours)}{ms(theirs):>14}{ours / theirs:8.2f}x  <= 1x")
    again = statistics.median(adapter["again"])
    provision = statistics.median(adapter["provision"])
    print(f"{'idempotent re-provision':34}{ms(again)}{'':>14}{again / provision:8.1%}")
    print()


# --- the line codec -------------------------------------------------------------------------
# The stdlib ``json`` codec that hearth_adaptersdk._codec used before pydantic-core: the baseline.


def _stdlib_refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (non-finite numbers are refused)")


def _stdlib_finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to infinity (non-finite numbers are refused)")
    return value


def stdlib_decode_line(line: bytes) -> Any:
    try:
        value = json.loads(line, parse_constant=_stdlib_refuse_constant, parse_float=_stdlib_finite_float)
    except RecursionError:
        return Malformed(line[:200], "not JSON: nested too deeply")
    except Exception as exc:
        return Malformed(line[:200], f"not JSON: {exc}")
    if not isinstance(value, dict | list):
        return Malformed(line[:200], "not a JSON object")
    return value


def stdlib_encode(message: Any, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError("the message is nested too deeply to encode") from None
    data = text.encode()
    if len(data) > limit:
        raise ValueError(f"a message of {len(data)} bytes exceeds the limit")
    return data + b"\n"


class StdlibLineDecoder:
    """LineDecoder.feed as it was, calling the stdlib decoder."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._scanned = 0

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        out: list[Any] = []
        start = 0
        search_from = self._scanned
        while True:
            end = buffer.find(b"\n", search_from)
            if end < 0:
                break
            if end - start > self._limit:
                raise ValueError("frame too large")
            line = bytes(buffer[start:end])
            start = search_from = end + 1
            if line.strip():
                out.append(stdlib_decode_line(line))
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._limit:
            raise ValueError("frame too large")
        return out


STATUS_REQUEST = {
    "jsonrpc": "2.0",
    "id": 4711,
    "method": "status",
    "params": {"ref": {"workspace_slug": "bench", "tier": "solo", "driver": "fake"}},
}
STATUS_RESPONSE = {
    "jsonrpc": "2.0",
    "id": 4711,
    "result": {
        "state": "ready",
        "endpoint": "fake://bench",
        "message": None,
        "observed_at": "2026-01-01T00:00:00Z",
        "details": {"tier": "solo", "note": "prêt"},
    },
}
PROGRESS = {
    "jsonrpc": "2.0",
    "method": "progress",
    "params": {"request_id": 4711, "message": "pulling image", "fraction": 0.25, "level": "info"},
}
# Over 200 brackets: the new encode reads such a line back to check its depth.
LIST_RESPONSE = {
    "jsonrpc": "2.0",
    "id": 4712,
    "result": [
        {
            "workspace_slug": f"w{i}",
            "tier": "solo",
            "driver": "docker",
            "details": {"container": f"{i:064x}", "ports": [8080, 8443], "load": 0.5},
        }
        for i in range(200)
    ],
}


def best_times(works: tuple[Callable[[], object], ...], number: int, repeat: int = 7) -> list[float]:
    """Seconds per call of each work: the best of ``repeat`` runs of ``number`` calls, the works
    taking turns run by run so that a busy machine weighs on each alike."""
    best = [math.inf] * len(works)
    for _ in range(repeat):
        for index, work in enumerate(works):
            started = time.perf_counter()
            for _ in range(number):
                work()
            best[index] = min(best[index], time.perf_counter() - started)
    return [seconds / number for seconds in best]


def codec_cost(number: int) -> list[tuple[str, float, float]]:
    """(label, pydantic-core codec, stdlib codec) seconds per operation."""
    batch = b"".join(encode(PROGRESS if i % 4 else STATUS_RESPONSE) for i in range(64))
    lines = {
        "request": encode(STATUS_REQUEST)[:-1],
        "response": encode(STATUS_RESPONSE)[:-1],
        "progress": encode(PROGRESS)[:-1],
        "list": encode(LIST_RESPONSE)[:-1],
    }
    for line in lines.values():  # the same bytes and the same messages either way
        assert stdlib_encode(decode_line(line))[:-1] == line and stdlib_decode_line(line) == decode_line(line)
    assert LineDecoder().feed(batch) == StdlibLineDecoder().feed(batch)

    def round_trip(enc: Callable[[Any], bytes], dec: Callable[[bytes], Any]) -> Callable[[], object]:
        def work() -> object:
            dec(enc(STATUS_REQUEST)[:-1])
            return dec(enc(STATUS_RESPONSE)[:-1])

        return work

    def one(message: Any, enc: Callable[[Any], bytes], dec: Callable[[bytes], Any]) -> Callable[[], object]:
        return lambda: dec(enc(message)[:-1])

    def feed(decoder: type[LineDecoder] | type[StdlibLineDecoder]) -> Callable[[], object]:
        return lambda: decoder().feed(batch)

    rows = [
        (
            "status request + response",
            round_trip(encode, decode_line),
            round_trip(stdlib_encode, stdlib_decode_line),
            number,
        ),
        (
            "progress notification",
            one(PROGRESS, encode, decode_line),
            one(PROGRESS, stdlib_encode, stdlib_decode_line),
            number,
        ),
        ("LineDecoder.feed, 64 lines", feed(LineDecoder), feed(StdlibLineDecoder), max(1, number // 40)),
        (
            "list result, 200 workspaces",
            one(LIST_RESPONSE, encode, decode_line),
            one(LIST_RESPONSE, stdlib_encode, stdlib_decode_line),
            max(1, number // 200),
        ),
    ]
    out = []
    for label, new, old, count in rows:
        new_time, old_time = best_times((new, old), count)
        out.append((label, new_time, old_time))
    return out


def codec_section(number: int) -> None:
    rows = codec_cost(number)
    print("line codec on pydantic-core JSON, best of 7 runs, beside the stdlib json codec it replaced:")
    print(f"{'':34}{'codec':>12}{'stdlib json':>14}{'ratio':>9}")
    for label, new, old in rows:
        print(f"{label:34}{new * 1e6:9.2f} us{old * 1e6:11.2f} us{new / old:8.2f}x")
    print()


def protocol_section(path: Path, args: argparse.Namespace) -> None:
    raw_samples, raw_rate = raw_baseline(args.calls, args.pipelined)
    samples, rate = asyncio.run(hearth_status(path, args.calls, args.pipelined))
    starts = asyncio.run(cold_start(path, args.starts))
    bare = bare_python(args.starts)
    schema, envelope = validation_cost(20000)
    raw50, raw99 = percentile(raw_samples, 0.5), percentile(raw_samples, 0.99)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    cold, bare50 = statistics.median(starts), statistics.median(bare)
    print("hearth benchmarks (fake adapter, one run; the baseline of each row is measured here too)")
    print(f"{'':34}{'hearth':>12}{'baseline':>14}{'ratio':>9}  target")
    print(f"{'status round trip p50':34}{ms(p50)}{ms(raw50):>14}{p50 / raw50:8.2f}x  <= 6x")
    print(f"{'status round trip p99':34}{ms(p99)}{ms(raw99):>14}{p99 / raw99:8.2f}x")
    print(
        f"{'pipelined status, 64 in flight':34}{rate:9.0f}/s {raw_rate:11.0f}/s {rate / raw_rate:7.2f}x"
        "  >= 15000/s"
    )
    print(
        f"{'cold start (spawn to handshake)':34}{ms(cold)}{ms(bare50):>14}{cold / bare50:8.2f}x"
        "  no slower than before (377 ms)"
    )
    print(
        f"{'request check: jsonschema vs wire model':34}{schema * 1e6:9.1f} us{envelope * 1e6:11.2f} us"
        f"{schema / envelope:8.0f}x  (per request; the SDK skips jsonschema)"
    )
    print()


def cli_ls(runs: int, records: int) -> tuple[list[float], list[float]]:
    """``hearth ls`` on a store of ``records`` workspaces (no adapter started), beside the import
    baseline the issue names: ``python -c "import pydantic, sqlite3, platformdirs"``."""
    from hearth import Deployment
    from hearth_adaptersdk import utc_now

    hearth = Path(sys.executable).parent / "hearth"
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        now = utc_now()

        async def fill() -> None:
            store = SQLiteStore(home / "hearth.db")
            await store.open()
            for index in range(records):
                await store.save(
                    Deployment(
                        slug=f"w{index:03}",
                        generation=1,
                        tier="solo",
                        driver="fake",
                        state="failed",
                        ref=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
            await store.close()

        asyncio.run(fill())
        command = [str(hearth), "ls", "--home", str(home), "--project", folder]
        baseline = [sys.executable, "-c", "import pydantic, sqlite3, platformdirs"]
        ls_samples: list[float] = []
        base_samples: list[float] = []
        for _ in range(runs):  # alternate, so that a busy machine weighs on both alike
            for argv, samples in ((command, ls_samples), (baseline, base_samples)):
                started = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                samples.append(time.perf_counter() - started)
    return ls_samples, base_samples


def cli_section(runs: int) -> None:
    ls_samples, base = cli_ls(runs, 100)
    ls_median, base_median = statistics.median(ls_samples), statistics.median(base)
    print(f"hearth ls, a store of 100 records, median of {runs} (target: <= 1.5x the import baseline):")
    print(f"{'hearth ls':34}{ms(ls_median)}")
    print(
        f"{'python -c import pydantic, sqlite3, platformdirs':50}{ms(base_median)}"
        f"{ls_median / base_median:8.2f}x"
    )
    print()


# --- operations: the event loop under load, and events across processes ----------------------

P = ParamSpec("P")
R = TypeVar("R")
#: Progress steps per verb of ``ChattyFakeDriver`` (the fake's own ``_work`` makes 4).
CHATTY_STEPS = 16
#: The fake's ``delay`` flag: the verb's time, spread over the steps.
CHATTY_DELAY = 1.6
#: The ticker's sleep; its lag is how late each wake-up comes.
TICK = 0.005


class InlineSQLiteStore(SQLiteStore):
    """The baseline: ``SQLiteStore`` with its work run on the event loop, as hearth did before
    issue 11 (one connection, opened and used on the loop's thread; no store thread)."""

    async def _on_thread(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return self._typed(work, *args, **kwargs)

    async def open(self) -> None:
        if self._db is None:
            try:
                self._typed(self._open)
            except BaseException:
                self._close()
                raise

    async def close(self) -> None:
        self._close()


class ChattyFakeDriver(FakeDriver):
    """The fake driver with more progress: ``CHATTY_STEPS`` events over its ``delay`` (plus the
    fake's first and last), so each provision sends 18 progress events."""

    async def _work(self, ctx: RequestContext, flags: dict[str, Any], verb: str) -> None:
        delay = float(flags.get("delay", 0))
        for step in range(1, CHATTY_STEPS + 1):
            if delay:
                await asyncio.sleep(delay / CHATTY_STEPS)
            ctx.progress(f"{verb}: step {step} of {CHATTY_STEPS}", step / (CHATTY_STEPS + 1))


def chatty_host(folder: str | Path, store: SQLiteStore | None = None) -> Host:
    """A host on ``folder/home`` whose ``fake`` driver runs in process, with the tier ``steps``."""
    return Host(
        project_dir=Path(folder) / "project",
        home=Path(folder) / "home",
        tiers={"steps": Tier("steps", driver_flags={"fake": {"delay": CHATTY_DELAY}})},
        in_process={"fake": lambda: MemoryConnection(ChattyFakeDriver())},
        store=store,
    )


async def _provisions(host: Host, prefix: str, count: int) -> int:
    """``count`` provisions at once, each with an ``on_progress``; the progress events seen."""
    seen = [0]

    def on_progress(_: Progress) -> None:
        seen[0] += 1

    await asyncio.gather(
        *(
            host.provision(f"{prefix}{i}", tier="steps", driver="fake", on_progress=on_progress)
            for i in range(count)
        )
    )
    return seen[0]


async def _ticking(work: Callable[[], Any]) -> tuple[list[float], Any, float]:
    """Run ``work()`` while a ticker in this loop sleeps ``TICK`` again and again; (how late
    each wake-up was, the work's result, its seconds)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            expected = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - expected)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await task
    return lags, result, elapsed


async def loop_lag(count: int, inline: bool) -> tuple[list[float], int, float]:
    """(the ticker's lags, progress events seen, seconds) for ``count`` provisions at once."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "home" / "hearth.db"
        store = InlineSQLiteStore(path) if inline else SQLiteStore(path)
        async with chatty_host(folder, store) as host:
            await host.provision("warmup", tier="solo", driver="fake")  # the adapter is started
            lags, seen, elapsed = await _ticking(lambda: _provisions(host, "w", count))
    return lags, seen, elapsed


async def idle_lag(seconds: float) -> list[float]:
    """The ticker alone: what the loop and the OS timer give with nothing else to do."""
    lags, _, _ = await _ticking(lambda: asyncio.sleep(seconds))
    return lags


def _child_provisions(folder: str, count: int) -> None:
    """The producer of the cross-process benchmark (run in a spawned process)."""

    async def run() -> None:
        async with chatty_host(folder) as host:
            await _provisions(host, "x", count)

    asyncio.run(run())


async def _watch_latencies(host: Host, after: int, count: int, timeout: float) -> list[float]:
    """``time.time() - event.at`` of every event after ``after`` until ``count`` operations
    have finished (bounded by ``timeout``)."""
    latencies: list[float] = []
    finished = 0
    async with asyncio.timeout(timeout):
        async for event in host.watch(after=after):
            latencies.append(time.time() - event.at.timestamp())
            if event.final and event.slug != "warmup":
                finished += 1
                if finished == count:
                    break
    return latencies


async def event_latency(count: int, cross_process: bool, timeout: float = 60.0) -> tuple[list[float], float]:
    """(each event's latency from its writer to ``Host.watch`` here, seconds of the run)."""
    with tempfile.TemporaryDirectory() as folder:
        async with chatty_host(folder) as host:
            await host.provision("warmup", tier="solo", driver="fake")
            after = await host.store.last_seq()
            watcher = asyncio.create_task(_watch_latencies(host, after, count, timeout))
            started = time.perf_counter()
            if not cross_process:
                await _provisions(host, "x", count)
                return await watcher, time.perf_counter() - started
            spawn = multiprocessing.get_context("spawn")
            child = spawn.Process(target=_child_provisions, args=(folder, count))
            child.start()
            joined = asyncio.create_task(asyncio.to_thread(child.join, timeout))
            try:
                await asyncio.wait({watcher, joined}, return_when=asyncio.FIRST_COMPLETED)
                if not watcher.done() and child.exitcode not in (None, 0):
                    raise RuntimeError(f"the producer process exited with code {child.exitcode}")
                latencies = await watcher  # bounded by its own timeout
            finally:
                watcher.cancel()
                await joined
                if child.is_alive():
                    child.terminate()
                    await asyncio.to_thread(child.join)
            if child.exitcode != 0:
                raise RuntimeError(f"the producer process exited with code {child.exitcode}")
            return latencies, time.perf_counter() - started


def operations_section(provisions: int, producers: int, rounds: int) -> None:
    threaded: list[float] = []
    inline: list[float] = []
    seen = inline_seen = 0
    elapsed = inline_elapsed = 0.0
    for _ in range(rounds):  # alternate, so that a busy machine weighs on both alike
        lags, events, seconds = asyncio.run(loop_lag(provisions, inline=False))
        threaded += lags
        seen, elapsed = seen + events, elapsed + seconds / rounds
        lags, events, seconds = asyncio.run(loop_lag(provisions, inline=True))
        inline += lags
        inline_seen, inline_elapsed = inline_seen + events, inline_elapsed + seconds / rounds
    idle = asyncio.run(idle_lag(1.0))
    print(
        f"event-loop lag: {provisions} provisions at once through Host, each with on_progress "
        f"({CHATTY_STEPS + 2} events over {CHATTY_DELAY:g} s, in-process fake), SQLite WAL file,"
    )
    print(f"{rounds} rounds pooled ({len(threaded)} and {len(inline)} wake-ups); a ticker in the host's loop")
    print(
        f"sleeps {TICK * 1000:g} ms and records how late it wakes, beside the same workload with the store's"
    )
    print("work run on the event loop (InlineSQLiteStore, what hearth did before issue 11):")
    print(f"{'':34}{'store thread':>12}{'on the loop':>14}{'ratio':>9}  target")
    for label, fraction, target in (("p50", 0.5, ""), ("p99", 0.99, "p99 <= 20 ms")):
        new, old = percentile(threaded, fraction), percentile(inline, fraction)
        print(f"{'loop lag ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x  {target}")
    print(f"{'loop lag max':34}{ms(max(threaded))}{ms(max(inline)):>14}")
    print(
        f"{'wall time per round':34}{elapsed:9.2f} s {inline_elapsed:11.2f} s"
        f"   ({seen} and {inline_seen} progress events seen)"
    )
    idle50, idle99 = percentile(idle, 0.5), percentile(idle, 0.99)
    print(f"{'idle loop, the ticker alone':34}{ms(idle50)} p50{ms(idle99):>14} p99")
    print()
    cross, cross_elapsed = asyncio.run(event_latency(producers, cross_process=True))
    local, local_elapsed = asyncio.run(event_latency(producers, cross_process=False))
    print(
        f"event latency (time.time() - event.at at Host.watch): a child process provisions "
        f"{producers} workspaces"
    )
    print("with progress on the same home, beside the watcher in the producer's own host:")
    print(f"{'':34}{'other process':>12}{'same host':>14}{'ratio':>9}  target")
    for label, fraction, target in (("p50", 0.5, "p50 <= 100 ms"), ("p99", 0.99, "")):
        new, old = percentile(cross, fraction), percentile(local, fraction)
        print(f"{'event latency ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x  {target}")
    print(
        f"{'events seen, wall time':34}{len(cross):9d}    {len(local):11d}      "
        f"({cross_elapsed:.2f} s with the child's start, {local_elapsed:.2f} s)"
    )
    print()


# --- serve: the daemon's API v1, and the CLI through it ----------------------------------------

#: The fake's ``delay`` on the tier ``steps`` of the concurrent provisions (over its 4 steps).
SERVE_DELAY = 0.2
SERVE_SETTINGS = f"[tiers.steps.driver_flags.fake]\ndelay = {SERVE_DELAY}\n"
#: The bound of every wait of the serve section (seconds).
SERVE_BOUND = 60.0
#: The issue's target: ``hearth status`` through the daemon, median wall time per process.
SERVE_CLI_TARGET = 0.100
#: ``hearth status`` through ``HEARTH_URL`` takes the home socket's path: as fast, give or take
#: this much of the machine's noise.
SERVE_URL_SLACK = 1.10
#: The bearer token of the daemon's TCP listener in the serve section.
SERVE_TOKEN = "a-bench-token-long-enough"
#: The longest path a Unix socket may have.
SUN_PATH_MAX = 107
#: The idle, unauthenticated TCP connections held while a client with the token is timed.
SERVE_IDLE = 1000
#: The workspaces in the daemon's store when a scrape is timed, and the target of its p50.
SCRAPE_WORKSPACES = 1000
SCRAPE_TARGET = 0.005


class ServedDaemon:
    """``hearth serve --home HOME --project PROJECT`` in its own session, its stderr read on a
    thread (its access log must not fill the pipe); stopped by SIGTERM to the pid started here."""

    def __init__(self, home: Path, project: Path, env: dict[str, str], *extra: str) -> None:
        hearth = Path(sys.executable).parent / "hearth"
        self.process = subprocess.Popen(
            [str(hearth), "serve", "--home", str(home), "--project", str(project), *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ended = False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def tail(self, count: int = 10) -> str:
        with self.changed:
            return "\n".join(f"  | {line}" for line in self.lines[-count:])

    def wait_for(self, text: str, bound: float) -> None:
        deadline = time.monotonic() + bound
        with self.changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    why = "ended" if self.ended else f"did not say so within {bound:g} s"
                    raise RuntimeError(f"hearth serve {why} ({text!r} expected); its stderr:\n{self.tail()}")
                self.changed.wait(left)

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the daemon's pid, then wait (SIGKILL to that pid only past the bound);
        (its exit status, seconds to stop)."""
        started = time.perf_counter()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=SERVE_BOUND)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=SERVE_BOUND)
            raise RuntimeError(
                f"hearth serve did not stop within {SERVE_BOUND:g} s of SIGTERM (killed); its stderr:\n"
                f"{self.tail()}"
            ) from None
        finally:
            self.reader.join(SERVE_BOUND)
            if self.process.stderr is not None:
                self.process.stderr.close()
        return code, time.perf_counter() - started


def _uds_client(sock: Path, connections: int = 10) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.AsyncHTTPTransport(uds=str(sock), limits=limits)
    return httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=SERVE_BOUND)


async def _api_provision(sock: Path, slug: str, tier: str) -> None:
    """One provision through the API, waited for (the daemon's adapter is started)."""
    async with _uds_client(sock) as client:
        body = {"slug": slug, "tier": tier, "driver": "fake"}
        made = await client.post("/v1/workspaces", json=body, params={"wait": SERVE_BOUND})
        if made.status_code != 200 or made.json().get("state") != "succeeded":
            raise RuntimeError(
                f"provision of {slug!r} through the daemon: {made.status_code} {made.text[:300]}"
            )


def _free_port() -> int:
    """A free TCP port on the loopback (released before the daemon binds it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _docker_ps() -> tuple[list[str], str | None]:
    """``docker ps`` on the engine scripts/bench started (else the CLI's default), run once; and
    why it cannot be timed, if it cannot."""
    url = os.environ.get("HEARTH_TEST_DOCKER_URL")
    argv = [DOCKER_CLI, *(["-H", url] if url else []), "ps"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return argv, f"no docker CLI ({DOCKER_CLI} not found)"
    except subprocess.TimeoutExpired:
        return argv, "docker ps did not answer within 30 s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        skip = os.environ.get("HEARTH_TEST_DOCKER_SKIP")
        return argv, f"{reason}" + (f" (scripts/bench: {skip})" if skip else "")
    return argv, None


def serve_cli(
    home: Path, project: Path, slug: str, env: dict[str, str], runs: int, *, port: int
) -> tuple[dict[str, list[float]], str | None]:
    """Wall time of ``hearth status SLUG`` per process through the daemon (on the home's socket,
    and through ``HEARTH_URL``: the same socket, and the TCP listener on ``port``) and with
    ``--local``, and of ``docker ps`` and ``python -c pass``, after one warm-up run each, taking
    turns run by run so that a busy machine weighs on each alike; (samples by label, why docker
    is left out)."""
    hearth = str(Path(sys.executable).parent / "hearth")
    through = [hearth, "status", slug, "--home", str(home), "--project", str(project)]
    commands = {
        "daemon": through,
        "url": [hearth, "status", slug],
        "http": [hearth, "status", slug],
        "local": [*through, "--local"],
    }
    envs = {
        "url": {**env, "HEARTH_URL": f"unix://{home / 'hearth.sock'}"},
        "http": {**env, "HEARTH_URL": f"http://127.0.0.1:{port}", "HEARTH_TOKEN": SERVE_TOKEN},
    }
    for label, argv in commands.items():  # the warm-up, which also checks the way each one goes
        done = subprocess.run(
            [*argv, "-v"],
            env=envs.get(label, env),
            capture_output=True,
            text=True,
            timeout=SERVE_BOUND,
            check=False,
        )
        used = "using the daemon at" in done.stderr
        if done.returncode != 0 or used != (label != "local"):
            raise RuntimeError(
                f"{' '.join(argv)} -v: exit {done.returncode}, "
                f"{'went' if used else 'did not go'} through the daemon:\n{done.stderr[-600:]}"
            )
    docker, why = _docker_ps()
    if why is None:
        commands["docker"] = docker
    commands["python"] = [sys.executable, "-c", "pass"]
    subprocess.run(commands["python"], check=True, timeout=SERVE_BOUND)
    samples: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(
                argv,
                env=envs.get(label, env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=SERVE_BOUND,
                check=False,
            )
            samples[label].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr[-600:]}")
    return samples, why


async def serve_round_trips(
    sock: Path, *, port: int, home: Path, project: Path, slug: str, count: int, warmup: int
) -> tuple[list[float], list[float], list[float]]:
    """``GET /v1/workspaces/{slug}`` over the socket and over the TCP listener on ``port`` (with
    the token; keep-alive, decoded to a Deployment), beside ``await host.deployment(slug)`` on a
    Host embedded here on the same home; blocks of 50 of each take turns. (Unix socket seconds,
    TCP seconds, embedded seconds.)"""
    api: list[float] = []
    tcp: list[float] = []
    embedded: list[float] = []
    path = f"/v1/workspaces/{slug}"
    over_tcp_client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {SERVE_TOKEN}"},
        timeout=SERVE_BOUND,
    )
    async with (
        _uds_client(sock) as client,
        over_tcp_client as tcp_client,
        Host(project_dir=project, home=home) as host,
    ):

        async def fetched(through: httpx.AsyncClient) -> Deployment:
            response = await through.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
            return Deployment.model_validate_json(response.content)

        async def over_api() -> Deployment:
            return await fetched(client)

        async def over_tcp() -> Deployment:
            return await fetched(tcp_client)

        async def in_process() -> Deployment:
            return await host.deployment(slug)

        async with asyncio.timeout(SERVE_BOUND):
            for _ in range(warmup):
                await over_api()
                await over_tcp()
                await in_process()
            block = 50
            for first in range(0, count, block):
                for call, samples in ((over_api, api), (over_tcp, tcp), (in_process, embedded)):
                    for _ in range(min(block, count - first)):
                        started = time.perf_counter()
                        record = await call()
                        samples.append(time.perf_counter() - started)
                        if record.slug != slug or record.state != "ready":
                            raise RuntimeError(f"{path}: {record.slug} {record.state}, not {slug} ready")
    return api, tcp, embedded


async def serve_scrape(
    sock: Path, *, home: Path, project: Path, workspaces: int, count: int, warmup: int
) -> tuple[list[float], list[float], int, int]:
    """``GET /metrics`` once the daemon's store holds ``workspaces`` current records (those it
    lacks are written here, through a Host embedded on the same home: states and drivers
    spread), beside ``GET /v1/health`` on the same keep-alive connection, blocks of 50 taking
    turns. The last scrape is parsed (prometheus-client's parser): its ``hearth_workspaces``
    must add up to the store's count. (scrape seconds, health seconds, the scrape's bytes, its
    samples.)"""
    from prometheus_client.parser import text_string_to_metric_families

    from hearth_adaptersdk import utc_now

    states = ("ready", "ready", "ready", "failed", "tier_torn_down", "provisioning")
    drivers = ("fake", "docker", "tfgrid")
    async with Host(project_dir=project, home=home) as host:
        have = len(await host.deployments())
        stamp = utc_now()
        for index in range(max(0, workspaces - have)):
            await host.store.save(
                Deployment(
                    slug=f"scrape-{index}",
                    generation=1,
                    tier="solo",
                    driver=drivers[index % len(drivers)],
                    state=states[index % len(states)],
                    ref=None,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
        total = len(await host.deployments())
    scrape: list[float] = []
    health: list[float] = []
    body = ""
    async with _uds_client(sock, 1) as client, asyncio.timeout(SERVE_BOUND):

        async def get(path: str) -> str:
            response = await client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
            return response.text

        for _ in range(warmup):
            await get("/metrics")
            await get("/v1/health")
        block = 50
        for first in range(0, count, block):
            for path, samples in (("/metrics", scrape), ("/v1/health", health)):
                for _ in range(min(block, count - first)):
                    started = time.perf_counter()
                    text = await get(path)
                    samples.append(time.perf_counter() - started)
                    if path == "/metrics":
                        body = text
    families = list(text_string_to_metric_families(body))
    counted = sum(
        sample.value for family in families if family.name == "hearth_workspaces" for sample in family.samples
    )
    if counted != total:
        raise RuntimeError(f"/metrics counts {counted:g} workspaces, the store holds {total}")
    return scrape, health, len(body.encode()), sum(len(family.samples) for family in families)


async def _timed_gets(client: httpx.AsyncClient, path: str, count: int, warmup: int) -> list[float]:
    """``count`` sequential ``GET path`` on ``client`` after ``warmup`` (seconds each; 200 only)."""
    samples: list[float] = []
    for index in range(warmup + count):
        started = time.perf_counter()
        response = await client.get(path)
        took = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        if index >= warmup:
            samples.append(took)
    return samples


def _self_signed(folder: Path) -> tuple[Path, Path] | str:
    """A certificate for 127.0.0.1 and its key made by the openssl command; why not, if not."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SERVE_BOUND, check=False)
    except FileNotFoundError:
        return "no openssl command to make a certificate"
    if done.returncode != 0:
        return f"openssl req failed: {done.stderr.strip()[-200:]}"
    key.chmod(0o600)
    return cert, key


def serve_tls_round_trips(
    root: Path, project: Path, env: dict[str, str], token: Path, count: int
) -> tuple[list[float], list[float]] | str:
    """``GET /v1/workspaces/{slug}`` over a TLS listener (keep-alive, the token) beside the same
    daemon's socket, on a second daemon with its own home; why not, when there is no certificate."""
    made = _self_signed(root)
    if isinstance(made, str):
        return made
    cert, key = made
    home = root / "tls-home"
    port = _free_port()
    tls = (
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    daemon = ServedDaemon(home, project, env, *tls)
    try:
        daemon.wait_for("serving", SERVE_BOUND)
        sock = home / "hearth.sock"
        asyncio.run(_api_provision(sock, "bench", "solo"))

        async def measure() -> tuple[list[float], list[float]]:
            over_tls = httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {SERVE_TOKEN}"},
                verify=ssl.create_default_context(cafile=str(cert)),
                timeout=SERVE_BOUND,
            )
            async with _uds_client(sock) as local, over_tls as remote, asyncio.timeout(SERVE_BOUND):
                socket_samples = await _timed_gets(local, "/v1/workspaces/bench", count, 50)
                tls_samples = await _timed_gets(remote, "/v1/workspaces/bench", count, 50)
            return socket_samples, tls_samples

        return asyncio.run(measure())
    finally:
        code, _ = daemon.stop()
        if code != 0:
            raise RuntimeError(f"the TLS daemon exited {code} on SIGTERM; its stderr:\n{daemon.tail()}")


async def serve_under_flood(
    sock: Path, port: int, slug: str, count: int, idle: int
) -> tuple[list[float], list[float]]:
    """A legitimate client's ``GET /v1/workspaces/{slug}`` round trips, over the TCP listener
    with the token (a new keep-alive connection) and over the socket, while ``idle`` TCP
    connections that sent half a request head and no token are held open. (TCP, socket.)"""
    raise_open_files_here(idle + 256)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def untouched(reader: asyncio.StreamReader) -> bool:  # nothing answered, not closed
        try:
            await asyncio.wait_for(reader.read(1), 0.05)
        except TimeoutError:
            return True
        return False

    try:
        async with asyncio.timeout(SERVE_BOUND):
            for _ in range(idle):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /v1/workspaces HTTP/1.1\r\nHost: hearth\r\nX-Slow: ")
                held.append((reader, writer))
            await asyncio.gather(*(writer.drain() for _, writer in held))
            tcp_client = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {SERVE_TOKEN}"},
                timeout=SERVE_BOUND,
            )
            async with tcp_client, _uds_client(sock) as local:
                tcp = await _timed_gets(tcp_client, f"/v1/workspaces/{slug}", count, 20)
                socket_samples = await _timed_gets(local, f"/v1/workspaces/{slug}", count, 20)
            still = sum(await asyncio.gather(*(untouched(reader) for reader, _ in held)))
            if still < idle:
                raise RuntimeError(f"only {still} of the {idle} idle connections were held to the end")
    finally:
        for _, writer in held:
            writer.close()
    return tcp, socket_samples


def raise_open_files_here(wanted: int) -> None:
    """This process's soft open-file limit raised to at least ``wanted`` (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


async def _until_final(events: AsyncIterator[Event]) -> tuple[int, Event | None]:
    """(events read, the first final one) from ``events``, which is closed after."""
    seen = 0
    try:
        async for event in events:
            seen += 1
            if event.final:
                return seen, event
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
    return seen, None


async def _ndjson_events(stream: httpx.Response) -> AsyncIterator[Event]:
    async for line in stream.aiter_lines():
        if line.strip():
            yield Event.model_validate_json(line)


#: (seconds of one provision, events its stream saw); the run: (wall seconds, those of each).
Provisioned = tuple[float, int]


def _checked(slug: str, ident: int, state: str, seen: int, final: Event | None) -> None:
    problems = []
    if state != "succeeded":
        problems.append(f"the operation #{ident} ended {state}")
    if final is None:
        problems.append(f"its event stream ended after {seen} events without the final one")
    elif final.operation != ident or final.state != "succeeded":
        problems.append(f"its final event is #{final.operation} {final.state}, not #{ident} succeeded")
    if problems:
        raise RuntimeError(f"{slug}: {'; '.join(problems)}")


async def _all_of(work: list[Any]) -> list[Provisioned]:
    """Every provision, bounded; a failure of any of them fails the run, naming each failure."""
    async with asyncio.timeout(SERVE_BOUND):
        results = await asyncio.gather(*work, return_exceptions=True)
    failures = [
        repr(r) if not isinstance(r, RuntimeError) else str(r)
        for r in results
        if isinstance(r, BaseException)
    ]
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(results)} provisions failed:\n  " + "\n  ".join(failures[:10])
        )
    return [r for r in results if not isinstance(r, BaseException)]


async def api_provisions(sock: Path, count: int, prefix: str) -> tuple[float, list[Provisioned]]:
    """``count`` provisions at once through the API (``POST /v1/workspaces?wait=``), each with its
    own ``GET /v1/events?slug=`` NDJSON stream open first and read until the final event."""
    async with _uds_client(sock, connections=2 * count + 8) as client:

        async def one(slug: str) -> Provisioned:
            body = {"slug": slug, "tier": "steps", "driver": "fake"}
            async with client.stream("GET", "/v1/events", params={"slug": slug}) as stream:
                if stream.status_code != 200:
                    raise RuntimeError(f"{slug}: GET /v1/events answered {stream.status_code}")
                started = time.perf_counter()
                post = asyncio.create_task(
                    client.post("/v1/workspaces", json=body, params={"wait": SERVE_BOUND})
                )
                try:
                    seen, final = await _until_final(_ndjson_events(stream))
                    answered = await post
                finally:
                    if not post.done():
                        post.cancel()
                        with contextlib.suppress(BaseException):
                            await post
                elapsed = time.perf_counter() - started
            if answered.status_code not in (200, 202):
                raise RuntimeError(f"{slug}: POST answered {answered.status_code} {answered.text[:300]}")
            op = answered.json()
            _checked(slug, op["id"], op["state"], seen, final)
            return elapsed, seen

        started = time.perf_counter()
        results = await _all_of([one(f"{prefix}{i}") for i in range(count)])
        return time.perf_counter() - started, results


async def operation_streams(sock: Path, count: int, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``count`` provisions one after another, each followed from its ``POST`` answer by the
    operation's own stream (``/v1/operations/{id}/events``) or by the slug's (``/v1/events?slug=``),
    taking turns: (seconds from the POST to the first event, to the final event) of each."""
    out: dict[str, list[tuple[float, float]]] = {"operation": [], "slug": []}
    async with _uds_client(sock) as client:
        for index in range(2 * count):
            way = "operation" if index % 2 == 0 else "slug"
            slug = f"{prefix}{index}"
            started = time.perf_counter()
            made = await client.post("/v1/workspaces", json={"slug": slug, "tier": "steps", "driver": "fake"})
            if made.status_code != 202:
                raise RuntimeError(f"{slug}: POST answered {made.status_code} {made.text[:300]}")
            ident = made.json()["id"]
            path, params = (
                (f"/v1/operations/{ident}/events", {})
                if way == "operation"
                else ("/v1/events", {"slug": slug})
            )
            first: float | None = None
            async with client.stream("GET", path, params=params) as stream:
                async for event in _ndjson_events(stream):
                    first = first if first is not None else time.perf_counter() - started
                    if event.operation == ident and event.final:
                        break
                else:
                    raise RuntimeError(f"{slug}: {path} ended before the operation's final event")
            if first is None:
                raise RuntimeError(f"{slug}: no event on {path}")
            out[way].append((first, time.perf_counter() - started))
    return out


async def embedded_provisions(
    home: Path, project: Path, count: int, prefix: str
) -> tuple[float, list[Provisioned]]:
    """The baseline: the same provisions on a Host embedded here (``start_provision``, then
    ``watch(slug=)`` until the final event), its adapter started by a warm-up provision."""
    async with Host(project_dir=project, home=home) as host:
        await host.provision(f"{prefix}warmup", tier="solo", driver="fake", timeout=SERVE_BOUND)

        async def one(slug: str) -> Provisioned:
            started = time.perf_counter()
            op = await host.start_provision(slug, tier="steps", driver="fake")
            seen, final = await _until_final(host.watch(slug=slug))
            elapsed = time.perf_counter() - started
            done = await host.operation(op.id)
            _checked(slug, op.id, done.state, seen, final)
            return elapsed, seen

        started = time.perf_counter()
        results = await _all_of([one(f"{prefix}{i}") for i in range(count)])
        return time.perf_counter() - started, results


#: Event streams open during the writers' rows (issue 20: every event made every open stream
#: read the store; 100 operations took 0.33 s with no stream, 6.9 s with 200, 23-44 s with 1,000).
SERVE_STREAMS = (0, 200, 1000)
#: The provisions of each of those rows, one after another.
SERVE_STREAM_OPERATIONS = 100
#: The bound of one of those rows, its streams opened and closed (seconds).
SERVE_STREAMS_BOUND = 180.0


def _rss(pid: int) -> int:
    """The resident memory of process ``pid`` (bytes; 0 where /proc does not say)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _RawStream:
    """One ``GET /v1/events`` NDJSON stream on its own connection to the socket (plain asyncio,
    so that 1,000 of them cost this process little), read as fast as it comes: its lines
    counted, and whether it saw ``until`` (the last provision's final event)."""

    def __init__(self, until: bytes) -> None:
        self.until = until
        self.lines = 0
        self.saw = asyncio.Event()
        self.ended = False
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, sock: Path, after: int) -> None:
        reader, self.writer = await asyncio.open_unix_connection(str(sock))
        self.writer.write(
            f"GET /v1/events?after={after} HTTP/1.1\r\nHost: hearth\r\n"
            "Accept: application/x-ndjson\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"GET /v1/events answered {head[:40]!r}")
        self.task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        while chunk := await reader.read(65536):
            self.lines += (tail[-1:] + chunk).count(b"}\n")  # framing lines end in \r\n, events in }\n
            if self.until in tail + chunk:
                self.saw.set()
            tail = (tail + chunk)[-len(self.until) :]
        if not self.saw.is_set():  # the daemon ended it first (it fell behind)
            self.ended = True
            self.saw.set()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


#: One row: (streams, seconds of the provisions, seconds until every stream saw the last,
#: events each stream read, streams that ended early, daemon RSS with them open and after).
StreamsRow = tuple[int, float, float, int, int, int, int]


async def provisions_with_streams(
    sock: Path, pid: int, home: Path, project: Path, *, streams: int, count: int, prefix: str
) -> StreamsRow:
    """``count`` provisions (tier solo) at once through the API while ``streams`` ``GET
    /v1/events`` NDJSON streams (from the store's last event) are open and read; then every
    stream must see the last one's final event, and they close. The daemon's RSS is read with
    them open, and after."""
    last = f"{prefix}{count - 1}"
    until = f'"slug":"{last}","verb":"provision","kind":"state","state":"succeeded"'.encode()
    opened = [_RawStream(until) for _ in range(streams)]
    async with Host(project_dir=project, home=home) as host:
        after = await host.store.last_seq()
    async with asyncio.timeout(SERVE_STREAMS_BOUND), _uds_client(sock, connections=count + 8) as client:

        async def one(slug: str) -> None:
            body = {"slug": slug, "tier": "solo", "driver": "fake"}
            made = await client.post("/v1/workspaces", json=body, params={"wait": SERVE_BOUND})
            if made.status_code != 200 or made.json().get("state") != "succeeded":
                raise RuntimeError(f"provision of {slug}: {made.status_code} {made.text[:300]}")

        try:
            for first in range(0, streams, 100):  # open them 100 at a time
                await asyncio.gather(*(s.open(sock, after) for s in opened[first : first + 100]))
            started = time.perf_counter()
            await asyncio.gather(*(one(f"{prefix}{i}") for i in range(count - 1)))
            await one(last)  # the last event of all: every stream has read them all once it saw it
            wrote = time.perf_counter() - started
            await asyncio.gather(*(s.saw.wait() for s in opened))
            seen = time.perf_counter() - started
            rss_open = _rss(pid)
        finally:
            await asyncio.gather(*(s.close() for s in opened))
        for _ in range(3):  # the daemon has taken the disconnects by the time it answers again
            await client.get("/v1/health")
        rss_after = _rss(pid)
    ended = sum(s.ended for s in opened)
    return streams, wrote, seen, min((s.lines for s in opened), default=0), ended, rss_open, rss_after


def _print_serve_streams(rows: list[StreamsRow], count: int) -> None:
    print(
        f"{count} provisions (tier solo) through the API (99 at once, then the last) while N GET"
        " /v1/events NDJSON"
    )
    print(
        "streams are open and read (from the last event), beside the same with none (issue 20 found"
        " 0.33 s, 6.9 s and 23-44 s"
    )
    print("for 0, 200 and 1,000 streams, and ~700 MB of RSS after they closed); the daemon's RSS:")
    print(
        f"{'':26}{'provisions':>11}{'ratio':>8}{'all seen':>10}{'events/stream':>15}"
        f"{'RSS open':>10}{'RSS after':>11}"
    )
    alone = rows[0][1] if rows and rows[0][0] == 0 else None
    for streams, wrote, seen, events, ended, rss_open, rss_after in rows:
        ratio = f"{wrote / alone:7.2f}x" if alone else f"{'':8}"
        label = f"with {streams:,} streams open"
        mb = 1024 * 1024
        print(
            f"{label:26}{wrote:9.3f} s{ratio}{seen:8.3f} s{events:15d}"
            f"{rss_open / mb:7.0f} MB{rss_after / mb:8.0f} MB"
            + (f"  ({ended} ended early: behind, resumable)" if ended else "")
        )
    print()


def _print_serve_cli(cli: dict[str, list[float]], docker_why: str | None, runs: int) -> None:
    print(f"hearth status SLUG, wall time per CLI process, {runs} runs after a warm-up, taking turns")
    print("(ratio: the daemon's median over the row's):")
    daemon50 = statistics.median(cli["daemon"])
    print(f"{'':34}{'median':>12}{'p90':>14}{'ratio':>9}  target")
    rows = (
        ("through the daemon (warm adapter)", "daemon"),
        ("HEARTH_URL=unix:// (that socket)", "url"),
        ("HEARTH_URL=http:// + HEARTH_TOKEN", "http"),
        ("embedded (--local)", "local"),
        ("docker ps", "docker"),
        ("python -c pass (the floor)", "python"),
    )
    for label, key in rows:
        if key not in cli:
            print(f"{label:34}   skipped: {docker_why}")
            continue
        median, p90 = statistics.median(cli[key]), percentile(cli[key], 0.9)
        if key == "daemon":
            met = "met" if median <= SERVE_CLI_TARGET else "NOT met"
            target = f"median <= {SERVE_CLI_TARGET * 1000:.0f} ms: {met}"
            print(f"{label:34}{ms(median)}{ms(p90):>14}{'':9}  {target}")
        elif key in ("url", "http"):
            met = "met" if median <= daemon50 * SERVE_URL_SLACK else "NOT met"
            target = f"as fast as the home's socket (<= {SERVE_URL_SLACK:.2f}x its median): {met}"
            print(f"{label:34}{ms(median)}{ms(p90):>14}{daemon50 / median:8.2f}x  {target}")
        else:
            print(f"{label:34}{ms(median)}{ms(p90):>14}{daemon50 / median:8.2f}x")
    print()


def _print_serve_api(api: list[float], tcp: list[float], embedded: list[float]) -> None:
    print(f"GET /v1/workspaces/{{slug}} round trip, {len(api)} sequential after 50 warm-up (httpx keep-alive")
    print("over the Unix socket, and over the loopback TCP listener with the token, decoded to a")
    print("Deployment), beside await host.deployment(slug) on a Host embedded in this process on the")
    print("same home (blocks of 50 taking turns; ratio: the row's over embedded):")
    print(f"{'':34}{'API socket':>12}{'API TCP':>14}{'embedded':>14}{'socket':>9}{'TCP':>9}")
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        new, wire, old = (percentile(s, fraction) for s in (api, tcp, embedded))
        print(
            f"{'round trip ' + label:34}{ms(new)}{ms(wire):>14}{ms(old):>14}"
            f"{new / old:8.2f}x{wire / old:8.2f}x"
        )
    print()


def _print_serve_scrape(scrape: list[float], health: list[float], size: int, samples: int) -> None:
    print(
        f"GET /metrics with {SCRAPE_WORKSPACES:,} workspaces in the daemon's store ({samples} samples, "
        f"{size:,} bytes; the"
    )
    print("workspaces counted in one grouped query), beside GET /v1/health, the liveness probe that")
    print(
        f"reads no store, on the same keep-alive connection over the Unix socket ({len(scrape)} of each "
        f"after 20 warm-up,"
    )
    print(f"blocks of 50 taking turns; target: a scrape under {SCRAPE_TARGET * 1000:g} ms at p50):")
    print(f"{'':34}{'/metrics':>12}{'/v1/health':>14}{'ratio':>9}")
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        new, old = percentile(scrape, fraction), percentile(health, fraction)
        verdict = ""
        if fraction == 0.5:
            verdict = "  ok" if new < SCRAPE_TARGET else f"  over the {SCRAPE_TARGET * 1000:g} ms target"
        print(f"{'round trip ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x{verdict}")
    print()


def _print_serve_edges(
    tls: tuple[list[float], list[float]] | str,
    flood: tuple[list[float], list[float]],
    tcp: list[float],
    api: list[float],
    idle: int,
) -> None:
    if isinstance(tls, str):
        print(f"GET /v1/workspaces/{{slug}} over TLS: not timed ({tls})")
    else:
        local, remote = tls
        print(
            f"GET /v1/workspaces/{{slug}} over a TLS listener (a second daemon, keep-alive, the token), "
            f"{len(remote)} sequential, beside that daemon's socket:"
        )
        print(f"{'':34}{'API TLS':>12}{'API socket':>14}{'ratio':>9}")
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            new, old = percentile(remote, fraction), percentile(local, fraction)
            print(f"{'round trip ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x")
        print()
    over_tcp, over_socket = flood
    print(
        f"the same round trip by a client with the token while {idle:,} idle TCP connections that sent half a"
    )
    print("request head and no token are held open (each is closed by [serve] request_timeout, 30 s),")
    print("beside the rows above without them:")
    print(f"{'':34}{'flooded':>12}{'quiet':>14}{'ratio':>9}")
    for name, loud, quiet in (("TCP", over_tcp, tcp), ("socket", over_socket, api)):
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            new, old = percentile(loud, fraction), percentile(quiet, fraction)
            print(f"{name + ' round trip ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x")
    print()


def _print_operation_streams(followed: dict[str, list[tuple[float, float]]]) -> None:
    count = len(followed["operation"])
    print(f"{count} provisions each way (tier steps), one at a time, followed from the POST's 202 by the")
    print("operation's own stream (GET /v1/operations/{id}/events, which ends after the final event)")
    print("beside the slug's (GET /v1/events?slug=, read until that operation's final event), taking turns;")
    print("seconds from the POST:")
    print(f"{'':34}{'operation':>12}{'slug':>14}{'ratio':>9}")
    for label, index in (("first event", 0), ("final event", 1)):
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            new = percentile([sample[index] for sample in followed["operation"]], fraction)
            old = percentile([sample[index] for sample in followed["slug"]], fraction)
            print(f"{label + ' ' + name:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x")
    print()


def _print_serve_provisions(
    served: tuple[float, list[Provisioned]], alone: tuple[float, list[Provisioned]]
) -> None:
    (served_wall, served_runs), (alone_wall, alone_runs) = served, alone
    count = len(served_runs)
    print(
        f"{count} provisions at once (tier steps: fake delay {SERVE_DELAY:g} s in 4 steps), "
        "each with its own event stream,"
    )
    print("through the API (POST /v1/workspaces?wait= and GET /v1/events?slug= NDJSON), beside")
    print(
        "start_provision + watch(slug=) on a Host embedded in one process (its own home, the same project):"
    )
    print(f"{'':34}{'daemon API':>12}{'embedded':>14}{'ratio':>9}")
    print(
        f"{'wall time, all of them':34}{served_wall:9.3f} s {alone_wall:11.3f} s"
        f"{served_wall / alone_wall:8.2f}x"
    )
    served_times, alone_times = [s for s, _ in served_runs], [s for s, _ in alone_runs]
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        new, old = percentile(served_times, fraction), percentile(alone_times, fraction)
        print(f"{'per provision ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x")
    served_events, alone_events = sum(e for _, e in served_runs), sum(e for _, e in alone_runs)
    print(
        f"{'events received':34}{served_events:9d}    {alone_events:11d}      "
        f"(all {count} succeeded on each side; every stream saw its final event)"
    )
    print()


def serve_section(runs: int, requests: int, provisions: int) -> None:
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("HEARTH_HOME", "HEARTH_URL", "HEARTH_TOKEN"):
        env.pop(name, None)
    root = Path(tempfile.mkdtemp(prefix="hb-serve-"))
    daemon: ServedDaemon | None = None
    try:
        project, home, alone_home = root / "project", root / "home", root / "embedded"
        (project / ".hearth").mkdir(parents=True)
        (project / ".hearth" / "hearth.toml").write_text(SERVE_SETTINGS)
        sock = home / "hearth.sock"
        if len(str(sock)) > SUN_PATH_MAX:
            raise RuntimeError(f"the socket path {sock} is too long: set TMPDIR to a shorter folder")
        token = root / "token"
        token.write_text(SERVE_TOKEN + "\n")
        token.chmod(0o600)
        port = _free_port()
        started = time.perf_counter()
        listen = ("--listen", f"127.0.0.1:{port}", "--token-file", str(token))
        daemon = ServedDaemon(home, project, env, *listen)
        daemon.wait_for("serving", SERVE_BOUND)
        up = time.perf_counter() - started
        asyncio.run(_api_provision(sock, "bench", "solo"))  # the daemon's adapter is warm from here
        cli, docker_why = serve_cli(home, project, "bench", env, runs, port=port)
        api, tcp, embedded = asyncio.run(
            serve_round_trips(
                sock, port=port, home=home, project=project, slug="bench", count=requests, warmup=50
            )
        )
        flood = asyncio.run(serve_under_flood(sock, port, "bench", min(requests, 500), SERVE_IDLE))
        tls = serve_tls_round_trips(root, project, env, token, requests)
        followed = asyncio.run(operation_streams(sock, 20, "f"))
        served = asyncio.run(api_provisions(sock, provisions, "p"))
        alone = asyncio.run(embedded_provisions(alone_home, project, provisions, "p"))
        streams_rows = [
            asyncio.run(
                provisions_with_streams(
                    sock,
                    daemon.process.pid,
                    home,
                    project,
                    streams=streams,
                    count=SERVE_STREAM_OPERATIONS,
                    prefix=f"s{streams}-",
                )
            )
            for streams in SERVE_STREAMS
        ]
        scrapes = asyncio.run(
            serve_scrape(
                sock, home=home, project=project, workspaces=SCRAPE_WORKSPACES, count=requests, warmup=20
            )
        )
        stopping, daemon = daemon, None
        code, down = stopping.stop()
        if code != 0:
            raise RuntimeError(f"hearth serve exited {code} on SIGTERM; its stderr:\n{stopping.tail()}")
    finally:
        if daemon is not None:
            with contextlib.suppress(Exception):
                daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"hearth serve: the daemon (API v1 on a Unix socket and a loopback TCP listener with a token, "
        f"the fake adapter; up in {up:.2f} s, "
        f"stopped by SIGTERM in {down:.2f} s, exit {code})"
    )
    _print_serve_cli(cli, docker_why, runs)
    _print_serve_api(api, tcp, embedded)
    _print_serve_edges(tls, flood, tcp, api, SERVE_IDLE)
    _print_serve_provisions(served, alone)
    _print_operation_streams(followed)
    _print_serve_streams(streams_rows, SERVE_STREAM_OPERATIONS)
    _print_serve_scrape(*scrapes)


# --- replicas: several hosts on one PostgreSQL registry (issue 13) ------------------------------

#: The bound of every wait of the replicas section (seconds): a replica's start, its work, a watch.
REPLICA_BOUND = 180.0
#: Provisions in flight in all: one replica alone runs this many, each of three a third (rounded up).
REPLICA_WINDOW = 32
#: Provisions in flight in the producer of the event-latency runs ("a few at a time").
LATENCY_WINDOW = 4
#: How long a replica process may take to stop once told (SIGTERM, then SIGKILL, to its pid).
REPLICA_STOP = 10.0
SpawnProcess = multiprocessing.context.SpawnProcess


def _replica_host(folder: str | Path, url: str | None) -> Host:
    """A host on ``folder/home`` whose ``fake`` driver runs in process (the adapter costs
    nothing), on the PostgreSQL store ``url`` (None: the home's SQLite file)."""
    return Host(
        project_dir=Path(folder) / "project",
        home=Path(folder) / "home",
        in_process={"fake": lambda: MemoryConnection(FakeDriver())},
        store_url=url,
    )


class _Warnings(logging.Handler):
    """What hearth logs at WARNING and above in a replica process (the store's troubles)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


async def _provision_many(host: Host, name: str, count: int, window: int) -> None:
    """Provisions of ``{name}-0`` .. ``{name}-{count - 1}``, ``window`` in flight."""
    gate = asyncio.Semaphore(window)

    async def one(index: int) -> None:
        async with gate:
            await host.provision(f"{name}-{index}", tier="solo", driver="fake")

    await asyncio.gather(*(one(i) for i in range(count)))


@dataclasses.dataclass(frozen=True)
class ReplicaJob:
    """What one replica process does: ``count`` provisions of ``{name}-N``, ``window`` at a time,
    on a host on ``folder/home`` and the store ``url`` (None: the home's SQLite file)."""

    url: str | None
    folder: str
    name: str
    count: int
    window: int


async def _replica_run(job: ReplicaJob, go: Any, out: Any, warnings: _Warnings) -> None:
    async with asyncio.timeout(2 * REPLICA_BOUND), _replica_host(job.folder, job.url) as host:
        # the warm-up: a burst as wide as the job's, so that the store's pool has grown
        await _provision_many(host, f"warm-{job.name}", job.window, job.window)
        pool = getattr(host.store, "_pool", None)  # PostgresStore's psycopg pool, if it has one
        if pool is not None:
            pool.pop_stats()  # counted from here on
        out.put(("ready", job.name, None))
        if not await asyncio.to_thread(go.wait, REPLICA_BOUND):
            raise TimeoutError(f"no word to start within {REPLICA_BOUND:g} s")
        started, cpu = time.monotonic(), time.process_time()
        await _provision_many(host, job.name, job.count, job.window)
        ended, cpu = time.monotonic(), time.process_time() - cpu
        stats = dict(pool.get_stats()) if pool is not None else {}
    out.put(("done", job.name, (started, ended, stats, warnings.lines, cpu)))


def _replica_worker(job: ReplicaJob, go: Any, out: Any) -> None:
    """One replica, in a process of its own (spawned): it opens its host, provisions a burst of
    warm-up workspaces, says ``ready``, waits for ``go``, does its job and says ``done`` with (start, end)
    on the machine's monotonic clock, its pool's statistics, what hearth logged at WARNING and
    above and the CPU seconds of its job; or ``error`` with what went wrong."""
    for variable in ("HEARTH_HOME", "HEARTH_STORE", "HEARTH_URL"):
        os.environ.pop(variable, None)
    warnings = _Warnings()
    logging.getLogger("hearth").addHandler(warnings)
    try:
        asyncio.run(_replica_run(job, go, out, warnings))
    except BaseException as exc:
        out.put(("error", job.name, f"{type(exc).__name__}: {exc}"))
        raise


def _reports(out: Any, processes: dict[str, SpawnProcess], what: str, deadline: float) -> dict[str, Any]:
    """Each replica's ``what`` report (by name), read from ``out`` until ``deadline`` (on the
    monotonic clock); a replica that says ``error``, or ends without a word, fails the run."""
    got: dict[str, Any] = {}
    silent_since: dict[str, float] = {}
    while len(got) < len(processes):
        now = time.monotonic()
        if now >= deadline:
            missing = sorted(set(processes) - set(got))
            raise RuntimeError(f"replicas {missing} did not say {what!r} within the bound")
        try:
            kind, name, value = out.get(timeout=min(0.5, deadline - now))
        except queue.Empty:
            for name, process in processes.items():
                if name in got or process.exitcode is None:
                    continue
                first = silent_since.setdefault(name, now)
                if process.exitcode != 0 or now - first > 2.0:  # its last words had time to come
                    raise RuntimeError(
                        f"replica {name} (pid {process.pid}) exited with code {process.exitcode} "
                        f"before it said {what!r}"
                    ) from None
            continue
        if kind == "error":
            raise RuntimeError(f"replica {name} failed: {value}")
        if kind == what:
            got[name] = value
    return got


def _stop_replicas(processes: dict[str, SpawnProcess], grace: float) -> None:
    """Wait ``grace`` seconds for the replicas started here to end (after their work), then
    SIGTERM, then SIGKILL, to the pid of any still up."""
    for process in processes.values():
        if process.pid is None:
            continue
        process.join(grace)
        if process.is_alive():
            process.terminate()
            process.join(REPLICA_STOP)
        if process.is_alive():
            process.kill()
            process.join(REPLICA_STOP)


@contextlib.contextmanager
def _pg_schema(base: str) -> Iterator[str]:
    """``base`` narrowed to a fresh schema of its own (as tests/conftest.py's ``pg_url``): the
    store's tables are made in it by the first host, and it is dropped after."""
    import psycopg
    from psycopg import sql

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True, connect_timeout=30) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    joiner = "&" if "?" in base else "?"
    try:
        yield f"{base}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True, connect_timeout=30) as admin:
            admin.execute("SET lock_timeout = '30s'")
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


class _ConnectionPeak:
    """The most client connections the database had at once while in use (sampled every 50 ms
    on a connection of its own, which is not counted)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.peak: int | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _ConnectionPeak:
        if self.url is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(REPLICA_STOP)

    def _sample(self) -> None:
        import psycopg

        assert self.url is not None
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    ).fetchone()
                    self.peak = max(self.peak or 0, int(row[0]) if row else 0)
                    if self._stop.wait(0.05):
                        return
        except psycopg.Error as exc:
            self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclasses.dataclass
class ReplicaRun:
    """One run of provisions on one or more replica processes."""

    counts: list[int]
    #: From the first replica's start to the last one's end (the machine's monotonic clock).
    wall: float
    #: Each replica's own seconds, by name.
    spans: dict[str, float]
    #: The most client connections on the database at once (None: SQLite, or not measured).
    peak: int | None
    #: psycopg-pool's statistics of each replica's store (empty for SQLite).
    pools: dict[str, dict[str, int]]
    #: What the replicas logged at WARNING and above.
    warnings: list[str]
    #: CPU seconds of the replica processes during the provisions (the database's not counted).
    cpu: float

    @property
    def total(self) -> int:
        return sum(self.counts)


def replica_run(base: str | None, counts: list[int], window: int) -> ReplicaRun:
    """``len(counts)`` replica processes (each its own home; on a fresh schema of ``base``, or on
    their own SQLite files when None) provision ``counts[i]`` workspaces each, ``window`` in
    flight in each, all started at once after each opened its host and provisioned a warm-up."""
    spawn = multiprocessing.get_context("spawn")
    go, out = spawn.Event(), spawn.Queue()
    root = Path(tempfile.mkdtemp(prefix="hb-replicas-"))
    processes: dict[str, SpawnProcess] = {}
    finished = False
    schema: contextlib.AbstractContextManager[str | None] = (
        _pg_schema(base) if base is not None else contextlib.nullcontext(None)
    )
    try:
        with schema as url:
            try:
                for index, count in enumerate(counts):
                    name = f"r{index}"
                    processes[name] = spawn.Process(
                        target=_replica_worker,
                        args=(ReplicaJob(url, str(root / name), name, count, window), go, out),
                        name=f"hearth-replica-{name}",
                        daemon=True,
                    )
                    processes[name].start()
                deadline = time.monotonic() + REPLICA_BOUND
                _reports(out, processes, "ready", deadline)
                with _ConnectionPeak(url) as peak:
                    go.set()
                    done = _reports(out, processes, "done", time.monotonic() + REPLICA_BOUND)
                finished = True
            finally:  # before the schema is dropped; at once if something went wrong
                _stop_replicas(processes, REPLICA_STOP if finished else 0)
            codes = {name: process.exitcode for name, process in processes.items()}
            if any(code != 0 for code in codes.values()):
                raise RuntimeError(f"a replica exited badly after its work: exit codes {codes}")
    finally:
        out.close()
        out.join_thread()
        shutil.rmtree(root, ignore_errors=True)
    starts = [value[0] for value in done.values()]
    ends = [value[1] for value in done.values()]
    if peak.error is not None:
        print(f"(replicas: the connection count could not be sampled: {peak.error})")
    return ReplicaRun(
        counts=counts,
        wall=max(ends) - min(starts),
        spans={name: value[1] - value[0] for name, value in sorted(done.items())},
        peak=peak.peak,
        pools={name: value[2] for name, value in sorted(done.items()) if value[2]},
        warnings=[line for value in done.values() for line in value[3]],
        cpu=sum(value[4] for value in done.values()),
    )


async def _replica_latencies(host: Host, after: int, prefix: str, count: int) -> list[float]:
    """``time.time() - event.at`` of each event of the slugs named ``prefix...`` after ``after``,
    until ``count`` of their operations have finished (bounded)."""
    latencies: list[float] = []
    finished = 0
    events = host.watch(after=after)
    try:
        async with asyncio.timeout(REPLICA_BOUND):
            async for event in events:
                if not event.slug.startswith(prefix):
                    continue
                latencies.append(time.time() - event.at.timestamp())
                if event.final:
                    finished += 1
                    if finished == count:
                        break
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
    return latencies


async def replica_event_latency(base: str, count: int, cross: bool) -> tuple[list[float], float]:
    """(each event's latency to ``Host.watch`` in this process, the producer's seconds): a
    producer provisions ``count`` workspaces ``LATENCY_WINDOW`` at a time on a fresh schema of
    ``base``; it is replica A, in a process of its own, when ``cross``, else this host itself."""
    spawn = multiprocessing.get_context("spawn")
    go, out = spawn.Event(), spawn.Queue()
    root = Path(tempfile.mkdtemp(prefix="hb-latency-"))
    processes: dict[str, SpawnProcess] = {}
    finished = False
    try:
        with _pg_schema(base) as url:
            try:
                async with _replica_host(root / "b", url) as host:
                    await host.provision("warm-b", tier="solo", driver="fake")
                    if cross:
                        processes["a"] = spawn.Process(
                            target=_replica_worker,
                            args=(ReplicaJob(url, str(root / "a"), "a", count, LATENCY_WINDOW), go, out),
                            name="hearth-replica-a",
                            daemon=True,
                        )
                        processes["a"].start()
                        deadline = time.monotonic() + REPLICA_BOUND
                        await asyncio.to_thread(_reports, out, processes, "ready", deadline)
                    after = await host.store.last_seq()
                    watcher = asyncio.create_task(_replica_latencies(host, after, "a-", count))
                    try:
                        await asyncio.sleep(0.05)  # the watcher is waiting for the first event
                        if cross:
                            go.set()
                            deadline = time.monotonic() + REPLICA_BOUND
                            latencies, done = await asyncio.gather(
                                watcher, asyncio.to_thread(_reports, out, processes, "done", deadline)
                            )
                            started, ended = done["a"][0], done["a"][1]
                        else:
                            started = time.monotonic()
                            await _provision_many(host, "a", count, LATENCY_WINDOW)
                            ended = time.monotonic()
                            latencies = await watcher
                    finally:
                        watcher.cancel()
                        with contextlib.suppress(BaseException):
                            await watcher
                finished = True
            finally:
                await asyncio.to_thread(_stop_replicas, processes, REPLICA_STOP if finished else 0)
            if any(process.exitcode != 0 for process in processes.values()):
                raise RuntimeError(f"replica A exited with code {processes['a'].exitcode}")
    finally:
        out.close()
        out.join_thread()
        shutil.rmtree(root, ignore_errors=True)
    return latencies, ended - started


def _per(run: ReplicaRun) -> float:
    return run.wall / run.total


def _print_replica_runs(runs: dict[tuple[str, int], ReplicaRun], small: int, big: int, rounds: int) -> None:
    three, one, lite = runs["three", big], runs["one", big], runs["sqlite", big]
    each = ", ".join(str(count) for count in three.counts)
    about = (
        f"replicas: {big} workspaces provisioned through Host, the fake driver in process (the adapter "
        "costs nothing), on three replicas (host processes, each its own home, on one PostgreSQL "
        f"database; {each} provisions, {math.ceil(REPLICA_WINDOW / 3)} in flight in each), beside one "
        f"replica ({REPLICA_WINDOW} in flight) on the same store and one on its home's SQLite file (the "
        f"store's cost); each figure from the round of median wall time of {rounds} (the kinds taking "
        f"turns), on {os.cpu_count()} cores:"
    )
    print(textwrap.fill(about, width=100))
    print(f"{'':34}{'3 replicas':>12}{'1 replica':>14}{'1, SQLite':>14}{'3 / 1':>9}{'1 / SQLite':>12}")
    print(
        f"{'wall time, ' + str(big) + ' provisions':34}{three.wall:9.3f} s {one.wall:11.3f} s "
        f"{lite.wall:11.3f} s {three.wall / one.wall:7.2f}x{one.wall / lite.wall:11.2f}x"
    )
    print(
        f"{'wall time per verb (total / N)':34}{ms(_per(three))}{ms(_per(one)):>14}{ms(_per(lite)):>14}"
        f"{_per(three) / _per(one):8.2f}x{_per(one) / _per(lite):11.2f}x"
    )
    print(
        f"{'wall time, ' + str(small) + ' provisions':34}{runs['three', small].wall:9.3f} s "
        f"{runs['one', small].wall:11.3f} s {runs['sqlite', small].wall:11.3f} s"
    )
    growth = [_per(runs[kind, big]) / _per(runs[kind, small]) for kind in ("three", "one", "sqlite")]
    print(
        f"{'growth ' + str(small) + ' -> ' + str(big) + ' (per workspace)':34}"
        f"{growth[0]:10.2f}x {growth[1]:12.2f}x {growth[2]:12.2f}x   (1.00 = linear)"
    )
    print(
        f"{'CPU of the hosts per provision':34}{ms(three.cpu / three.total)}{ms(one.cpu / one.total):>14}"
        f"{ms(lite.cpu / lite.total):>14}{three.cpu / one.cpu:8.2f}x{one.cpu / lite.cpu:11.2f}x"
    )
    cpu_growth = [
        (runs[kind, big].cpu / big) / (runs[kind, small].cpu / small) for kind in ("three", "one", "sqlite")
    ]
    print(
        f"{'growth of that CPU, ' + str(small) + ' -> ' + str(big):34}"
        f"{cpu_growth[0]:10.2f}x {cpu_growth[1]:12.2f}x {cpu_growth[2]:12.2f}x   (1.00 = linear)"
    )
    spans = ", ".join(f"{seconds:.2f} s" for seconds in three.spans.values())
    print(f"{'each of the 3 replicas, ' + str(big):34}{spans}")
    print(f"{'client connections at most':34}{three.peak or 0:9d}   {one.peak or 0:11d}{'-':>14}")
    for label, run in (("3 replicas", three), ("1 replica", one)):
        if not run.pools:
            continue
        waited = sum(stats.get("requests_queued", 0) for stats in run.pools.values())
        wait_ms = sum(stats.get("requests_wait_ms", 0) for stats in run.pools.values())
        requests = sum(stats.get("requests_num", 0) for stats in run.pools.values())
        errors = sum(
            stats.get(key, 0)
            for stats in run.pools.values()
            for key in ("requests_errors", "connections_errors", "connections_lost", "returns_bad")
        )
        print(
            f"{'pool, ' + label + ' (' + str(big) + ')':34}{requests} connection requests, {waited} "
            f"waited for one ({wait_ms / 1000:.2f} s in all), {errors} errors"
        )
    warnings = [line for run in runs.values() for line in run.warnings]
    if warnings:
        print(f"{'warnings logged by the replicas':34}{len(warnings)}, the first: {warnings[0][:200]}")
    print()


def _print_replica_latency(
    cross: tuple[list[float], float], local: tuple[list[float], float], count: int
) -> None:
    (far, far_seconds), (near, near_seconds) = cross, local
    about = (
        "cross-replica event latency (time.time() - event.at at Host.watch): replica A provisions "
        f"{count} workspaces, {LATENCY_WINDOW} at a time, on the PostgreSQL store; replica B, another "
        "process on the same machine (and clock), watches (woken by LISTEN/NOTIFY), beside the watcher "
        "in A's own host:"
    )
    print(textwrap.fill(about, width=100))
    print(f"{'':34}{'B, across':>12}{'A itself':>14}{'ratio':>9}  target")
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        new, old = percentile(far, fraction), percentile(near, fraction)
        target = ""
        if fraction == 0.5:
            met = "met" if new <= 0.100 else "NOT met"
            target = f"p50 <= 100 ms across replicas: {met}"
        print(f"{'event latency ' + label:34}{ms(new)}{ms(old):>14}{new / old:8.2f}x  {target}".rstrip())
    print(f"{'event latency max':34}{ms(max(far))}{ms(max(near)):>14}")
    print(
        f"{'events seen, producer time':34}{len(far):9d}    {len(near):11d}      "
        f"({far_seconds:.2f} s and {near_seconds:.2f} s of provisions)"
    )
    print()


#: The lease of the takeover measurement (seconds): short, so that a round takes a few seconds.
TAKEOVER_LEASE = 2.0


async def _doomed_run(url: str, folder: str, out: Any) -> None:
    """A replica that starts a long provision and says which, then waits to be killed."""
    tiers = {"slow": Tier("slow", driver_flags={"fake": {"delay": 600}})}
    host = Host(
        project_dir=Path(folder) / "project",
        home=Path(folder) / "home",
        tiers=tiers,
        in_process={"fake": lambda: MemoryConnection(FakeDriver())},
        store_url=url,
    )
    async with asyncio.timeout(REPLICA_BOUND), host:
        op = await host.start_provision("doomed", tier="slow", driver="fake")
        async for event in op.events():
            if event.kind == "state" and event.state == "running":
                break
        out.put(("running", op.id))
        await asyncio.sleep(REPLICA_BOUND)  # until killed


def _doomed_worker(url: str, folder: str, out: Any) -> None:
    for variable in ("HEARTH_HOME", "HEARTH_STORE", "HEARTH_URL"):
        os.environ.pop(variable, None)
    asyncio.run(_doomed_run(url, folder, out))


async def replica_takeover(base: str, rounds: int) -> list[float]:
    """Seconds from the ``kill -9`` of a replica running an operation to the moment another
    replica, which nobody asks anything, has ended it (its lease round finds the lease gone)."""
    spawn = multiprocessing.get_context("spawn")
    taken: list[float] = []
    for _ in range(rounds):
        with _pg_schema(base) as url, tempfile.TemporaryDirectory(prefix="hb-takeover-") as folder:
            for side in ("doomed", "survivor"):
                settings = Path(folder) / side / "project" / ".hearth" / "hearth.toml"
                settings.parent.mkdir(parents=True)
                settings.write_text(f"[timeouts]\nlease = {TAKEOVER_LEASE}\n")
            out = spawn.Queue()
            doomed = spawn.Process(target=_doomed_worker, args=(url, str(Path(folder) / "doomed"), out))
            doomed.start()
            try:
                kind, ident = await asyncio.to_thread(out.get, True, REPLICA_BOUND)
                assert kind == "running"
                async with _replica_host(Path(folder) / "survivor", url) as survivor:
                    assert doomed.pid is not None
                    os.kill(doomed.pid, signal.SIGKILL)
                    killed = time.monotonic()
                    async with asyncio.timeout(REPLICA_BOUND):
                        async for event in survivor.watch(slug="doomed"):
                            if event.operation == ident and event.final:
                                break
                    taken.append(time.monotonic() - killed)
            finally:
                if doomed.is_alive():
                    doomed.kill()
                doomed.join(REPLICA_STOP)
                out.close()
    return taken


def _print_takeover(taken: list[float]) -> None:
    bound = TAKEOVER_LEASE + 1.0
    print(
        f"takeover: kill -9 of the replica running an operation, to another replica (asked nothing,\n"
        f"its lease round runs every {TAKEOVER_LEASE / 3:.2f} s) ending it; lease {TAKEOVER_LEASE:g} s, "
        f"{len(taken)} rounds:"
    )
    print(
        f"  median {statistics.median(taken):.2f} s, max {max(taken):.2f} s; target: within the lease "
        f"plus a second ({bound:g} s): {'met' if max(taken) <= bound else 'NOT met'}"
    )
    print()


def replicas_section(workspaces: int, events: int, rounds: int) -> None:
    base = os.environ.get("HEARTH_TEST_PG_URL")
    why = None if base else os.environ.get("HEARTH_TEST_PG_SKIP", "HEARTH_TEST_PG_URL is not set")
    if base:
        try:
            import psycopg  # noqa: F401 - the store's extra: hearth[postgresql]
        except ImportError as exc:
            why = f"the postgresql extra is not installed ({exc})"
    if why is not None or base is None:
        if os.environ.get("CI") == "true":
            raise SystemExit(f"replicas: no PostgreSQL ({why}); CI needs it for this benchmark")
        print(f"replicas: skipped ({why})")
        print()
        return
    small, big = max(3, workspaces // 10), workspaces
    measured: dict[tuple[str, int], list[ReplicaRun]] = {}
    for size in [small] * rounds + [big] * rounds:  # the three kinds take turns, run by run
        thirds = [size // 3 + (1 if index < size % 3 else 0) for index in range(3)]
        for kind, url, counts, window in (
            ("three", base, thirds, math.ceil(REPLICA_WINDOW / 3)),
            ("one", base, [size], REPLICA_WINDOW),
            ("sqlite", None, [size], REPLICA_WINDOW),
        ):
            measured.setdefault((kind, size), []).append(replica_run(url, counts, window))
    runs = {key: sorted(done, key=lambda run: run.wall)[len(done) // 2] for key, done in measured.items()}
    _print_replica_runs(runs, small, big, rounds)
    cross = asyncio.run(replica_event_latency(base, events, cross=True))
    local = asyncio.run(replica_event_latency(base, events, cross=False))
    _print_replica_latency(cross, local, events)
    _print_takeover(asyncio.run(replica_takeover(base, max(rounds, 3))))


def ms(value: float) -> str:
    return f"{value * 1000:8.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="sequential round trips")
    parser.add_argument("--pipelined", type=int, default=30000, help="calls in the throughput run")
    parser.add_argument("--starts", type=int, default=10, help="cold starts")
    parser.add_argument("--workspaces", type=int, default=1000, help="workspaces through Host")
    parser.add_argument("--docker-rounds", type=int, default=5, help="docker lifecycles per side")
    parser.add_argument("--codec-calls", type=int, default=20000, help="calls per codec timing run")
    parser.add_argument("--cli-runs", type=int, default=21, help="runs of hearth ls and its baseline")
    parser.add_argument("--provisions", type=int, default=50, help="provisions at once in the loop-lag run")
    parser.add_argument("--lag-rounds", type=int, default=3, help="rounds of the loop-lag run per store")
    parser.add_argument("--producers", type=int, default=20, help="provisions in the event-latency runs")
    parser.add_argument("--serve-runs", type=int, default=15, help="runs of each CLI command in serve")
    parser.add_argument("--serve-requests", type=int, default=500, help="API round trips in serve")
    parser.add_argument("--serve-provisions", type=int, default=50, help="provisions at once in serve")
    parser.add_argument("--replica-workspaces", type=int, default=1000, help="provisions in replicas")
    parser.add_argument("--replica-events", type=int, default=100, help="provisions in the latency runs")
    parser.add_argument("--replica-rounds", type=int, default=3, help="rounds of each replicas run")
    parser.add_argument(
        "--only",
        choices=["codec", "cli", "protocol", "operations", "serve", "replicas", "kustomize", "docker"],
        help="run one section only (no docker section, unless it is the one)",
    )
    args = parser.parse_args()
    if args.only is not None:
        sections = {
            "codec": lambda: codec_section(args.codec_calls),
            "cli": lambda: cli_section(args.cli_runs),
            "protocol": lambda: protocol_section(discover("fake").path, args),
            "operations": lambda: operations_section(args.provisions, args.producers, args.lag_rounds),
            "serve": lambda: serve_section(args.serve_runs, args.serve_requests, args.serve_provisions),
            "replicas": lambda: replicas_section(
                args.replica_workspaces, args.replica_events, args.replica_rounds
            ),
            "kustomize": lambda: kustomize_section(args.docker_rounds),
            "docker": lambda: docker_section(args.docker_rounds),
        }
        sections[args.only]()
        return
    path = discover("fake").path

    protocol_section(path, args)
    _, host_small_total = asyncio.run(through_host(args.workspaces // 10))
    host_big, host_big_total = asyncio.run(through_host(args.workspaces))
    direct_big, direct_big_total = asyncio.run(direct_driver(args.workspaces))

    small, big = args.workspaces // 10, args.workspaces
    print(f"{big} workspaces through Host (provision + status + teardown, 32 in flight), beside the")
    print("same calls on an in-process FakeDriver (no host, no process, no store):")
    print(f"{'':34}{'Host p50':>12}{'direct p50':>14}{'overhead':>12}  target")
    for verb in VERBS:
        host50 = statistics.median(host_big[verb])
        direct50 = statistics.median(direct_big[verb])
        print(
            f"{verb + ' (latency under load)':34}{ms(host50)}{ms(direct50):>14}"
            f"{ms(host50 - direct50):>12}  overhead <= 1 ms"
        )
    per_small, per_big = host_small_total / small, host_big_total / big
    per_verb, direct_per_verb = per_big / len(VERBS), direct_big_total / big / len(VERBS)
    print(
        f"{'wall time per verb (total / 3N)':34}{ms(per_verb)}{ms(direct_per_verb):>14}"
        f"{ms(per_verb - direct_per_verb):>12}  overhead <= 1 ms"
    )
    print(
        f"{'growth ' + str(small) + ' -> ' + str(big) + ' workspaces':34}"
        f"{host_small_total:9.2f} s -> {host_big_total:.2f} s: {per_big / per_small:.2f}x the "
        "time per workspace (1.00 = linear)"
    )
    print()
    operations_section(args.provisions, args.producers, args.lag_rounds)
    codec_section(args.codec_calls)
    cli_section(args.cli_runs)
    docker_section(args.docker_rounds)
    kustomize_section(args.docker_rounds)
    total, rows = import_breakdown(10)
    print(
        f"import time of the fake adapter: {total / 1000:.1f} ms under python -X importtime "
        "(which inflates it); own time by package:"
    )
    for micros, name in rows:
        print(f"  {micros / 1000:8.1f} ms  {name}")
    print()
    serve_section(args.serve_runs, args.serve_requests, args.serve_provisions)
    replicas_section(args.replica_workspaces, args.replica_events, args.replica_rounds)


if __name__ == "__main__":
    main()
