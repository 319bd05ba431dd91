"""What only real processes can show: crashes, garbage, signals, stderr, size limits, orphans."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth import (
    AdapterClient,
    AdapterCrashed,
    AdapterNotFound,
    AdapterRefused,
    CallTimeout,
    ProtocolViolation,
)
from hearth_adaptersdk import DeploymentRef, codes
from hearth_adaptersdk.testing import Peer
from tests.helpers import profile

pytestmark = pytest.mark.subprocess
MakeAdapter = Callable[..., Path]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def test_a_crash_mid_call_fails_every_pending_call_with_exit_code_and_stderr(
    fake_exe: Path, tmp_path: Path
) -> None:
    async with await AdapterClient.launch(fake_exe, data_dir=tmp_path) as client:
        ref = await client.provision("doomed", profile(crash_at="status"))
        slow = asyncio.create_task(client.provision("slow", profile(delay=600)))
        crash = asyncio.create_task(client.status(ref))
        results = await asyncio.gather(slow, crash, return_exceptions=True)
        for error in results:
            assert isinstance(error, AdapterCrashed)
            assert error.exit_code == 17
            assert any("crashing in status" in line for line in error.stderr_tail)
        with pytest.raises(AdapterCrashed):
            await client.list()


async def test_a_line_that_is_not_json_fails_the_session_quoting_it(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="garbage", DRIVER="raw")
    async with await AdapterClient.launch(path) as client:
        quoted = r"DEBUG: connecting to backend \(this is not JSON\)"
        with pytest.raises(ProtocolViolation, match=quoted) as caught:
            await client.provision("a", profile(driver="raw"))
        assert "hearth-adapter-raw" in str(caught.value)


async def test_a_response_with_an_unknown_id_is_a_protocol_violation(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="unknown_id", DRIVER="raw")
    async with await AdapterClient.launch(path) as client:
        with pytest.raises(ProtocolViolation, match="matches no request in flight"):
            await client.provision("a", profile(driver="raw"))


async def test_a_result_that_breaks_the_models_is_a_protocol_violation(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="bad_result", DRIVER="raw")
    async with await AdapterClient.launch(path) as client:
        with pytest.raises(ProtocolViolation, match="invalid StatusReport"):
            await client.status(await _any_ref())


async def _any_ref() -> DeploymentRef:
    return DeploymentRef.model_validate(
        {
            "workspace_slug": "a",
            "tier": "t",
            "driver": "raw",
            "created": "2026-01-01T00:00:00Z",
            "last_status": "ready",
        }
    )


async def test_a_hung_call_times_out_and_an_adapter_ignoring_sigterm_is_killed(
    fake_exe: Path, tmp_path: Path
) -> None:
    client = await AdapterClient.launch(fake_exe, data_dir=tmp_path)
    ref = await client.provision("stuck", profile(freeze_at="status", ignore_sigterm=True))
    with pytest.raises(CallTimeout, match=r"did not answer the cancel.*it was stopped"):
        await client.status(ref, timeout=0.2)
    assert not client.alive  # the stuck adapter is being stopped; later calls fail at once
    with pytest.raises(CallTimeout):
        await client.list()
    pid = client.connection.pid  # type: ignore[attr-defined]
    await client.close()
    assert client.connection.returncode == -signal.SIGKILL  # type: ignore[attr-defined]
    assert _gone(pid)


async def test_a_10_mib_message_round_trips(make_adapter: MakeAdapter) -> None:
    path = make_adapter("echo")
    payload = "x" * (10 * 1024 * 1024)
    async with await AdapterClient.launch(path) as client:
        ref = await client.provision("big", profile(driver="echo", payload=payload))
        assert ref.endpoint == payload


async def test_a_17_mib_line_from_the_adapter_is_a_clean_protocol_error(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="huge_line", DRIVER="raw")
    async with await AdapterClient.launch(path) as client:
        with pytest.raises(ProtocolViolation, match="16 MiB"):
            await client.provision("a", profile(driver="raw"))


async def test_a_17_mib_line_to_the_adapter_ends_it_cleanly(fake_exe: Path) -> None:
    peer = await Peer.spawn([str(fake_exe)])
    with contextlib.suppress(ConnectionError):  # it may stop reading before we stop writing
        await peer.send_raw(b'{"x": "' + b"y" * (17 * 1024 * 1024) + b'"}\n')
    closed = await peer.wait_closed(30)
    assert closed.returncode == 1
    assert any("16 MiB" in line for line in closed.stderr_tail)
    assert not any("Traceback" in line for line in closed.stderr_tail)
    await peer.close()


async def test_grandchildren_are_gone_after_close(make_adapter: MakeAdapter) -> None:
    path = make_adapter("echo")
    async with await AdapterClient.launch(path) as client:
        ref = await client.provision("kids", profile(driver="echo", spawn_grandchild=True))
        grandchild = int(ref.endpoint or 0)
        assert not _gone(grandchild)
    assert _gone(grandchild)


async def test_an_adapter_dying_before_the_handshake_is_reported_with_its_stderr(
    make_adapter: MakeAdapter,
) -> None:
    path = make_adapter("raw", MODE="die_before_handshake", DRIVER="raw")
    with pytest.raises(AdapterCrashed, match="before the handshake") as caught:
        await AdapterClient.launch(path)
    assert caught.value.exit_code == 3
    assert "credentials file /etc/raw/creds is missing" in str(caught.value)


async def test_a_silent_adapter_fails_the_handshake_timeout(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="silent", DRIVER="raw")
    with pytest.raises(CallTimeout, match=r"handshake within 0\.3 s"):
        await AdapterClient.launch(path, timeout=0.3)


async def test_an_adapter_naming_another_driver_is_refused(make_adapter: MakeAdapter) -> None:
    path = make_adapter("raw", MODE="garbage", DRIVER="other")
    with pytest.raises(AdapterRefused, match="serves driver 'other'"):
        await AdapterClient.launch(path)


async def test_missing_and_non_executable_adapters_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterNotFound):
        await AdapterClient.launch(tmp_path / "hearth-adapter-none")
    plain = tmp_path / "hearth-adapter-plain"
    plain.write_text("not a program")
    with pytest.raises(AdapterRefused, match="cannot start"):
        await AdapterClient.launch(plain)


async def test_the_child_sees_only_the_allow_listed_environment(
    make_adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HEARTH_TEST_NAMED", "ok")
    monkeypatch.setenv("LC_TEST", "x")
    path = make_adapter("echo")
    async with await AdapterClient.launch(path, env=["HEARTH_TEST_NAMED"]) as client:
        ref = await client.provision("env", profile(driver="echo", report_env=True))
    names = json.loads(ref.endpoint or "[]")
    assert "HEARTH_TEST_SECRET" not in names
    assert {"HEARTH_TEST_NAMED", "HEARTH_PROTOCOL", "LC_TEST", "PATH"} <= set(names)


async def test_a_stray_print_in_the_driver_does_not_corrupt_the_protocol(
    make_adapter: MakeAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_adapter("echo")
    with caplog.at_level(logging.INFO, logger="hearth.adapter"):
        async with await AdapterClient.launch(path) as client:
            ref = await client.provision("p", profile(driver="echo", payload="fine"))
            assert ref.endpoint == "fine"
    forwarded = [r for r in caplog.records if r.name == "hearth.adapter.hearth-adapter-echo"]
    assert any("stray print" in r.getMessage() for r in forwarded)


async def test_the_adapter_exits_when_its_stdin_closes(fake_exe: Path) -> None:
    peer = await Peer.spawn([str(fake_exe)])
    await peer.initialize()
    peer.connection.close_stdin()  # type: ignore[attr-defined]
    closed = await peer.wait_closed(10)
    assert closed.returncode == 0
    await peer.close()


def test_the_adapter_exits_when_its_parent_dies(fake_exe: Path) -> None:
    to_adapter, from_test = os.pipe()  # we keep the write end open: no EOF can end the adapter
    to_test, from_adapter = os.pipe()
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"child = subprocess.Popen([{str(fake_exe)!r}], stdin={to_adapter}, stdout={from_adapter}, "
            "env={**os.environ, 'HEARTH_PROTOCOL': '1'})\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        pass_fds=[to_adapter, from_adapter],
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(from_adapter)
    try:
        assert launcher.stdout is not None
        adapter = int(launcher.stdout.readline())
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocol_versions": [1], "host": {"name": "t", "version": "0"}},
        }
        os.write(from_test, json.dumps(hello).encode() + b"\n")
        with os.fdopen(to_test, "rb", closefd=False) as answers:
            assert b'"protocol_version":1' in answers.readline()  # the adapter is up
        launcher.kill()
        launcher.wait()
        # The adapter checks its parent every 0.5 s; its stdout closing is the event we wait on.
        with os.fdopen(to_test, "rb") as answers:
            assert answers.read() == b""
        assert _wait_until_gone(adapter)
    finally:
        os.close(to_adapter)
        os.close(from_test)
        launcher.kill()
        launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()


def _wait_until_gone(pid: int) -> bool:
    for _ in range(500):
        if _gone(pid):
            return True
        time.sleep(0.01)
    return False


def test_run_by_hand_it_explains_itself_and_exits_2(fake_exe: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != codes.PROTOCOL_ENV}
    done = subprocess.run(
        [fake_exe], env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False
    )
    assert done.returncode == 2
    assert "hearth adapter" in done.stderr and done.stdout == ""
    version = subprocess.run([fake_exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert version.returncode == 0 and version.stdout.strip() == "hearth-adapter-fake 0.1.0"


def _rollback_profile(marker: Path, **flags: object) -> dict[str, object]:
    return {
        "slug": "r",
        "profile": {"tier": "t", "driver": "rollback", "driver_flags": {"marker": str(marker), **flags}},
    }


async def _start_working(
    peer: Peer, params: dict[str, object]
) -> tuple[dict[str, object], asyncio.Future[dict[str, object]]]:
    """Start a provision of the rollback adapter and wait until its verb runs."""
    working = asyncio.Event()
    peer.on_progress = lambda _: working.set()
    sent, future = await peer.start_request("provision", params)
    await asyncio.wait_for(working.wait(), 20)
    return sent, future


async def test_on_stdin_eof_the_adapter_finishes_its_rollback_before_exiting(
    make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    path = make_adapter("rollback")
    marker = tmp_path / "rolled-back"
    peer = await Peer.spawn([str(path)])
    await peer.initialize()
    sent, future = await _start_working(peer, _rollback_profile(marker, undo_seconds=1.0))
    peer.connection.close_stdin()  # type: ignore[attr-defined]
    reply = await peer.finish(sent, future, 20)
    closed = await peer.wait_closed(20)  # well within the default 30 s grace
    assert marker.read_text() == "rolled back"
    assert reply.error is not None
    assert reply.error["data"] == {"kind": "cancelled", "rolled_back": True}
    assert closed.returncode == 0
    assert not any("exiting anyway" in line for line in closed.stderr_tail)
    await peer.close()


async def test_a_rollback_past_the_grace_from_the_environment_is_abandoned_at_exit(
    make_adapter: MakeAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_ROLLBACK_GRACE", "0.2")
    path = make_adapter("rollback")
    marker = tmp_path / "rolled-back"
    peer = await Peer.spawn([str(path)], env_passthrough=["HEARTH_ROLLBACK_GRACE"])
    await peer.initialize()
    sent, future = await _start_working(peer, _rollback_profile(marker, undo_forever=True))
    peer.connection.close_stdin()  # type: ignore[attr-defined]
    reply = await peer.finish(sent, future, 20)
    closed = await peer.wait_closed(20)
    assert reply.error is not None
    assert reply.error["data"] == {"kind": "cancelled", "rolled_back": False}
    assert closed.returncode == 0
    assert any("still running after the 0.2 s rollback grace" in line for line in closed.stderr_tail)
    assert not marker.exists()
    await peer.close()


async def test_a_deeply_nested_line_does_not_silence_the_adapter(fake_exe: Path) -> None:
    peer = await Peer.spawn([str(fake_exe)])
    await peer.initialize()
    await peer.send_raw(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    answer = await peer.next_unmatched(20)
    assert isinstance(answer, dict) and answer["error"]["code"] == codes.PARSE_ERROR
    assert (await peer.request("list", {})).result == []
    await peer.close()


async def test_an_invalid_rollback_grace_in_the_environment_is_a_warning_on_stderr(
    make_adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_ROLLBACK_GRACE", "soon")
    peer = await Peer.spawn([str(make_adapter("rollback"))], env_passthrough=["HEARTH_ROLLBACK_GRACE"])
    await peer.initialize()
    peer.connection.close_stdin()  # type: ignore[attr-defined]
    closed = await peer.wait_closed(20)
    assert closed.returncode == 0
    assert any("ignoring HEARTH_ROLLBACK_GRACE='soon'" in line for line in closed.stderr_tail)
    await peer.close()


def test_a_frozen_adapter_does_not_outlive_its_host(fake_exe: Path, tmp_path: Path) -> None:
    """A driver that blocks the event loop cannot watch its parent from the loop: the SDK's
    watchdog thread ends the process once the host is gone and the grace has passed."""
    middle = tmp_path / "host.py"
    request = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "provision",
        "params": {"slug": "frozen", "profile": profile(freeze_at="provision").model_dump(mode="json")},
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocol_versions": [1],
            "host": {"name": "test", "version": "0"},
            "data_dir": str(tmp_path / "data"),
        },
    }
    middle.write_text(
        "import json, subprocess, sys, time\n"
        f"adapter = subprocess.Popen([{str(fake_exe)!r}], stdin=subprocess.PIPE, "
        "stdout=subprocess.PIPE, env={**__import__('os').environ, 'HEARTH_PROTOCOL': '1', "
        "'HEARTH_ROLLBACK_GRACE': '0.2'})\n"
        f"adapter.stdin.write(json.dumps({initialize!r}).encode() + b'\\n')\n"
        "adapter.stdin.flush()\n"
        "adapter.stdout.readline()\n"  # the handshake's answer: the adapter is serving
        f"adapter.stdin.write(json.dumps({request!r}).encode() + b'\\n')\n"
        "adapter.stdin.flush()\n"
        "print(adapter.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    host = subprocess.Popen(
        [sys.executable, str(middle)], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        assert host.stdout is not None
        adapter = int(host.stdout.readline())
        journal = tmp_path / "data" / "journal.jsonl"
        deadline = time.monotonic() + 30
        while not (journal.exists() and "provision" in journal.read_text()):
            assert time.monotonic() < deadline, "the adapter never reached the frozen verb"
            time.sleep(0.02)
        host.kill()  # kill -9 of the host: the adapter's event loop is frozen
        host.wait()
        deadline = time.monotonic() + 30
        while not _gone(adapter):
            assert time.monotonic() < deadline, "the frozen adapter outlived its host"
            time.sleep(0.05)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if host.stdout is not None:
            host.stdout.close()
