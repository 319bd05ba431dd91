"""The CLI under signals, hostile adapter output, closed pipes and stuck adapters (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import trust_project_adapters
from tests.test_cli import Cli, _wait_for

pytestmark = pytest.mark.subprocess

EXTRA = """
[tiers.hostile.driver_flags.echo]
payload = "\\u001b]0;owned\\u0007\\rhearth: all good\\u001b[2J"
[tiers.stuck.driver_flags.fake]
freeze_at = "status"
"""


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    made = Cli(tmp_path, venv_bin)
    settings = made.project / ".hearth" / "hearth.toml"
    text = settings.read_text().replace("[timeouts]\n", "[timeouts]\nstatus = 1\nversion_probe = 1\n")
    settings.write_text(text + EXTRA)
    return made


def _project_adapter(cli: Cli, make_adapter: Callable[..., Path], kind: str, **subs: str) -> Path:
    path = make_adapter(kind, **subs)
    folder = cli.project / ".hearth" / "adapters"
    folder.mkdir(exist_ok=True)
    moved = path.rename(folder / path.name)
    trust_project_adapters(cli.project, cli.home)
    return moved


def _holds_open(pid: int, name: str) -> bool:
    folder = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).endswith(name) for fd in folder.iterdir())
    except OSError:
        return False


def _started(cli: Cli, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        cli.argv(*args, "--json"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: any(e["method"] == args[0] for e in cli.journal()))
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_3_sigterm_and_sighup_cancel_like_ctrl_c(cli: Cli, signum: signal.Signals) -> None:
    process = _started(cli, "provision", "alpha", "--tier", "glacial", "--driver", "fake")
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.strip().splitlines() == [
        f"hearth: cancelled: interrupted by {signum.name}; provision of 'alpha' was cancelled and rolled back"
    ]
    assert json.loads(out)["error"]["kind"] == "cancelled"
    assert cli.json("ls") == []
    [operation] = cli.json("logs", "alpha")
    assert operation["outcome"] == "interrupted"
    assert operation["error"]["message"].startswith(f"interrupted by {signum.name}")


def test_3_an_upgrade_interrupted_by_sigterm_keeps_the_workspace_ready(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    process = _started(cli, "upgrade", "alpha", "--tier", "glacial")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and len(err.strip().splitlines()) == 1
    [record] = cli.json("ls")
    assert (record["last_status"], record["tier"]) == ("ready", "solo")
    assert cli.json("status", "alpha")["state"] == "ready"


def test_ctrl_c_three_times_still_ends_with_130_and_one_line(cli: Cli) -> None:
    process = _started(cli, "provision", "alpha", "--tier", "glacial", "--driver", "fake")
    for _ in range(3):
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    [line] = err.strip().splitlines()
    assert line.startswith("hearth: cancelled: interrupted by SIGINT; ")
    assert "Traceback" not in err
    operations = cli.json("logs", "alpha")
    assert [op["outcome"] for op in operations] == ["cancelled"]  # never left running
    records = cli.json("ls")
    # either the rollback was confirmed (no record) or the record says it was not
    assert records == [] or records[0]["last_status"] == "failed"


def test_19_ctrl_c_of_a_command_that_joined_another_process_changes_nothing(cli: Cli) -> None:
    holder = _started(cli, "provision", "alpha", "--tier", "glacial", "--driver", "fake")
    joiner = subprocess.Popen(
        cli.argv("provision", "alpha", "--tier", "glacial", "--driver", "fake"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: _holds_open(joiner.pid, "hearth.db"))  # it has opened the store
    joiner.send_signal(signal.SIGINT)
    _, err = joiner.communicate(timeout=30)
    assert joiner.returncode == 130
    [line] = err.strip().splitlines()
    assert line.startswith("hearth: cancelled: interrupted")
    assert line.endswith(("nothing was changed", "nothing changed"))
    assert holder.poll() is None  # the operation it joined goes on in the process that runs it
    assert [e["method"] for e in cli.journal()].count("provision") == 1
    holder.send_signal(signal.SIGINT)
    holder.communicate(timeout=30)


def test_15_terminal_escapes_from_an_adapter_are_escaped(cli: Cli, make_adapter: Callable[..., Path]) -> None:
    _project_adapter(cli, make_adapter, "echo")
    done = cli.run("provision", "evil", "--tier", "hostile", "--driver", "echo")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\r" not in done.stdout
    assert "\\x1b]0;owned\\x07\\rhearth: all good" in done.stdout
    as_json = cli.json("ls")  # JSON keeps the value, escaped by the encoder
    assert as_json[0]["endpoint"].startswith("\x1b]0;owned")


def test_18_a_closed_pipe_exits_quietly(cli: Cli) -> None:
    for index in range(3):
        cli.json("provision", f"w{index}", "--tier", "solo", "--driver", "fake")
    command = " ".join(cli.argv("ls", "--json")) + " | true"
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}; echo exit=$?"],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
        check=False,
    )
    assert done.stderr == "" and "Traceback" not in done.stdout


def test_19_logs_say_what_happened_to_an_interrupted_operation(cli: Cli) -> None:
    process = subprocess.Popen(
        cli.argv("provision", "alpha", "--tier", "glacial", "--driver", "fake"),
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: any(e["method"] == "provision" for e in cli.journal()))
    process.send_signal(signal.SIGKILL)
    process.wait()
    cli.json("reconcile")
    text = cli.run("logs", "alpha").stdout
    assert "None" not in text
    assert "error: interrupted: the hearth process running it stopped" in text


def test_19_a_driver_whose_only_adapter_is_refused_writes_no_record(
    cli: Cli, make_adapter: Callable[..., Path]
) -> None:
    path = _project_adapter(cli, make_adapter, "raw", MODE="garbage", DRIVER="raw")
    path.chmod(0o777)  # writable by others: refused
    _, line, error = cli.error("provision", "alpha", "--tier", "solo", "--driver", "raw")
    assert error["kind"] == "adapter_refused" and "writable by group or others" in line
    assert cli.json("ls") == []
    _, line, _ = cli.error("provision", "alpha", "--tier", "solo", "--driver", "nosuch")
    assert "available: " in line and "raw" not in line.split("available: ")[1]


def test_a_frozen_adapter_does_not_hang_status(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "stuck", "--driver", "fake")
    _, line, error = cli.error("status", "alpha", bound=30)
    assert error["kind"] == "timeout" and "within 1 s" in line


def test_adapters_waits_for_a_hanging_version_within_its_bound(
    cli: Cli, make_adapter: Callable[..., Path]
) -> None:
    folder = cli.project / ".hearth" / "adapters"
    folder.mkdir(exist_ok=True)
    hanging = folder / "hearth-adapter-sleepy"
    hanging.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    hanging.chmod(0o755)
    trust_project_adapters(cli.project, cli.home)
    rows = cli.json("adapters")  # the leak check fails the test if the probe is left running
    [sleepy] = [row for row in rows if row["driver"] == "sleepy"]
    assert sleepy["status"] == "ok" and sleepy["version"] is None


@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf"])
def test_4_bad_timeouts_are_invalid_input_on_every_command(cli: Cli, value: str) -> None:
    for command in (("status", "alpha"), ("reconcile",), ("ls",)):
        code, line, error = cli.error(*command, "--timeout", value)
        assert code == 2 and error["kind"] == "invalid_input" and "timeout" in line


def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback(cli: Cli) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            cli.argv("ls"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=cli.env,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "hearth: output_error: cannot write the output: No space left on device"
    ]


@pytest.mark.parametrize(("option", "value"), [("--home", ""), ("--project", "/no/such/folder")])
def test_an_empty_home_or_a_missing_project_is_invalid_input(cli: Cli, option: str, value: str) -> None:
    done = subprocess.run(
        [cli.exe, "ls", option, value, "--json"],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=cli.project,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("hearth: invalid_input: ")
    assert not (cli.project / "hearth.db").exists()


def test_reconcile_dry_run_changes_nothing_and_exits_3_on_drift(cli: Cli) -> None:
    process = _started(cli, "provision", "alpha", "--tier", "glacial", "--driver", "fake")
    process.kill()  # kill -9 of the host: the record is left provisioning
    process.communicate()
    done = cli.run("reconcile", "--dry-run", "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is True
    assert report["resolved"] == [{"slug": "alpha", "from": "provisioning", "to": "failed"}]
    assert cli.json("ls")[0]["last_status"] == "provisioning"  # nothing changed
    store = sqlite3.connect(cli.home / "hearth.db")
    assert store.execute("SELECT state FROM operations").fetchall() == [("running",)]  # as the host left it
    store.close()
    assert "would resolve alpha" in cli.run("reconcile", "alpha", "--dry-run").stdout
    settled = cli.json("reconcile", "alpha")
    assert settled["resolved"] == [{"slug": "alpha", "from": "provisioning", "to": "failed"}]
    again = cli.run("reconcile", "--dry-run", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["resolved"] == []
