"""The conformance kit passes on the fake adapter and catches broken adapters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import DeploymentRef, ProvisioningProfile, RequestContext, utc_now
from hearth_adaptersdk.conformance import KitOptions, run_conformance

FAKE_OPTIONS = KitOptions(
    failing_profile={"tier": "t", "driver": "fake", "driver_flags": {"fail_at": "provision"}},
    refused_profile={"tier": "t", "driver": "fake", "driver_flags": {"reject": True}},
    slow_profile={"tier": "t", "driver": "fake", "driver_flags": {"delay": 30}},
)


class Forgetful(FakeDriver):
    """Breaks guarantee 1: every provision mints a new ref."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        return DeploymentRef(
            workspace_slug=slug,
            tier=profile.tier,
            driver="fake",
            endpoint=f"fake://{slug}/{utc_now().timestamp()}",
            created=utc_now(),
            last_status="ready",
        )


async def test_the_fake_passes_in_memory_with_every_check() -> None:
    report = await run_conformance(FakeDriver(), FAKE_OPTIONS)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()
    assert "cancel" in report.checks[10].name and "-32800" in report.checks[10].detail


@pytest.mark.subprocess
async def test_the_fake_passes_as_a_subprocess(fake_exe: Path) -> None:
    report = await run_conformance(fake_exe, FAKE_OPTIONS)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()


async def test_without_options_the_kit_skips_what_it_cannot_check() -> None:
    report = await run_conformance(FakeDriver())
    assert report.passed, report.render()
    skipped = [check.name for check in report.checks if check.outcome == "skip"]
    assert len(skipped) == 2 and "-32031" in skipped[0]


async def test_a_broken_adapter_fails_with_what_was_sent_and_what_came_back() -> None:
    report = await run_conformance(Forgetful())
    assert not report.passed
    failed = [check for check in report.checks if check.outcome == "fail"]
    assert failed[0].name.startswith("1.")
    text = report.render()
    assert "sent: " in text and "got:  " in text and "FAIL" in text


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
