"""Benchmarks, each beside a baseline measured in the same run.

- warm ``status`` round trip (p50, p99) against the fake adapter, beside a raw pipe to a
  child that answers each line with plain ``json`` (target: at most 3x the baseline);
- pipelined throughput with 64 requests in flight (target: at least 20,000 calls/s);
- cold start, spawn to handshake done, beside a bare ``python -c pass`` (target: at most 5x);
- jsonrpcserver's JSON Schema request check beside the envelope checked with the public wire model;
- provision + status + teardown of N workspaces through ``Host`` (32 in flight), beside the same
  calls made directly on an in-process ``FakeDriver`` (target: host overhead <= 1 ms per verb at
  the median, and total time growing linearly from 100 to 1,000 workspaces);
- with a Docker engine: provision to ready and teardown through the docker adapter, beside the
  docker CLI doing the same (network create, volume create, run, wait for the port), and an
  idempotent re-provision (targets: no slower than the CLI; re-provision <= 5 % of a provision);
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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from hearth import AdapterClient, Host, ProvisioningProfile, SQLiteStore, Tier, discover
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


async def docker_adapter_lifecycles(url: str, image: str, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"provision": [], "again": [], "teardown": []}
    profile = ProvisioningProfile(
        tier="solo",
        driver="docker",
        resource_caps={"cpu": 1, "memory_mb": 64},
        driver_flags={"image": image, "port": 8080, "data_path": "/www"},
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
    again = statistics.median(adapter["again"])
    print(
        f"{'idempotent re-provision':34}{ms(again)}{'':>14}{again / provision:8.1%}   <= 5 % of a provision"
    )
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

    async def _run(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
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
    parser.add_argument(
        "--only",
        choices=["codec", "cli", "protocol", "operations"],
        help="run one section only (no adapter, no docker)",
    )
    args = parser.parse_args()
    if args.only is not None:
        sections = {
            "codec": lambda: codec_section(args.codec_calls),
            "cli": lambda: cli_section(args.cli_runs),
            "protocol": lambda: protocol_section(discover("fake").path, args),
            "operations": lambda: operations_section(args.provisions, args.producers, args.lag_rounds),
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
    total, rows = import_breakdown(10)
    print(
        f"import time of the fake adapter: {total / 1000:.1f} ms under python -X importtime "
        "(which inflates it); own time by package:"
    )
    for micros, name in rows:
        print(f"  {micros / 1000:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
