"""The conformance kit passes on the fake adapter and catches broken adapters, one rule each."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import _memory
from hearth_adaptersdk._codec import LineDecoder
from hearth_adaptersdk._session import ServerSession
from hearth_adaptersdk.conformance import Check, KitOptions, Report, run_conformance
from tests import kit_breakers as broken

FAKE_OPTIONS = KitOptions(
    failing_profile={"tier": "t", "driver": "fake", "driver_flags": {"fail_at": "provision"}},
    refused_profile={"tier": "t", "driver": "fake", "driver_flags": {"reject": True}},
    slow_profile={"tier": "t", "driver": "fake", "driver_flags": {"delay": 30}},
    slow_stop_profile={"tier": "t", "driver": "fake", "driver_flags": {"delay": 30, "delay_at": "stop"}},
)
#: For an adapter that ignores cancel, so that what it goes on with ends soon.
SHORT_SLOW = KitOptions(
    failing_profile=FAKE_OPTIONS.failing_profile,
    refused_profile=FAKE_OPTIONS.refused_profile,
    slow_profile={"tier": "t", "driver": "fake", "driver_flags": {"delay": 2}},
)

# The checks, by name (a report lists them in this order).
SECOND_INITIALIZE = "hygiene: a second initialize is -32600"
UNKNOWN_MEMBERS = "hygiene: unknown members and notifications are ignored"
IDEMPOTENT = "1. provision is idempotent on (slug, tier, driver)"
READ_ONLY = "2. status is read-only"
PLAN = "plan changes nothing and says what provision or upgrade would do"
TEARDOWN = "4. teardown is irreversible and idempotent"
REUSE = "provision after teardown creates the workspace again"
PROGRESS = "progress is sent while a slow request works"
CANCEL = "5. cancel is honoured promptly"
ROLLBACK = "5. a cancelled request is answered after its rollback, with data.rolled_back"
CONCURRENCY = "hygiene: requests are handled concurrently"
DUPLICATE_ID = "hygiene: a duplicate id in flight is -32600"
SHUTDOWN_WAITS = "hygiene: shutdown answers the requests in flight before its own answer"
AFTER_SHUTDOWN = "hygiene: a request after shutdown is -32600"
SIZE_LIMIT = "hygiene: a 16 MiB message is answered; a longer line ends the session"
VERSION = "executable: --version prints hearth-adapter-<driver> <version>"
NEEDS_PROTOCOL = "executable: without HEARTH_PROTOCOL=1 it exits 2"
PARENT_DEATH = "executable: it exits when its parent process dies"
ONLY_JSON_RPC = "hygiene: every line on stdout is JSON-RPC"
DATA_DIR = "hygiene: reads leave data_dir as they found it"
STOP_START = "stop and start (1.3) are announced together, or neither"
STOPS = "stop (1.3) leaves the deployment stopped, kept and listed; a second stop changes nothing"
STOP_CANCELLED = "a cancelled stop (1.3) is answered after its rollback: the deployment is ready again"
STARTS = (
    "start (1.3) makes the same deployment ready again (its backend id kept); a second start changes nothing"
)
EXECUTABLE_ONLY = {VERSION, NEEDS_PROTOCOL, PARENT_DEATH}


#: The checks of protocol 1.3, skipped for a driver that does not announce stop and start.
STOP_START_CHECKS = frozenset({STOP_START, STOPS, STARTS, STOP_CANCELLED})


def not_announced(check: Check) -> bool:
    """A check of stop and start skipped because the driver announces neither (tfgrid; a driver
    that does not serve them yet)."""
    return check.outcome == "skip" and check.name in STOP_START_CHECKS and "announced" in check.detail


def failed(report: Report) -> set[str]:
    return {check.name for check in report.checks if check.outcome == "fail"}


async def test_the_fake_passes_in_memory_with_every_check() -> None:
    report = await run_conformance(FakeDriver(), FAKE_OPTIONS)
    assert report.passed, report.render()
    skipped = {check.name for check in report.checks if check.outcome == "skip"}
    assert skipped == EXECUTABLE_ONLY, report.render()
    assert len(report.checks) == 35
    [cancel] = [check for check in report.checks if check.name == CANCEL]
    assert "-32800" in cancel.detail
    [overlap] = [check for check in report.checks if check.name == CONCURRENCY]
    assert overlap.detail.startswith("two slow provisions ran at once")


@pytest.mark.subprocess
async def test_the_fake_passes_as_a_subprocess(fake_exe: Path) -> None:
    report = await run_conformance(fake_exe, FAKE_OPTIONS)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()
    [orphaned] = [check for check in report.checks if check.name == PARENT_DEATH]
    assert orphaned.detail.endswith("its provision under way was rolled back"), report.render()


async def test_without_options_the_kit_skips_what_it_cannot_check() -> None:
    report = await run_conformance(FakeDriver())
    assert report.passed, report.render()
    skipped = {check.name for check in report.checks if check.outcome == "skip"}
    assert skipped == {
        PROGRESS,
        CONCURRENCY,
        SHUTDOWN_WAITS,
        "6. a failed provision rolls back and answers -32031",
        "a refused profile is -32023",
        STOP_CANCELLED,
        *EXECUTABLE_ONLY,
    }, report.render()


# --- one broken rule each: exactly its check fails ----------------------------------------------
#: A driver whose backend record lives in data_dir breaks the data_dir rule too when it writes on a read.
DRIVERS: list[tuple[Callable[[], FakeDriver], KitOptions, str | frozenset[str]]] = [
    (broken.NoProgress, FAKE_OPTIONS, PROGRESS),
    (broken.IgnoresCancel, SHORT_SLOW, CANCEL),
    (broken.Sequential, FAKE_OPTIONS, CONCURRENCY),
    (broken.NoRollback, FAKE_OPTIONS, ROLLBACK),
    (broken.NewRefOnReprovision, FAKE_OPTIONS, IDEMPOTENT),
    (broken.StatusWrites, FAKE_OPTIONS, frozenset({READ_ONLY, DATA_DIR})),
    (broken.TeardownTwiceFails, FAKE_OPTIONS, TEARDOWN),
    (broken.NoReuse, FAKE_OPTIONS, REUSE),
    (broken.PlanWrites, FAKE_OPTIONS, frozenset({PLAN, DATA_DIR})),
    (broken.StatusRewritesItsRecord, FAKE_OPTIONS, DATA_DIR),
    (broken.ValidateWrites, FAKE_OPTIONS, DATA_DIR),
    (broken.PlanCaches, FAKE_OPTIONS, DATA_DIR),
    (broken.StartRecreates, FAKE_OPTIONS, STARTS),
    (broken.StopOnly, FAKE_OPTIONS, STOP_START),
    (broken.StopTwiceFails, FAKE_OPTIONS, STOPS),
    (broken.StopNotUndone, FAKE_OPTIONS, STOP_CANCELLED),
]


#: The kit tells these apart only once one of its bounds has passed: real seconds, so the slow tier.
WAITING: set[Callable[[], FakeDriver]] = {broken.NoProgress, broken.IgnoresCancel, broken.Sequential}


@pytest.mark.parametrize(
    ("driver", "options", "check"),
    [
        pytest.param(*case, id=case[0].__name__, marks=[pytest.mark.slow] if case[0] in WAITING else [])
        for case in DRIVERS
    ],
)
async def test_a_driver_that_breaks_one_rule_fails_exactly_its_check(
    driver: Callable[[], FakeDriver], options: KitOptions, check: str | frozenset[str]
) -> None:
    report = await run_conformance(driver(), options)
    assert failed(report) == ({check} if isinstance(check, str) else check), report.render()


SESSIONS: list[tuple[type[ServerSession], str]] = [
    (broken.AcceptsSecondInitialize, SECOND_INITIALIZE),
    (broken.AcceptsDuplicateIds, DUPLICATE_ID),
    (broken.ServesAfterShutdown, AFTER_SHUTDOWN),
    (broken.AnswersShutdownAtOnce, SHUTDOWN_WAITS),
    (broken.RefusesUnknownMembers, UNKNOWN_MEMBERS),
]


@pytest.mark.parametrize(("session", "check"), SESSIONS, ids=[cls.__name__ for cls, _ in SESSIONS])
async def test_an_adapter_that_breaks_a_protocol_rule_fails_exactly_its_check(
    session: type[ServerSession], check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memory, "ServerSession", session)
    report = await run_conformance(FakeDriver(), FAKE_OPTIONS)
    assert failed(report) == {check}, report.render()


async def test_a_cancel_answer_without_rolled_back_passes_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rolled_back`` is a SHOULD: a host reads a -32800 without it as rolled back."""
    monkeypatch.setattr(_memory, "ServerSession", broken.OmitsRolledBack)
    report = await run_conformance(FakeDriver(), FAKE_OPTIONS)
    assert report.passed, report.render()
    [rollback] = [check for check in report.checks if check.name == ROLLBACK]
    assert rollback.outcome == "pass" and "SHOULD be sent" in rollback.detail


@pytest.mark.parametrize(
    "decoder",
    [
        pytest.param(broken.SmallLines, id="1 MiB"),
        pytest.param(broken.EndlessLines, id="64 MiB", marks=pytest.mark.slow),  # waits out a kit bound
    ],
)
async def test_an_adapter_with_another_size_limit_fails_exactly_that_check(
    decoder: type[LineDecoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memory, "LineDecoder", decoder)
    report = await run_conformance(FakeDriver(), FAKE_OPTIONS)
    assert failed(report) == {SIZE_LIMIT}, report.render()


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("no_version", VERSION),
        ("runs_without_protocol", NEEDS_PROTOCOL),
        ("outlives_parent", PARENT_DEATH),
        ("crashes_logging_rollback", PARENT_DEATH),
        ("junk_in_provision", ONLY_JSON_RPC),
        ("junk_at_start", ONLY_JSON_RPC),
    ],
)
async def test_an_executable_that_breaks_one_rule_fails_exactly_its_check(
    mode: str, check: str, make_adapter: Callable[..., Path]
) -> None:
    path = make_adapter("kit_breaker", name="hearth-adapter-fake", MODE=mode)
    report = await run_conformance(path, FAKE_OPTIONS)
    assert failed(report) == {check}, report.render()
    [fail] = [item for item in report.checks if item.name == check]
    if check == ONLY_JSON_RPC:  # the line, named, and the check during which it came
        line = "starting the fake adapter" if mode == "junk_at_start" else "provisioning conf-"
        assert fail.detail.startswith("not JSON-RPC on stdout: b'" + line), report.render()
    if mode == "crashes_logging_rollback":
        assert "was not rolled back" in fail.detail, report.render()


@pytest.mark.parametrize(
    ("driver", "call", "changed"),
    [
        (broken.StatusRewritesItsRecord, "status, list and validate_profile changed", "rewritten"),
        (broken.ValidateWrites, "status, list and validate_profile changed", "last-profile.json (added)"),
        (broken.PlanCaches, "plan changed", "plan-cache.json (added)"),
    ],
)
async def test_a_read_that_writes_only_to_data_dir_is_named_with_what_it_changed(
    driver: Callable[[], FakeDriver], call: str, changed: str
) -> None:
    report = await run_conformance(driver(), FAKE_OPTIONS)
    [fail] = [item for item in report.checks if item.name == DATA_DIR]
    assert "must leave data_dir byte for byte" in fail.detail, report.render()
    assert call in fail.detail and changed in fail.detail, report.render()


async def test_a_broken_adapter_fails_with_what_was_sent_and_what_came_back() -> None:
    report = await run_conformance(broken.NewRefOnReprovision())
    assert not report.passed
    assert failed(report) == {IDEMPOTENT}
    text = report.render()
    assert "sent: " in text and "got:  " in text and "FAIL" in text


async def test_a_slow_profile_that_is_not_slow_fails_the_cancel_check() -> None:
    options = KitOptions(slow_profile={"tier": "t", "driver": "fake", "driver_flags": {}})
    report = await run_conformance(FakeDriver(), options)
    [cancel] = [check for check in report.checks if check.name == CANCEL]
    assert cancel.outcome == "fail" and "at least 20 s" in cancel.detail, report.render()


@pytest.mark.subprocess
def test_the_cli_exits_zero_on_pass_and_prints_a_report(
    fake_exe: Path, venv_bin: Path, tmp_path: Path
) -> None:
    options = tmp_path / "kit.json"
    options.write_text(json.dumps({"failing_profile": FAKE_OPTIONS.failing_profile}))
    done = subprocess.run(
        [venv_bin / "hearth-adaptersdk", "conformance", fake_exe, "--options", options, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["passed"] is True


@pytest.mark.subprocess
def test_the_cli_exits_one_when_an_adapter_fails(make_adapter: Any, venv_bin: Path) -> None:
    path = make_adapter("raw", MODE="garbage", DRIVER="raw")
    done = subprocess.run(
        [venv_bin / "hearth-adaptersdk", "conformance", path, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "passed," in done.stdout


def test_the_cli_explains_bad_options(venv_bin: Path, fake_exe: Path) -> None:
    done = subprocess.run(
        [venv_bin / "hearth-adaptersdk", "conformance", fake_exe, "--profile", "[1]"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "JSON object" in done.stderr
    missing = subprocess.run(
        [venv_bin / "hearth-adaptersdk", "conformance", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2 and "no adapter executable" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr
